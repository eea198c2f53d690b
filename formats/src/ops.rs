//! The operations of the broker, written once: what an audit record names in its `op` field
//! ([`Op`], snake_case on the wire) and the Cedar actions policies are written against
//! ([`Action`], [`SignAction`], [`AuditAction`]; the schema in [`crate::policy::SCHEMA`]).
//!
//! One list, the `operations!` declaration below, names every operation; those that policy decides as a key
//! action of the same name become [`Action`]s too, so the two cannot drift apart. What stays
//! apart is honest difference: the broker's own operations (automatic rotation, destruction)
//! are recorded but never asked of policy; `Signing.SignDsse` is decided as `SignAttestation`
//! and `Signing.GetPublicKey` as `GetKey`; reading the log is decided (on the log, not a key)
//! but not recorded.

use serde::{Deserialize, Serialize};

/// Declares [`Op`] and [`Action`] from one list: first the operations decided by the Cedar key
/// action of the same name, then the others.
macro_rules! operations {
    (
        key actions { $( $(#[$ad:meta])* $a:ident, )* }
        others { $( $(#[$od:meta])* $o:ident, )* }
    ) => {
        /// The operation an audit record is about (its `op` field, snake_case).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Op {
            $( $(#[$ad])* $a, )*
            $( $(#[$od])* $o, )*
        }

        /// An operation on a key (or, for `ListKeys` and `RevokeLeases`, on no key), as a
        /// Cedar action of the same name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Action {
            $( $(#[$ad])* $a, )*
        }

        impl Action {
            /// Every action, for tests and `policy check`.
            pub const ALL: [Self; [$(stringify!($a)),*].len()] = [$(Self::$a),*];

            /// The Cedar action id.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Self::$a => stringify!($a), )*
                }
            }
        }

        impl From<Action> for Op {
            fn from(action: Action) -> Self {
                match action {
                    $( Action::$a => Self::$a, )*
                }
            }
        }

        impl Op {
            /// Every operation.
            pub const ALL: [Self; [$(stringify!($a)),* , $(stringify!($o)),*].len()] =
                [$(Self::$a,)* $(Self::$o,)*];

            /// The key action of the same name that decides it, if policy decides it so.
            #[must_use]
            pub fn action(self) -> Option<Action> {
                match self {
                    $( Self::$a => Some(Action::$a), )*
                    $( Self::$o => None, )*
                }
            }
        }
    };
}

operations! {
    key actions {
        /// `DataKeys.GenerateDataKey`.
        GenerateDataKey,
        /// `DataKeys.GenerateDataKeyWithoutPlaintext`.
        GenerateDataKeyWithoutPlaintext,
        /// `DataKeys.Decrypt`.
        Decrypt,
        /// `DataKeys.Encrypt`.
        Encrypt,
        /// `DataKeys.ReEncrypt`.
        ReEncrypt,
        /// `KeyAdmin.CreateKey`.
        CreateKey,
        /// `KeyAdmin.GetKey` (also decides `Signing.GetPublicKey`).
        GetKey,
        /// `KeyAdmin.ListKeys` (resource `*`).
        ListKeys,
        /// `KeyAdmin.RotateKey`.
        RotateKey,
        /// `KeyAdmin.UpdateKey`.
        UpdateKey,
        /// `KeyAdmin.DisableKey`.
        DisableKey,
        /// `KeyAdmin.EnableKey`.
        EnableKey,
        /// `KeyAdmin.ScheduleKeyDestruction`.
        ScheduleKeyDestruction,
        /// `KeyAdmin.CancelKeyDestruction`.
        CancelKeyDestruction,
        /// `KeyAdmin.RevokeLeases` (resource `*`).
        RevokeLeases,
        /// XKS proxy API `GetKeyMetadata` (AWS KMS asks a key's spec, usage and status).
        XksGetKeyMetadata,
        /// XKS proxy API `Encrypt`.
        XksEncrypt,
        /// XKS proxy API `Decrypt`.
        XksDecrypt,
    }
    others {
        /// The broker rotated a key by itself (`rotation_period` or `rotate_after_wraps`).
        AutoRotateKey,
        /// The broker destroyed a key's HSM objects at the end of its waiting period.
        DestroyKey,
        /// `Signing.Sign` (decided as [`SignAction::Sign`]).
        Sign,
        /// `Signing.SignDsse` (decided as [`SignAction::SignAttestation`]).
        SignDsse,
        /// `Signing.GetPublicKey` (decided as [`Action::GetKey`]).
        GetPublicKey,
    }
}

/// A signing operation, as a Cedar action (with a `SigningContext`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignAction {
    /// `Signing.Sign` (and `GetPublicKey` is `GetKey`).
    Sign,
    /// `Signing.SignDsse`.
    SignAttestation,
}

impl SignAction {
    /// Both actions.
    pub const ALL: [Self; 2] = [Self::Sign, Self::SignAttestation];

    /// The Cedar action id.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sign => "Sign",
            Self::SignAttestation => "SignAttestation",
        }
    }

    /// The operation it decides (and its audit record names).
    #[must_use]
    pub fn op(self) -> Op {
        match self {
            Self::Sign => Op::Sign,
            Self::SignAttestation => Op::SignDsse,
        }
    }
}

/// Reading the audit log, as a Cedar action on the `Keybroker::AuditLog` entity: its resource
/// is the log, not a key, and it is decided but not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditAction {
    /// `Audit.Watch`: the records.
    WatchAudit,
    /// `Audit.GetCheckpoint`, `GetInclusionProof`, `GetConsistencyProof`: hashes only.
    ReadAuditProofs,
}

impl AuditAction {
    /// Both actions.
    pub const ALL: [Self; 2] = [Self::WatchAudit, Self::ReadAuditProofs];

    /// The Cedar action id.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WatchAudit => "WatchAudit",
            Self::ReadAuditProofs => "ReadAuditProofs",
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_schema_declares_exactly_the_actions_of_the_list() {
        let (schema, _) =
            cedar_policy::Schema::from_cedarschema_str(crate::policy::SCHEMA).unwrap();
        let declared: BTreeSet<String> = schema
            .actions()
            .map(|uid| uid.id().unescaped().to_owned())
            .collect();
        let listed: BTreeSet<String> = Action::ALL
            .iter()
            .map(|a| a.as_str())
            .chain(SignAction::ALL.iter().map(|a| a.as_str()))
            .chain(AuditAction::ALL.iter().map(|a| a.as_str()))
            .map(str::to_owned)
            .collect();
        assert_eq!(declared, listed);
    }

    #[test]
    fn records_name_operations_in_snake_case() {
        let names: Vec<String> = Op::ALL
            .iter()
            .map(|op| {
                serde_json::to_value(op)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(names[0], "generate_data_key");
        assert!(names.contains(&"sign_dsse".to_owned()));
        assert!(names.contains(&"xks_get_key_metadata".to_owned()));
        for op in Op::ALL {
            let back: Op = serde_json::from_value(serde_json::to_value(op).unwrap()).unwrap();
            assert_eq!(back, op);
        }
    }

    #[test]
    fn every_key_action_is_the_operation_of_its_name() {
        for a in Action::ALL {
            assert_eq!(Op::from(a).action(), Some(a));
        }
        let own = Op::ALL.iter().filter(|op| op.action().is_none()).count();
        assert_eq!(
            own, 5,
            "AutoRotateKey, DestroyKey and the three signing calls"
        );
    }
}
