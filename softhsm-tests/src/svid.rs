//! Test PKI for mTLS: a CA and X.509-SVIDs minted with rcgen at test time, good and hostile.

use std::path::{Path, PathBuf};

use keybroker_broker::config::{MtlsConfig, TrustDomainConfig};

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// The trust domain the tests' SVIDs are in.
pub const TRUST_DOMAIN: &str = "eu1.test";

/// `[identity.mtls]` with the client CA bundle at `bundle` and one trust domain, `eu1.test`
/// (cluster `train-a`, region `eu-west-1`, jurisdiction `EU`). The bundle poll interval is an
/// hour, so a test that rotates the bundle shows SIGHUP did it, not the poller.
#[must_use]
pub fn mtls_config(bundle: PathBuf) -> MtlsConfig {
    MtlsConfig {
        client_ca_file: bundle,
        client_ca_poll_interval: std::time::Duration::from_secs(3600),
        trust_domains: vec![TrustDomainConfig {
            domain: TRUST_DOMAIN.into(),
            cluster: Some("train-a".into()),
            region: Some("eu-west-1".into()),
            jurisdiction: Some("EU".into()),
        }],
    }
}

/// A CA whose certificate goes into the broker's client CA bundle.
pub struct TestCa {
    /// PEM of the CA certificate.
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// What goes into a leaf certificate; [`SvidSpec::new`] is a valid SVID.
pub struct SvidSpec {
    /// URI SANs.
    pub uris: Vec<String>,
    /// Make the leaf a CA (`basicConstraints cA=true`).
    pub is_ca: bool,
    /// keyUsage bits.
    pub key_usages: Vec<KeyUsagePurpose>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl SvidSpec {
    /// A valid SVID for `spiffe_id`: one URI SAN, digitalSignature, clientAuth, valid ±1 h.
    #[must_use]
    pub fn new(spiffe_id: &str) -> Self {
        Self {
            uris: vec![spiffe_id.to_owned()],
            is_ca: false,
            key_usages: vec![KeyUsagePurpose::DigitalSignature],
            not_before: OffsetDateTime::now_utc() - Duration::hours(1),
            not_after: OffsetDateTime::now_utc() + Duration::hours(1),
        }
    }
}

impl TestCa {
    /// A fresh self-signed CA.
    ///
    /// # Errors
    /// Key generation or signing failures.
    pub fn new() -> anyhow::Result<Self> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let pem = p.self_signed(&key)?.pem();
        Ok(Self {
            pem,
            issuer: Issuer::new(p, key),
        })
    }

    /// Mints a leaf per `spec` and writes `<dir>/<name>.pem` and `<dir>/<name>-key.pem`;
    /// returns both paths.
    ///
    /// # Errors
    /// Signing or file failures.
    pub fn mint(
        &self,
        spec: SvidSpec,
        dir: &Path,
        name: &str,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.subject_alt_names = spec
            .uris
            .iter()
            .map(|u| Ok(SanType::URI(u.as_str().try_into()?)))
            .collect::<anyhow::Result<_>>()?;
        if spec.is_ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        p.key_usages = spec.key_usages;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = spec.not_before;
        p.not_after = spec.not_after;
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer)?;
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&c, cert.pem())?;
        std::fs::write(&k, key.serialize_pem())?;
        Ok((c, k))
    }
}
