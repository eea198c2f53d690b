//! The `seal "keybroker" { … }` stanza as it arrives in SetConfig's `with_config_map`, checked
//! field by field so a typo or a missing value is reported by bao at start, with the field name.

use std::collections::HashMap;
use std::path::PathBuf;

use keybroker_client::ClientConfig;

/// Most entries accepted in the config map.
const MAX_FIELDS: usize = 32;
/// Longest value accepted (paths and URLs).
const MAX_VALUE_LEN: usize = 4096;
/// Longest keybroker key name (the broker's limit).
const MAX_KEY_NAME_LEN: usize = 128;

/// The fields the seal stanza may set. bao itself strips `purpose`, `disabled` and
/// `health_check_*` before passing the rest on.
pub const FIELDS: [&str; 6] = [
    "endpoint",
    "key_name",
    "token_file",
    "ca_cert",
    "client_cert",
    "client_key",
];

/// A validated seal stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealSettings {
    /// The broker's gRPC endpoint, `https://host:port`.
    pub endpoint: String,
    /// The keybroker key (purpose SEAL) that wraps bao's root key.
    pub key_name: String,
    /// File holding the bearer token; `None` for mTLS-only identities.
    pub token_file: Option<PathBuf>,
    /// PEM CA bundle that signs the broker's certificate.
    pub ca_cert: PathBuf,
    /// PEM client certificate and key for mTLS to the broker.
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

/// A problem with the seal stanza; always names the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("seal stanza: {0}")]
pub struct SettingsError(String);

impl SealSettings {
    /// Validates the config map.
    ///
    /// # Errors
    /// [`SettingsError`] naming the first bad field: unknown, missing, empty, too long, a key
    /// name outside the broker's grammar, a non-https endpoint, or half an mTLS identity.
    pub fn from_map(map: &HashMap<String, String>) -> Result<Self, SettingsError> {
        let err = |m: String| Err(SettingsError(m));
        if map.len() > MAX_FIELDS {
            return err(format!("{} fields, at most {MAX_FIELDS}", map.len()));
        }
        let mut entries: Vec<(&String, &String)> = map.iter().collect();
        entries.sort();
        for (name, value) in entries {
            if !FIELDS.contains(&name.as_str()) {
                return err(format!(
                    "unknown field {name:?} (known: {})",
                    FIELDS.join(", ")
                ));
            }
            if value.trim().is_empty() {
                return err(format!("field {name:?} is empty"));
            }
            if value.len() > MAX_VALUE_LEN {
                return err(format!(
                    "field {name:?} is longer than {MAX_VALUE_LEN} bytes"
                ));
            }
            if value.chars().any(char::is_control) {
                return err(format!("field {name:?} holds a control character"));
            }
        }
        let required = |name: &str| {
            map.get(name)
                .cloned()
                .ok_or_else(|| SettingsError(format!("field {name:?} is required")))
        };
        let path = |name: &str| map.get(name).map(PathBuf::from);
        let endpoint = required("endpoint")?;
        if !endpoint.to_ascii_lowercase().starts_with("https://") {
            return err(format!(
                "field \"endpoint\" must be https://host:port, got {endpoint:?}"
            ));
        }
        let key_name = required("key_name")?;
        check_key_name(&key_name)?;
        let ca_cert = PathBuf::from(required("ca_cert")?);
        let client_identity = match (path("client_cert"), path("client_key")) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => return err("field \"client_cert\" needs \"client_key\"".into()),
            (None, Some(_)) => return err("field \"client_key\" needs \"client_cert\"".into()),
        };
        let token_file = path("token_file");
        if token_file.is_none() && client_identity.is_none() {
            return err(
                "no identity: set \"token_file\", or \"client_cert\" and \"client_key\"".into(),
            );
        }
        Ok(Self {
            endpoint,
            key_name,
            token_file,
            ca_cert,
            client_identity,
        })
    }

    /// The broker client configuration these settings describe.
    #[must_use]
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            ca: Some(self.ca_cert.clone()),
            cert: self.client_identity.as_ref().map(|(c, _)| c.clone()),
            key: self.client_identity.as_ref().map(|(_, k)| k.clone()),
            token_file: self.token_file.clone(),
            ..ClientConfig::new(self.endpoint.clone())
        }
    }
}

/// The broker's key-name grammar, `[a-z0-9][a-z0-9._/-]{0,127}`, checked here so a typo is
/// reported at bao's start rather than as a denied Encrypt.
fn check_key_name(name: &str) -> Result<(), SettingsError> {
    let ok_first = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok_rest = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._/-".contains(&b));
    if ok_first && ok_rest && name.len() <= MAX_KEY_NAME_LEN {
        Ok(())
    } else {
        Err(SettingsError(format!(
            "field \"key_name\" {name:?} is not a keybroker key name \
             ([a-z0-9][a-z0-9._/-]{{0,127}})"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut m: HashMap<String, String> = [
            ("endpoint", "https://127.0.0.1:8443"),
            ("key_name", "seal/openbao-prod"),
            ("ca_cert", "/etc/keybroker/ca.pem"),
            ("token_file", "/run/keybroker/token"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in pairs {
            if v.is_empty() {
                m.remove(*k);
            } else {
                m.insert((*k).to_owned(), (*v).to_owned());
            }
        }
        m
    }

    fn problem(pairs: &[(&str, &str)]) -> String {
        SealSettings::from_map(&map(pairs))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn a_complete_stanza_becomes_a_client_config() -> Result<(), SettingsError> {
        let s =
            SealSettings::from_map(&map(&[("client_cert", "/c.pem"), ("client_key", "/k.pem")]))?;
        let cfg = s.client_config();
        assert_eq!(cfg.endpoint, "https://127.0.0.1:8443");
        assert_eq!(cfg.ca, Some(PathBuf::from("/etc/keybroker/ca.pem")));
        assert_eq!(cfg.cert, Some(PathBuf::from("/c.pem")));
        assert_eq!(cfg.key, Some(PathBuf::from("/k.pem")));
        assert!(!cfg.allow_insecure);
        Ok(())
    }

    #[test]
    fn unknown_and_missing_fields_are_named() {
        assert!(problem(&[("keyname", "x")]).contains("unknown field \"keyname\""));
        assert!(problem(&[("key_name", "")]).contains("\"key_name\" is required"));
        assert!(problem(&[("ca_cert", "")]).contains("\"ca_cert\" is required"));
        assert!(problem(&[("endpoint", "")]).contains("\"endpoint\" is required"));
    }

    #[test]
    fn plain_http_endpoint_is_refused() {
        assert!(problem(&[("endpoint", "http://127.0.0.1:1")]).contains("must be https"));
    }

    #[test]
    fn bad_key_names_are_refused() {
        for bad in ["Seal", "/seal", "seal key", &"a".repeat(129)] {
            assert!(
                problem(&[("key_name", bad)]).contains("not a keybroker key name"),
                "{bad}"
            );
        }
    }

    #[test]
    fn half_an_identity_or_none_is_refused() {
        assert!(problem(&[("client_cert", "/c.pem")]).contains("needs \"client_key\""));
        assert!(problem(&[("client_key", "/k.pem")]).contains("needs \"client_cert\""));
        assert!(problem(&[("token_file", "")]).contains("no identity"));
    }

    #[test]
    fn hostile_values_are_refused() {
        assert!(problem(&[("ca_cert", "   ")]).contains("is empty"));
        assert!(problem(&[("ca_cert", &"x".repeat(MAX_VALUE_LEN + 1))]).contains("longer"));
        assert!(problem(&[("ca_cert", "/a\n/b")]).contains("control character"));
        let mut many = map(&[]);
        for i in 0..MAX_FIELDS {
            many.insert(format!("f{i}"), "v".into());
        }
        assert!(SealSettings::from_map(&many).is_err());
    }
}
