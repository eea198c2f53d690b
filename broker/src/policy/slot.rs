//! The policy in force, swappable while serving: a reload (SIGHUP) reads the policy file again
//! and swaps it in only if it parses and validates; otherwise the old policy keeps deciding and
//! the reload reports why. Requests take one snapshot ([`PolicySlot::current`]) and decide and
//! record with it, so the audit record always names the policy that decided.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{PolicyEngine, PolicyError};

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The config names no policy file: the built-in policy stays.
    Builtin,
    /// The file has the same text (sha256) as the policy in force.
    Unchanged {
        /// sha256 of the policy in force.
        sha256: String,
    },
    /// A new policy is in force.
    Replaced {
        /// sha256 of the policy before.
        old: String,
        /// sha256 of the policy now in force.
        new: String,
    },
}

/// The policy in force, and where a reload reads it from.
#[derive(Debug)]
pub struct PolicySlot {
    current: ArcSwap<PolicyEngine>,
    source: Option<PathBuf>,
}

impl PolicySlot {
    /// Loads the policy from `source`, or the built-in default when there is none.
    ///
    /// # Errors
    /// As [`PolicyEngine::load`].
    pub fn load(source: Option<PathBuf>) -> Result<Self, PolicyError> {
        let engine = match &source {
            Some(path) => PolicyEngine::load(path)?,
            None => PolicyEngine::builtin()?,
        };
        Ok(Self {
            current: ArcSwap::from_pointee(engine),
            source,
        })
    }

    /// The policy in force now. Take it once per request.
    #[must_use]
    pub fn current(&self) -> Arc<PolicyEngine> {
        self.current.load_full()
    }

    /// Reads the policy file again and puts it in force if it is valid.
    ///
    /// # Errors
    /// The new file cannot be read, parsed or validated; the old policy stays in force.
    pub fn reload(&self) -> Result<Reloaded, PolicyError> {
        let Some(path) = &self.source else {
            return Ok(Reloaded::Builtin);
        };
        let engine = PolicyEngine::load(path)?;
        let old = self.current.load();
        if old.sha256() == engine.sha256() {
            return Ok(Reloaded::Unchanged {
                sha256: engine.sha256().to_owned(),
            });
        }
        let outcome = Reloaded::Replaced {
            old: old.sha256().to_owned(),
            new: engine.sha256().to_owned(),
        };
        self.current.store(Arc::new(engine));
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOW_GET: &str =
        "@id(\"a\")\npermit (principal, action == Keybroker::Action::\"GetKey\", resource);\n";
    const ALLOW_LIST: &str =
        "@id(\"b\")\npermit (principal, action == Keybroker::Action::\"ListKeys\", resource);\n";

    fn slot(text: &str) -> (tempfile::TempDir, PathBuf, PolicySlot) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.cedar");
        std::fs::write(&path, text).unwrap();
        let slot = PolicySlot::load(Some(path.clone())).unwrap();
        (dir, path, slot)
    }

    #[test]
    fn reload_swaps_in_a_valid_new_policy() {
        let (_d, path, slot) = slot(ALLOW_GET);
        let before = slot.current();
        std::fs::write(&path, ALLOW_LIST).unwrap();
        let r = slot.reload().unwrap();
        let now = slot.current();
        assert_ne!(before.sha256(), now.sha256());
        assert_eq!(
            r,
            Reloaded::Replaced {
                old: before.sha256().to_owned(),
                new: now.sha256().to_owned()
            }
        );
        // A snapshot taken before the reload keeps deciding with the old policy.
        assert_eq!(
            before.sha256(),
            PolicyEngine::from_text(ALLOW_GET, "t").unwrap().sha256()
        );
    }

    #[test]
    fn reload_keeps_the_old_policy_when_the_new_one_is_invalid() {
        let (_d, path, slot) = slot(ALLOW_GET);
        let before = slot.current().sha256().to_owned();
        for bad in [
            "permit (principal, action, resource", // syntax
            "@id(\"x\")\npermit (principal, action, resource) when { resource.nope == 1 };", // schema
            "permit (principal, action, resource);", // no @id
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(slot.reload().is_err(), "{bad}");
            assert_eq!(slot.current().sha256(), before);
        }
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(slot.reload(), Err(PolicyError::Read { .. })));
        assert_eq!(slot.current().sha256(), before);
    }

    #[test]
    fn reload_of_the_same_text_is_unchanged_and_builtin_has_nothing_to_reload() {
        let (_d, _path, slot) = slot(ALLOW_GET);
        assert!(matches!(slot.reload().unwrap(), Reloaded::Unchanged { .. }));
        let builtin = PolicySlot::load(None).unwrap();
        assert_eq!(builtin.reload().unwrap(), Reloaded::Builtin);
    }
}
