//! Cache rules on a manual clock with scripted broker answers (no network).

use std::sync::Arc;

use super::*;

#[derive(Debug)]
struct ManualClock(Mutex<OffsetDateTime>);

impl ManualClock {
    fn at(t: i64) -> Arc<Self> {
        Arc::new(Self(Mutex::new(
            OffsetDateTime::from_unix_timestamp(t).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        )))
    }
    fn advance(&self, secs: i64) {
        let mut t = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *t += time::Duration::seconds(secs);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

const T0: i64 = 1_800_000_000;

fn cache(clock: &Arc<ManualClock>) -> DataKeyCache {
    DataKeyCache::with_clock(Client::unconnected(), None, clock.clone())
}

fn ctx(v: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("dataset".to_owned(), v.to_owned())])
}

fn slot(v: &str) -> Slot {
    Slot::Fresh("datasets/a".into(), ctx(v))
}

/// A broker answer: key bytes all `byte`, lease of `ttl` seconds issued at the clock's now.
fn granted(clock: &ManualClock, byte: u8, ttl: u64) -> Result<Fetched, ClientError> {
    let expires = clock.now() + Duration::from_secs(ttl);
    Ok((
        Zeroizing::new(vec![byte; 32]),
        vec![9; 40],
        "datasets/a".into(),
        1,
        format!("lease-{byte}"),
        Some(expires),
        Some(Duration::from_secs(ttl)),
    ))
}

fn refused(code: tonic::Code) -> Result<Fetched, ClientError> {
    Err(ClientError::Status {
        code,
        message: "no".into(),
        request_id: "r".into(),
    })
}

async fn get(
    c: &DataKeyCache,
    v: &str,
    answer: Result<Fetched, ClientError>,
) -> Result<Arc<LeasedKey>, ClientError> {
    c.get_or_fetch(slot(v), async { answer }).await
}

#[tokio::test]
async fn fresh_key_is_served_from_memory_until_three_quarters_of_its_lease() -> anyhow::Result<()> {
    let clock = ManualClock::at(T0);
    let c = cache(&clock);
    let k = get(&c, "a", granted(&clock, 1, 100)).await?;
    assert_eq!(k.plaintext(), [1; 32]);
    clock.advance(74);
    let again = get(&c, "a", refused(tonic::Code::Internal)).await?;
    assert_eq!(again.lease_id(), "lease-1");
    assert_eq!(c.fetches(), 1);

    clock.advance(1);
    let renewed = get(&c, "a", granted(&clock, 2, 100)).await?;
    assert_eq!(renewed.plaintext(), [2; 32]);
    assert_eq!(c.fetches(), 2);
    Ok(())
}

#[tokio::test]
async fn expired_lease_forces_a_new_key_request_and_wipes_the_old_key() -> anyhow::Result<()> {
    let clock = ManualClock::at(T0);
    let c = cache(&clock);
    let first = get(&c, "a", granted(&clock, 1, 10)).await?;
    let watch = Arc::downgrade(&first);
    drop(first);
    clock.advance(10);
    assert_eq!(c.purge_expired(), 1);
    assert!(watch.upgrade().is_none(), "expired key still held");
    assert!(c.is_empty());
    let second = get(&c, "a", granted(&clock, 2, 10)).await?;
    assert_eq!(second.lease_id(), "lease-2");
    assert_eq!(c.fetches(), 2);
    Ok(())
}

#[tokio::test]
async fn refusal_at_refresh_evicts_and_is_returned_never_the_cached_key() -> anyhow::Result<()> {
    let clock = ManualClock::at(T0);
    let c = cache(&clock);
    get(&c, "a", granted(&clock, 1, 100)).await?;
    clock.advance(80); // refresh due, old lease still runs
    let err = get(&c, "a", refused(tonic::Code::PermissionDenied))
        .await
        .err()
        .and_then(|e| e.code());
    assert_eq!(err, Some(tonic::Code::PermissionDenied));
    assert!(c.is_empty(), "a refused key must not stay cached");
    let again = get(&c, "a", refused(tonic::Code::PermissionDenied)).await;
    assert!(again.is_err());
    Ok(())
}

#[tokio::test]
async fn unavailable_broker_at_refresh_serves_the_old_key_only_while_its_lease_runs()
-> anyhow::Result<()> {
    let clock = ManualClock::at(T0);
    let c = cache(&clock);
    get(&c, "a", granted(&clock, 1, 100)).await?;
    clock.advance(80);
    let old = get(&c, "a", refused(tonic::Code::Unavailable)).await?;
    assert_eq!(old.lease_id(), "lease-1");
    clock.advance(20);
    let err = get(&c, "a", refused(tonic::Code::Unavailable)).await;
    assert_eq!(
        err.err().and_then(|e| e.code()),
        Some(tonic::Code::Unavailable)
    );
    Ok(())
}

#[tokio::test]
async fn lease_end_is_the_earlier_of_expires_at_and_received_plus_ttl() -> anyhow::Result<()> {
    let clock = ManualClock::at(T0);
    let c = cache(&clock);
    // The broker's clock runs 50 s ahead: its expires_at is later than our now + ttl.
    let ahead = Ok((
        Zeroizing::new(vec![1; 32]),
        vec![9; 40],
        "datasets/a".into(),
        1,
        "lease-x".into(),
        Some(clock.now() + Duration::from_secs(150)),
        Some(Duration::from_secs(100)),
    ));
    let k = get(&c, "a", ahead).await?;
    assert_eq!(k.expires_at(), clock.now() + Duration::from_secs(100));
    let no_end = Ok((
        Zeroizing::new(vec![1; 32]),
        vec![],
        "k".into(),
        1,
        "l".into(),
        None,
        None,
    ));
    assert!(get(&c, "b", no_end).await.is_err());
    Ok(())
}

#[tokio::test]
async fn contexts_and_key_names_get_separate_entries() -> anyhow::Result<()> {
    let clock = ManualClock::at(T0);
    let c = cache(&clock);
    get(&c, "a", granted(&clock, 1, 100)).await?;
    let b = get(&c, "b", granted(&clock, 2, 100)).await?;
    assert_eq!(b.plaintext(), [2; 32]);
    let other_key = Slot::Fresh("datasets/b".into(), ctx("a"));
    let k = c
        .get_or_fetch(other_key, async { granted(&clock, 3, 100) })
        .await?;
    assert_eq!(k.plaintext(), [3; 32]);
    let opened = Slot::Opened(vec![9; 40], ctx("a"));
    let k = c
        .get_or_fetch(opened, async { granted(&clock, 4, 100) })
        .await?;
    assert_eq!(k.plaintext(), [4; 32]);
    assert_eq!((c.len(), c.fetches()), (4, 4));
    c.clear();
    assert!(c.is_empty());
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn background_sweep_wipes_an_unused_expired_key() -> anyhow::Result<()> {
    let clock = ManualClock::at(T0);
    let c = cache(&clock);
    let watch = Arc::downgrade(&get(&c, "a", granted(&clock, 1, 5)).await?);
    clock.advance(5);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while watch.upgrade().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "not swept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn debug_never_shows_key_bytes() -> anyhow::Result<()> {
    let clock = ManualClock::at(T0);
    let c = cache(&clock);
    let k = get(&c, "a", granted(&clock, 0xAB, 100)).await?;
    let s = format!("{k:?} {c:?}");
    assert!(s.contains("[redacted]") && !s.contains("171, 171"), "{s}");
    Ok(())
}
