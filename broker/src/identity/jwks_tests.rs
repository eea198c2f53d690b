//! JWKS from a URL against real HTTP servers on 127.0.0.1: hostile endpoints (hang, 500,
//! 10 MB, garbage) leave the issuer without keys or keep the last good set, a flood of random
//! `kid`s costs exactly one fetch per cooldown, and max-age is honoured (manual clock).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use super::remote::{Clock, Limits, freshness, max_age};
use super::{IssuerSettings, JwtVerifier, Reason};
use crate::config::JwksSource;

const ISS: &str = "https://remote.test";
const NOW: u64 = 1_700_000_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    Error500,
    Hang,
    Huge,
    HugeChunked,
    Garbage,
}

struct Srv {
    hits: AtomicU64,
    mode: Mutex<Mode>,
    jwks: Mutex<Value>,
    cache_control: Mutex<String>,
}

impl Srv {
    fn set(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }
    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn handler(State(s): State<Arc<Srv>>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let mode = *s.mode.lock().unwrap();
    match mode {
        Mode::Ok => {
            let cc = s.cache_control.lock().unwrap().clone();
            let body = s.jwks.lock().unwrap().to_string();
            ([(header::CACHE_CONTROL, cc)], body).into_response()
        }
        Mode::Error500 => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Mode::Hang => {
            std::future::pending::<()>().await;
            StatusCode::OK.into_response()
        }
        Mode::Huge => vec![b' '; 10 << 20].into_response(),
        Mode::HugeChunked => {
            let chunks = (0..160).map(|_| Ok::<_, std::io::Error>(vec![b' '; 64 << 10]));
            axum::body::Body::from_stream(tokio_stream::iter(chunks)).into_response()
        }
        Mode::Garbage => "<html>\u{0}not a jwks".into_response(),
    }
}

struct Fixture {
    srv: Arc<Srv>,
    verifier: Arc<JwtVerifier>,
    clock: Clock,
    key: EncodingKey,
    attacker: EncodingKey,
}

fn ed25519(kid: &str) -> (EncodingKey, Value) {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let x = URL_SAFE_NO_PAD.encode(kp.public_key_raw());
    let key = EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).unwrap();
    (
        key,
        json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}),
    )
}

async fn fixture(mode: Mode, limits: Limits) -> Fixture {
    let (key, jwk) = ed25519("k1");
    let (attacker, _) = ed25519("x");
    let srv = Arc::new(Srv {
        hits: AtomicU64::new(0),
        mode: Mutex::new(mode),
        jwks: Mutex::new(json!({"keys": [jwk]})),
        cache_control: Mutex::new("public, max-age=120".into()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/jwks", axum::routing::get(handler))
        .with_state(srv.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let clock = Clock::manual();
    let settings = IssuerSettings {
        issuer: ISS.into(),
        audiences: vec!["keybroker".into()],
        jwks: JwksSource::Url {
            url: format!("http://{addr}/jwks"),
            ca_file: None,
        },
        algorithms: vec![Algorithm::EdDSA],
        max_token_lifetime: Duration::from_secs(3600),
        leeway: Duration::from_secs(30),
        job_claim: None,
        region_claim: None,
        cluster: None,
        region: Some("eu-west-1".into()),
        jurisdiction: Some("EU".into()),
    };
    let verifier = Arc::new(JwtVerifier::with_limits(vec![settings], limits, &clock).unwrap());
    Fixture {
        srv,
        verifier,
        clock,
        key,
        attacker,
    }
}

fn token(key: &EncodingKey, kid: &str) -> String {
    let header = format!(r#"{{"alg":"EdDSA","kid":"{kid}","typ":"JWT"}}"#);
    let payload = json!({"iss": ISS, "sub": "spiffe://eu1.example/ns/ml/sa/trainer",
        "aud": "keybroker", "iat": NOW, "exp": NOW + 600});
    let msg = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), key, Algorithm::EdDSA).unwrap();
    format!("{msg}.{sig}")
}

async fn verdict(f: &Fixture, t: &str) -> Result<String, Reason> {
    f.verifier
        .verify_refreshing(t, NOW)
        .await
        .map(|p| p.subject)
        .map_err(|e| e.reason().unwrap())
}

fn fast() -> Limits {
    Limits {
        connect_timeout: Duration::from_millis(500),
        timeout: Duration::from_millis(500),
        ..Limits::default()
    }
}

#[tokio::test]
async fn hostile_endpoints_leave_the_issuer_without_keys_and_tokens_refused() {
    for mode in [
        Mode::Hang,
        Mode::Error500,
        Mode::Huge,
        Mode::HugeChunked,
        Mode::Garbage,
    ] {
        let f = fixture(mode, fast()).await;
        f.verifier.prefetch().await;
        assert_eq!(f.srv.hits(), 1);
        // Refused with the reason in the server log; the refetch is held back by the cooldown.
        assert_eq!(
            verdict(&f, &token(&f.key, "k1")).await,
            Err(Reason::JwksUnavailable)
        );
        assert_eq!(f.srv.hits(), 1, "cooldown must hold back a refetch");
    }
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_last_good_key_set() {
    let f = fixture(Mode::Ok, fast()).await;
    f.verifier.prefetch().await;
    let good = token(&f.key, "k1");
    assert!(verdict(&f, &good).await.is_ok());
    let remote = f.verifier.remotes().next().unwrap().clone();
    for mode in [
        Mode::Error500,
        Mode::Garbage,
        Mode::Huge,
        Mode::HugeChunked,
        Mode::Hang,
    ] {
        f.srv.set(mode);
        f.clock.advance(Duration::from_secs(24 * 3600));
        let before = f.srv.hits();
        remote.refresh_if_due().await;
        assert_eq!(f.srv.hits(), before + 1);
        assert!(
            verdict(&f, &good).await.is_ok(),
            "key set lost after a failed fetch"
        );
    }
}

#[tokio::test]
async fn first_fetch_failure_recovers_after_the_cooldown() {
    let f = fixture(Mode::Error500, fast()).await;
    f.verifier.prefetch().await;
    f.srv.set(Mode::Ok);
    let good = token(&f.key, "k1");
    assert_eq!(verdict(&f, &good).await, Err(Reason::JwksUnavailable));
    f.clock.advance(Limits::default().cooldown);
    assert!(verdict(&f, &good).await.is_ok());
    assert_eq!(f.srv.hits(), 2);
}

#[tokio::test]
async fn unknown_kid_refetches_once_and_picks_up_a_rotated_key() {
    let f = fixture(Mode::Ok, fast()).await;
    f.verifier.prefetch().await;
    let (new_key, new_jwk) = ed25519("k2");
    f.srv.jwks.lock().unwrap()["keys"]
        .as_array_mut()
        .unwrap()
        .push(new_jwk);
    f.clock.advance(Limits::default().cooldown);
    assert!(verdict(&f, &token(&new_key, "k2")).await.is_ok());
    assert_eq!(f.srv.hits(), 2);
}

#[tokio::test]
async fn kid_flood_causes_exactly_one_fetch_per_cooldown() {
    let f = fixture(Mode::Ok, fast()).await;
    f.verifier.prefetch().await;
    assert_eq!(f.srv.hits(), 1);
    let flood = |n: usize| {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let t = token(&f.attacker, &uuid::Uuid::new_v4().to_string());
                let v = f.verifier.clone();
                tokio::spawn(async move { v.verify_refreshing(&t, NOW).await })
            })
            .collect();
        async move {
            for t in tasks {
                let e = t.await.unwrap().unwrap_err();
                assert_eq!(e.reason(), Some(Reason::UnknownKid));
            }
        }
    };
    // Within the cooldown of the start-up fetch: no fetch at all.
    flood(1000).await;
    assert_eq!(f.srv.hits(), 1);
    // Each new cooldown window: 1000 concurrent random kids, exactly one fetch.
    for window in 1..=3 {
        f.clock.advance(Limits::default().cooldown);
        flood(1000).await;
        assert_eq!(f.srv.hits(), 1 + window);
    }
}

#[tokio::test]
async fn max_age_is_honoured_and_clamped() {
    let f = fixture(Mode::Ok, fast()).await;
    f.verifier.prefetch().await;
    let remote = f.verifier.remotes().next().unwrap().clone();
    f.clock.advance(Duration::from_secs(119));
    remote.refresh_if_due().await;
    assert_eq!(f.srv.hits(), 1, "fresh for max-age=120");
    f.clock.advance(Duration::from_secs(1));
    remote.refresh_if_due().await;
    assert_eq!(f.srv.hits(), 2, "due at max-age");
    // max-age=5 is clamped up to one minute.
    *f.srv.cache_control.lock().unwrap() = "max-age=5".into();
    f.clock.advance(Duration::from_secs(120));
    remote.refresh_if_due().await;
    assert_eq!(f.srv.hits(), 3);
    f.clock.advance(Duration::from_secs(59));
    remote.refresh_if_due().await;
    assert_eq!(f.srv.hits(), 3, "clamped to 60 s");
    f.clock.advance(Duration::from_secs(1));
    remote.refresh_if_due().await;
    assert_eq!(f.srv.hits(), 4);
}

#[test]
fn cache_control_parsing_and_clamping() {
    let l = Limits::default();
    assert_eq!(max_age("public, max-age=600"), Some(600));
    assert_eq!(max_age("MAX-AGE = \"90\""), Some(90));
    assert_eq!(max_age("no-store"), Some(0));
    assert_eq!(max_age("max-age=-1"), None);
    assert_eq!(max_age("private"), None);
    assert_eq!(freshness(None, &l), l.default_age);
    assert_eq!(freshness(Some(0), &l), Duration::from_secs(60));
    assert_eq!(
        freshness(Some(u64::MAX), &l),
        Duration::from_secs(24 * 3600)
    );
    assert_eq!(freshness(Some(600), &l), Duration::from_secs(600));
}

#[tokio::test]
async fn background_refresh_stops_on_cancel() {
    let f = fixture(Mode::Ok, fast()).await;
    let tasks = tokio_util::task::TaskTracker::new();
    let cancel = tokio_util::sync::CancellationToken::new();
    f.verifier.spawn_refresh(&tasks, &cancel);
    tasks.close();
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), tasks.wait())
        .await
        .unwrap();
}

// The verified-token cache (`super::token_cache`): a hit must never outlive what a full check
// would accept.

#[tokio::test]
async fn a_cached_token_is_refused_once_its_key_leaves_the_jwks() {
    let f = fixture(Mode::Ok, fast()).await;
    f.verifier.prefetch().await;
    let good = token(&f.key, "k1");
    assert!(verdict(&f, &good).await.is_ok());
    assert_eq!(f.verifier.cached_tokens(), 1);
    // The issuer rotates k1 out; the next refresh drops it.
    let (_, new_jwk) = ed25519("k2");
    *f.srv.jwks.lock().unwrap() = json!({"keys": [new_jwk]});
    f.clock.advance(Duration::from_secs(120));
    f.verifier.remotes().next().unwrap().refresh_if_due().await;
    assert_eq!(f.srv.hits(), 2);
    assert!(matches!(verdict(&f, &good).await, Err(Reason::UnknownKid)));
}

#[tokio::test]
async fn a_cached_token_expires_at_the_same_second_as_an_uncached_one() {
    let f = fixture(Mode::Ok, fast()).await;
    f.verifier.prefetch().await;
    let good = token(&f.key, "k1");
    // exp = NOW + 600, leeway 30: valid while now < NOW + 630.
    for now in [NOW, NOW + 629] {
        assert!(f.verifier.verify_refreshing(&good, now).await.is_ok());
    }
    assert_eq!(f.verifier.cached_tokens(), 1);
    let late = f.verifier.verify_refreshing(&good, NOW + 630).await;
    assert!(matches!(
        late.map_err(|e| e.reason().unwrap()),
        Err(Reason::Expired)
    ));
    assert_eq!(
        f.verifier.cached_tokens(),
        0,
        "the expired entry is dropped"
    );
}

#[tokio::test]
async fn the_same_claims_under_a_forged_signature_are_not_served_from_the_cache() {
    let f = fixture(Mode::Ok, fast()).await;
    f.verifier.prefetch().await;
    let good = token(&f.key, "k1");
    assert!(verdict(&f, &good).await.is_ok());
    // Same header and payload, signed by another key under the same kid.
    let forged = token(&f.attacker, "k1");
    assert_eq!(
        good.rsplit_once('.').unwrap().0,
        forged.rsplit_once('.').unwrap().0
    );
    assert!(matches!(
        verdict(&f, &forged).await,
        Err(Reason::BadSignature)
    ));
    // Nor with the signature stripped or altered by one character.
    let (msg, sig) = good.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    for t in [format!("{msg}."), format!("{msg}.{flipped}{}", &sig[1..])] {
        assert!(verdict(&f, &t).await.is_err());
    }
    assert_eq!(f.verifier.cached_tokens(), 1);
}
