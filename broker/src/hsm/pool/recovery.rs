//! Recovery of the session pool: the health probe, the reaction to a lost device (drain,
//! finalize + initialize, log in again) and reopening after another pool re-initialized the
//! shared library. Split from `pool.rs` to keep the hot path readable.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use cryptoki::context::Pkcs11;
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use secrecy::SecretString;
use tokio::time::Instant;

use super::super::TokenSelector;
use super::super::error::HsmError;
use super::super::module::ModuleLife;
use super::super::ops;
use super::{Inner, REINIT_BACKOFF, lock};

impl Inner {
    /// Health probe on the long-lived session; recovers when the device is gone.
    pub(crate) async fn check(self: &Arc<Self>) -> Result<(), HsmError> {
        if !self.is_healthy() && !self.permits.is_closed() {
            return self.recover(true, true).await;
        }
        self.ready().await?;
        let inner = Arc::clone(self);
        let probe = tokio::task::spawn_blocking(move || inner.probe_blocking()).await?;
        match probe {
            Ok(()) => Ok(()),
            Err(error) => {
                self.healthy.store(false, Ordering::Release);
                tracing::warn!(hsm = %self.id, error = %error, "HSM health probe failed");
                self.recover(true, true).await
            }
        }
    }

    fn probe_blocking(&self) -> Result<(), HsmError> {
        let epoch = self.life.shared();
        let conn = lock(&self.state);
        let (slot, pool_epoch) = (conn.slot, conn.epoch);
        drop(conn);
        let Some(slot) = slot.filter(|_| pool_epoch == *epoch) else {
            return Err(HsmError::Unavailable {
                reason: "not connected",
            });
        };
        let main = lock(&self.main);
        let Some(session) = main.as_ref() else {
            return Err(HsmError::Unavailable {
                reason: "no long-lived session",
            });
        };
        session
            .get_session_info()
            .map_err(HsmError::ck("C_GetSessionInfo"))?;
        ops::probe_token(&self.ctx, slot)
    }

    pub(super) async fn device_gone(self: &Arc<Self>, error: &HsmError) {
        self.healthy.store(false, Ordering::Release);
        tracing::warn!(hsm = %self.id, error = %error, "HSM device gone; draining and re-initializing");
        // The answer is Unavailable either way; a failed attempt is retried by later calls.
        let _recovered = self.recover(true, false).await;
    }

    /// Healthy and on the current library epoch, or recovered, or `Unavailable`.
    pub(super) async fn ready(self: &Arc<Self>) -> Result<(), HsmError> {
        if self.permits.is_closed() {
            return Err(HsmError::Unavailable {
                reason: "the session pool is closed",
            });
        }
        if !self.is_healthy() {
            return self.recover(true, false).await;
        }
        let (pool_epoch, connected) = {
            let state = lock(&self.state);
            (state.epoch, state.slot.is_some())
        };
        if !connected || pool_epoch != self.life.epoch() {
            // Another pool of this process re-initialized the library (reopen, no rescan),
            // or a reopen is under way (wait for it).
            return self.recover(false, true).await;
        }
        Ok(())
    }

    /// Drains the pool and reopens the long-lived session; with `rescan`, finalizes and
    /// initializes the library first (unless someone else already did). Without `wait`,
    /// gives up at once when a recovery is running or the last one was too recent.
    async fn recover(self: &Arc<Self>, rescan: bool, wait: bool) -> Result<(), HsmError> {
        let unavailable = HsmError::Unavailable {
            reason: "the HSM device is gone; re-initializing",
        };
        let mut last = if wait {
            self.recovery.lock().await
        } else {
            match self.recovery.try_lock() {
                Ok(last) => last,
                Err(_) => return Err(unavailable),
            }
        };
        let current = {
            let state = lock(&self.state);
            state.slot.is_some() && state.epoch == self.life.epoch()
        };
        if self.is_healthy() && current {
            return Ok(()); // someone recovered while we waited
        }
        if !wait && last.is_some_and(|t| t.elapsed() < REINIT_BACKOFF) {
            return Err(unavailable);
        }
        *last = Some(Instant::now());
        let inner = Arc::clone(self);
        match tokio::task::spawn_blocking(move || inner.reopen_blocking(rescan)).await? {
            Ok(()) => {
                tracing::info!(hsm = %self.id, "HSM session pool re-initialized");
                Ok(())
            }
            Err(error) => {
                tracing::warn!(hsm = %self.id, error = %error, "HSM re-initialization failed");
                Err(unavailable)
            }
        }
    }

    fn reopen_blocking(&self, rescan: bool) -> Result<(), HsmError> {
        let seen = {
            let mut state = lock(&self.state);
            state.generation += 1;
            state.slot = None;
            state.idle.clear(); // forgotten, not closed: see SessionGuard::drop
            state.epoch
        };
        lock(&self.main).take();
        lock(&self.keys).handles.clear();
        let result = if rescan {
            rescan_and_open(&self.ctx, &self.life, &self.token, &self.pin, seen)
        } else {
            open_main(&self.ctx, &self.life, &self.token, &self.pin)
        };
        match result {
            Ok((slot, main, epoch)) => {
                *lock(&self.main) = Some(main);
                let mut state = lock(&self.state);
                (state.slot, state.epoch) = (Some(slot), epoch);
                self.healthy.store(true, Ordering::Release);
                Ok(())
            }
            Err(error) => {
                // The next attempt finalizes again unless someone else does it first.
                lock(&self.state).epoch = self.life.epoch();
                self.healthy.store(false, Ordering::Release);
                Err(error)
            }
        }
    }
}

/// Finds the token, opens the long-lived session and logs in; returns the epoch they belong to.
pub(super) fn open_main(
    ctx: &Pkcs11,
    life: &ModuleLife,
    token: &TokenSelector,
    pin: &SecretString,
) -> Result<(Slot, Session, u64), HsmError> {
    let epoch = life.shared();
    let slot = ops::find_token(ctx, token)?;
    let session = ctx
        .open_rw_session_no_drop(slot)
        .map_err(HsmError::ck("C_OpenSession"))?;
    if let Err(error) = ops::login(&session, pin) {
        let _closed = session.close();
        return Err(error);
    }
    Ok((slot, session, *epoch))
}

/// Finalizes + initializes the library so that it rescans its tokens, then opens the
/// long-lived session. When another pool re-initialized meanwhile, its scan may predate this
/// token's return, so a "not found" after a re-init that was not ours forces one of our own.
pub(super) fn rescan_and_open(
    ctx: &Pkcs11,
    life: &ModuleLife,
    token: &TokenSelector,
    pin: &SecretString,
    mut seen: u64,
) -> Result<(Slot, Session, u64), HsmError> {
    const ATTEMPTS: usize = 3;
    for _ in 1..ATTEMPTS {
        let (epoch, ours) = life.reinitialize(ctx, seen)?;
        match open_main(ctx, life, token, pin) {
            Err(HsmError::TokenNotFound { .. }) if !ours => seen = epoch,
            other => return other,
        }
    }
    life.reinitialize(ctx, seen)?;
    open_main(ctx, life, token, pin)
}
