//! The session pool: a semaphore-bounded set of cryptoki `Session`s handed out through a guard,
//! one long-lived logged-in session that keeps the login alive, the label → handle cache, and
//! the recovery path (drain, re-initialize, log in again) that runs when the device goes away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use cryptoki::context::Pkcs11;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use secrecy::SecretString;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::TokenSelector;
use super::error::{HsmError, HsmErrorKind, is_stale_handle};
use super::module::ModuleLife;
use super::ops;

mod recovery;
mod stats;
use recovery::{open_main, rescan_and_open};
pub use stats::PoolSnapshot;
use stats::PoolStats;

/// Ordinary calls on an unhealthy pool retry the re-initialization at most this often;
/// `check()` always retries.
/// (`tokio::time::Instant`, so tests can drive it with a paused clock.)
const REINIT_BACKOFF: Duration = Duration::from_millis(250);
/// How often a call may find its session opened before a re-initialization and start over.
const MAX_STALE_RETRIES: usize = 5;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where sessions handed out now belong: pool generation, library epoch, token slot.
#[derive(Clone, Copy)]
struct Conn {
    generation: u64,
    epoch: u64,
    slot: Slot,
}

struct State {
    /// Bumped whenever the pool is drained; sessions of older generations are not taken back.
    generation: u64,
    /// Library epoch the sessions below belong to.
    epoch: u64,
    /// `None` while the token is not (yet again) available.
    slot: Option<Slot>,
    idle: Vec<Session>,
}

struct KeyCache {
    epoch: u64,
    handles: HashMap<String, ObjectHandle>,
}

/// The pool's shared state (behind the `Arc` of `HsmPool`).
pub(crate) struct Inner {
    pub(crate) id: String,
    token: TokenSelector,
    pin: SecretString,
    ctx: Pkcs11,
    life: Arc<ModuleLife>,
    permits: Arc<Semaphore>,
    /// Number of permits the pool was created with.
    size: usize,
    state: Mutex<State>,
    /// The long-lived session holding the login; touched on blocking threads only.
    main: Mutex<Option<Session>>,
    keys: Mutex<KeyCache>,
    /// Serializes `create_aes_key` so two creates of one label cannot both pass the check.
    create: Mutex<()>,
    healthy: AtomicBool,
    /// Serializes recovery; holds the time of the last attempt.
    recovery: tokio::sync::Mutex<Option<Instant>>,
    stats: PoolStats,
}

/// What a pooled operation sees: the session, its token slot, and the key cache.
pub(crate) struct Cx<'a> {
    pub(crate) ctx: &'a Pkcs11,
    pub(crate) session: &'a Session,
    pub(crate) slot: Slot,
    inner: &'a Inner,
    epoch: u64,
}

impl Cx<'_> {
    /// The AES key labelled `label`, from the cache or the token. "Not found" is only answered
    /// once the token itself answered, so a vanished token reads as device gone.
    pub(crate) fn key(&self, label: &str) -> Result<ObjectHandle, HsmError> {
        {
            let mut cache = lock(&self.inner.keys);
            if cache.epoch != self.epoch {
                cache.handles.clear();
                cache.epoch = self.epoch;
            }
            if let Some(handle) = cache.handles.get(label) {
                return Ok(*handle);
            }
        }
        let Some(handle) = ops::find_aes_key(self.session, label)? else {
            ops::probe_token(self.ctx, self.slot)?;
            return Err(HsmError::KeyNotFound {
                label: label.to_owned(),
            });
        };
        let mut cache = lock(&self.inner.keys);
        if cache.epoch == self.epoch {
            cache.handles.insert(label.to_owned(), handle);
        }
        Ok(handle)
    }

    /// Runs `f` with the key's handle; a stale handle is evicted so the retry looks it up again.
    pub(crate) fn with_key<T>(
        &self,
        label: &str,
        f: impl FnOnce(ObjectHandle) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let result = f(self.key(label)?);
        if let Err(e) = &result
            && is_stale_handle(e)
        {
            self.forget_key(label);
        }
        result
    }

    /// Drops `label` from the cache (after destroy).
    pub(crate) fn forget_key(&self, label: &str) {
        lock(&self.inner.keys).handles.remove(label);
    }

    /// Held while checking for and creating a key.
    pub(crate) fn create_lock(&self) -> MutexGuard<'_, ()> {
        lock(&self.inner.create)
    }
}

/// A pooled session on loan; goes back to the pool on drop unless it broke or is outdated.
struct SessionGuard {
    inner: Arc<Inner>,
    session: Option<Session>,
    conn: Conn,
    keep: bool,
    _permit: OwnedSemaphorePermit,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        if self.keep {
            let mut state = lock(&self.inner.state);
            if state.generation == self.conn.generation {
                state.idle.push(session);
            }
        }
        // Otherwise the session is forgotten, not closed: it broke (already closed on the
        // blocking thread) or it belongs to a finalized library, where its handle number may
        // already name someone else's new session.
    }
}

enum Failure {
    /// The library was re-initialized since the session was handed out.
    Stale,
    Hsm(HsmError),
}

impl Inner {
    /// Blocking: loads the module, finds the token, logs in, opens the long-lived session.
    pub(crate) fn connect_blocking(
        id: String,
        module: &std::path::Path,
        token: TokenSelector,
        pin: SecretString,
        pool_size: usize,
    ) -> Result<Self, HsmError> {
        let ctx = Pkcs11::new(module).map_err(|source| HsmError::ModuleLoad {
            module: module.to_path_buf(),
            source,
        })?;
        let life = ModuleLife::for_path(module);
        let seen = life.initialize(&ctx)?;
        let opened = match open_main(&ctx, &life, &token, &pin) {
            // The library may have been initialized (by another pool) before this token was
            // created; SoftHSM only scans its token directory in C_Initialize.
            Err(HsmError::TokenNotFound { .. }) => rescan_and_open(&ctx, &life, &token, &pin, seen),
            other => other,
        }?;
        let (slot, main, epoch) = opened;
        Ok(Self {
            id,
            token,
            pin,
            ctx,
            life,
            permits: Arc::new(Semaphore::new(pool_size.max(1))),
            size: pool_size.max(1),
            state: Mutex::new(State {
                generation: 0,
                epoch,
                slot: Some(slot),
                idle: Vec::new(),
            }),
            main: Mutex::new(Some(main)),
            keys: Mutex::new(KeyCache {
                epoch,
                handles: HashMap::new(),
            }),
            create: Mutex::new(()),
            healthy: AtomicBool::new(true),
            recovery: tokio::sync::Mutex::new(None),
            stats: PoolStats::default(),
        })
    }

    /// Sessions handed out right now (for metrics).
    pub(crate) fn in_use(&self) -> usize {
        self.size.saturating_sub(self.permits.available_permits())
    }

    /// Sessions in use and idle, waits and failures by return code (for metrics).
    pub(crate) fn snapshot(&self) -> PoolSnapshot {
        let idle = lock(&self.state).idle.len();
        self.stats.snapshot(self.in_use(), idle)
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Closes the pool: waiting and later calls answer `Unavailable`.
    pub(crate) fn close(&self) {
        self.permits.close();
        self.healthy.store(false, Ordering::Release);
    }

    /// Runs `f` on a pooled session off the async workers, with the error policy: caller
    /// errors are returned, a broken session is dropped and the call retried once, a lost
    /// device triggers recovery and answers `Unavailable`.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T, HsmError>
    where
        F: Fn(&Cx<'_>) -> Result<T, HsmError> + Send + Sync + 'static,
        T: Send + 'static,
    {
        let f = Arc::new(f);
        let (mut broken, mut stale) = (0, 0);
        loop {
            self.ready().await?;
            let Some(mut guard) = self.acquire().await? else {
                stale += 1;
                if stale > MAX_STALE_RETRIES {
                    return Err(HsmError::Unavailable {
                        reason: "the PKCS#11 library keeps re-initializing",
                    });
                }
                continue;
            };
            let (inner, f2) = (Arc::clone(self), Arc::clone(&f));
            let result = tokio::task::spawn_blocking(move || {
                let result = exec(&inner, &mut guard, &*f2);
                drop(guard);
                result
            })
            .await?;
            let error = match result {
                Ok(value) => return Ok(value),
                Err(Failure::Stale) if stale < MAX_STALE_RETRIES => {
                    stale += 1;
                    continue;
                }
                Err(Failure::Stale) => {
                    return Err(HsmError::Unavailable {
                        reason: "the PKCS#11 library keeps re-initializing",
                    });
                }
                Err(Failure::Hsm(error)) => {
                    self.stats.failed(&error);
                    error
                }
            };
            match error.kind() {
                HsmErrorKind::Caller => return Err(error),
                HsmErrorKind::BrokenSession if broken == 0 => {
                    tracing::debug!(hsm = %self.id, error = %error, "broken session dropped, retrying");
                    broken += 1;
                }
                HsmErrorKind::BrokenSession => return Err(error),
                HsmErrorKind::DeviceGone => {
                    self.device_gone(&error).await;
                    return Err(HsmError::Unavailable {
                        reason: "the HSM device is gone; re-initializing",
                    });
                }
            }
        }
    }

    /// A session on loan, or `None` when the pool is being reopened (then call `ready`).
    async fn acquire(self: &Arc<Self>) -> Result<Option<SessionGuard>, HsmError> {
        let closed = || HsmError::Unavailable {
            reason: "the session pool is closed",
        };
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(closed()),
            Err(TryAcquireError::NoPermits) => {
                self.stats.waited();
                Arc::clone(&self.permits)
                    .acquire_owned()
                    .await
                    .map_err(|_| closed())?
            }
        };
        let mut state = lock(&self.state);
        let Some(slot) = state.slot else {
            return Ok(None);
        };
        let conn = Conn {
            generation: state.generation,
            epoch: state.epoch,
            slot,
        };
        let session = state.idle.pop();
        drop(state);
        Ok(Some(SessionGuard {
            inner: Arc::clone(self),
            session,
            conn,
            keep: false,
            _permit: permit,
        }))
    }
}

/// Blocking body of `run`: checks the epoch under the shared lifecycle lock (so no finalize
/// runs meanwhile), opens a session if the pool had none idle, runs `f`, closes a broken one.
fn exec<T>(
    inner: &Inner,
    guard: &mut SessionGuard,
    f: &dyn Fn(&Cx<'_>) -> Result<T, HsmError>,
) -> Result<T, Failure> {
    let epoch = inner.life.shared();
    if *epoch != guard.conn.epoch {
        return Err(Failure::Stale);
    }
    let session = match guard.session.take() {
        Some(session) => session,
        None => inner
            .ctx
            .open_rw_session_no_drop(guard.conn.slot)
            .map_err(|e| Failure::Hsm(HsmError::ck("C_OpenSession")(e)))?,
    };
    let cx = Cx {
        ctx: &inner.ctx,
        session: &session,
        slot: guard.conn.slot,
        inner,
        epoch: *epoch,
    };
    let result = f(&cx);
    match &result {
        Err(e) if e.kind() != HsmErrorKind::Caller => {
            // Still under the shared lock, so the handle is still this library's session.
            let _closed = session.close();
        }
        _ => {
            guard.session = Some(session);
            guard.keep = true;
        }
    }
    drop(epoch);
    result.map_err(Failure::Hsm)
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Close this pool's sessions (the long-lived one last), unless the library was
        // re-initialized meanwhile. Dropping `Inner` means no guard is out.
        let mut sessions = std::mem::take(&mut lock(&self.state).idle);
        let pool_epoch = lock(&self.state).epoch;
        sessions.extend(lock(&self.main).take());
        let life = Arc::clone(&self.life);
        let close = move || {
            let epoch = life.shared();
            if *epoch == pool_epoch {
                for session in sessions {
                    let _closed = session.close();
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(close)),
            Err(_) => close(),
        }
    }
}
