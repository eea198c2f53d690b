//! The go-plugin start-up contract: the environment bao sets for a KMS plugin (magic cookie,
//! protocol versions, port range, client certificate) and the one line the plugin prints on
//! stdout to say where it listens. Pure parsing here; the caller does the I/O.

use std::net::{Ipv4Addr, SocketAddr};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;

/// Environment variable bao sets to tell a KMS plugin it runs under bao.
pub const MAGIC_COOKIE_KEY: &str = "OPENBAO_KMS_PLUGIN";
/// Its only accepted value.
pub const MAGIC_COOKIE_VALUE: &str = "39704a18-7da7-4bda-9a2d-f7c488d70328";
/// The go-plugin core protocol version (first field of the handshake line).
pub const CORE_PROTOCOL_VERSION: u32 = 1;
/// The KMS plugin application protocol version we speak.
pub const APP_PROTOCOL_VERSION: u32 = 1;
/// Largest `PLUGIN_CLIENT_CERT` accepted (a certificate PEM is about 1 KiB).
const MAX_CLIENT_CERT_PEM: usize = 16 * 1024;

/// What bao told the plugin through its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginEnv {
    /// Ports to try, inclusive; `None` binds an ephemeral port.
    pub port_range: Option<(u16, u16)>,
    /// The PEM certificate bao's client presents; the only one accepted.
    pub client_cert_pem: String,
}

/// Why the environment is not one a bao KMS plugin runs in.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    /// No or a wrong magic cookie: the binary was started by hand, not by bao.
    #[error(
        "this binary is an OpenBao KMS plugin: bao starts it (set plugin \"kms\" in bao's config), \
         it is not meant to be run directly"
    )]
    NotUnderBao,
    /// bao offered no protocol version we speak.
    #[error("PLUGIN_PROTOCOL_VERSIONS {offered:?} does not include version {APP_PROTOCOL_VERSION}")]
    Version {
        /// The offered list as set.
        offered: String,
    },
    /// A port bound is missing, not a port, or the range is empty.
    #[error("PLUGIN_MIN_PORT/PLUGIN_MAX_PORT: {0}")]
    PortRange(String),
    /// `PLUGIN_CLIENT_CERT` is missing, too large or not a PEM certificate. AutoMTLS is
    /// mandatory: without it anyone on the host could call the plugin.
    #[error("PLUGIN_CLIENT_CERT: {0}")]
    ClientCert(&'static str),
}

impl PluginEnv {
    /// Reads the plugin environment through `get` (`std::env::var` in the binary).
    ///
    /// # Errors
    /// The first [`EnvError`] found, magic cookie first.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        if get(MAGIC_COOKIE_KEY).as_deref() != Some(MAGIC_COOKIE_VALUE) {
            return Err(EnvError::NotUnderBao);
        }
        let offered = get("PLUGIN_PROTOCOL_VERSIONS").unwrap_or_default();
        let speaks = offered
            .split(',')
            .any(|v| v.trim().parse::<u32>() == Ok(APP_PROTOCOL_VERSION));
        if !speaks {
            return Err(EnvError::Version { offered });
        }
        let port_range = port_range(get("PLUGIN_MIN_PORT"), get("PLUGIN_MAX_PORT"))?;
        let client_cert_pem = get("PLUGIN_CLIENT_CERT")
            .filter(|pem| !pem.trim().is_empty())
            .ok_or(EnvError::ClientCert(
                "not set: bao must run the plugin with AutoMTLS",
            ))?;
        if client_cert_pem.len() > MAX_CLIENT_CERT_PEM {
            return Err(EnvError::ClientCert("longer than 16 KiB"));
        }
        Ok(Self {
            port_range,
            client_cert_pem,
        })
    }

    /// The addresses to try binding, in order: every port of the range, or port 0.
    pub fn bind_candidates(&self) -> impl Iterator<Item = SocketAddr> {
        let (lo, hi) = self.port_range.unwrap_or((0, 0));
        (lo..=hi).map(|port| SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }
}

fn port_range(min: Option<String>, max: Option<String>) -> Result<Option<(u16, u16)>, EnvError> {
    let parse = |name: &str, v: &str| {
        v.trim()
            .parse::<u16>()
            .map_err(|_| EnvError::PortRange(format!("{name} {v:?} is not a port number")))
    };
    match (min, max) {
        (None, None) => Ok(None),
        (Some(min), Some(max)) => {
            let (lo, hi) = (parse("min", &min)?, parse("max", &max)?);
            if lo == 0 || lo > hi {
                return Err(EnvError::PortRange(format!("empty range {lo}..{hi}")));
            }
            Ok(Some((lo, hi)))
        }
        _ => Err(EnvError::PortRange("set both or neither".into())),
    }
}

/// The line go-plugin reads from the plugin's stdout:
/// `CORE|APP|tcp|ADDR|grpc|<server certificate DER, standard base64 without padding>`.
#[must_use]
pub fn handshake_line(addr: SocketAddr, server_cert_der: &[u8]) -> String {
    format!(
        "{CORE_PROTOCOL_VERSION}|{APP_PROTOCOL_VERSION}|tcp|{addr}|grpc|{}",
        STANDARD_NO_PAD.encode(server_cert_der)
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";

    fn env(pairs: &[(&str, &str)]) -> Result<PluginEnv, EnvError> {
        let mut map: HashMap<String, String> = HashMap::from([
            (MAGIC_COOKIE_KEY.to_owned(), MAGIC_COOKIE_VALUE.to_owned()),
            ("PLUGIN_PROTOCOL_VERSIONS".to_owned(), "1".to_owned()),
            ("PLUGIN_CLIENT_CERT".to_owned(), PEM.to_owned()),
        ]);
        for (k, v) in pairs {
            if v.is_empty() {
                map.remove(*k);
            } else {
                map.insert((*k).to_owned(), (*v).to_owned());
            }
        }
        PluginEnv::from_env(|k| map.get(k).cloned())
    }

    #[test]
    fn missing_or_wrong_magic_cookie_is_refused() {
        assert_eq!(env(&[(MAGIC_COOKIE_KEY, "")]), Err(EnvError::NotUnderBao));
        assert_eq!(env(&[(MAGIC_COOKIE_KEY, "x")]), Err(EnvError::NotUnderBao));
    }

    #[test]
    fn protocol_version_one_must_be_offered() {
        assert!(env(&[("PLUGIN_PROTOCOL_VERSIONS", "2,3")]).is_err());
        assert!(env(&[("PLUGIN_PROTOCOL_VERSIONS", "")]).is_err());
        assert!(env(&[("PLUGIN_PROTOCOL_VERSIONS", "2, 1")]).is_ok());
    }

    #[test]
    fn port_range_is_parsed_and_checked() -> Result<(), EnvError> {
        let e = env(&[("PLUGIN_MIN_PORT", "10000"), ("PLUGIN_MAX_PORT", "10002")])?;
        assert_eq!(e.port_range, Some((10000, 10002)));
        assert_eq!(e.bind_candidates().count(), 3);
        assert_eq!(
            env(&[])?
                .bind_candidates()
                .map(|a| a.port())
                .collect::<Vec<_>>(),
            [0]
        );
        assert!(env(&[("PLUGIN_MIN_PORT", "10")]).is_err());
        assert!(env(&[("PLUGIN_MIN_PORT", "9"), ("PLUGIN_MAX_PORT", "8")]).is_err());
        assert!(env(&[("PLUGIN_MIN_PORT", "x"), ("PLUGIN_MAX_PORT", "8")]).is_err());
        Ok(())
    }

    #[test]
    fn client_certificate_is_mandatory() {
        assert!(matches!(
            env(&[("PLUGIN_CLIENT_CERT", "")]),
            Err(EnvError::ClientCert(_))
        ));
        let huge = "A".repeat(MAX_CLIENT_CERT_PEM + 1);
        assert!(matches!(
            env(&[("PLUGIN_CLIENT_CERT", &huge)]),
            Err(EnvError::ClientCert(_))
        ));
    }

    #[test]
    fn handshake_line_has_six_fields_and_unpadded_base64() {
        let line = handshake_line(SocketAddr::from((Ipv4Addr::LOCALHOST, 4242)), &[1, 2, 3, 4]);
        assert_eq!(line, "1|1|tcp|127.0.0.1:4242|grpc|AQIDBA");
    }
}
