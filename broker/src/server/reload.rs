//! Reloading, while serving, what may change without a restart (SIGHUP).

use std::sync::Arc;

use crate::api::ApiState;
use crate::identity::ClientCa;
use crate::policy::Reloaded;

/// Reloads, while serving, what an operator may change without a restart: the Cedar policy and
/// the mTLS client CA bundle. Each part that fails to reload keeps its old state; requests are
/// never dropped.
#[derive(Debug, Clone)]
pub struct Reloader {
    pub(super) state: Arc<ApiState>,
    pub(super) client_ca: Option<Arc<ClientCa>>,
}

/// Why one part of a reload was refused (its old state stays in force).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new policy file cannot be read, parsed or validated.
    #[error("policy.file: {0}")]
    Policy(#[from] crate::policy::PolicyError),
    /// The new client CA bundle cannot be read or holds no usable CA certificate.
    #[error("identity.client_ca_file: {0}")]
    ClientCa(#[source] crate::identity::IdentityError),
}

impl Reloader {
    /// Reloads every part, logs what changed, and returns the parts that were refused. Blocking
    /// (reads files): call it from `spawn_blocking`.
    pub fn reload(&self) -> Vec<ReloadError> {
        let mut refused = Vec::new();
        match self.state.policy.reload() {
            Ok(Reloaded::Replaced { old, new }) => {
                tracing::info!(old_sha256 = %old, policy_sha256 = %new, "policy reloaded");
            }
            Ok(Reloaded::Unchanged { sha256 }) => {
                tracing::info!(policy_sha256 = %sha256, "policy unchanged");
            }
            Ok(Reloaded::Builtin) => {
                tracing::info!("built-in policy in force: nothing to reload");
            }
            Err(e) => {
                tracing::error!(error = %e, "policy reload refused; the previous policy stays in force");
                refused.push(e.into());
            }
        }
        // `ClientCa::reload` logs a replacement or a refusal (the old bundle stays).
        match self.client_ca.as_ref().map(|ca| ca.reload()) {
            Some(Ok(crate::identity::Reloaded::Unchanged)) => {
                tracing::info!("client CA bundle unchanged");
            }
            Some(Err(e)) => refused.push(ReloadError::ClientCa(e)),
            Some(Ok(crate::identity::Reloaded::Replaced(_))) | None => {}
        }
        refused
    }
}
