//! One call's credentials → one [`Principal`], by the configured [`IdentityMode`].
//!
//! - `jwt`: the bearer token decides; there is no client certificate (none is asked for).
//! - `mtls`: the client certificate decides; a bearer token, if sent, is ignored. The
//!   principal's issuer is `spiffe://<trust-domain>`, its subject the SPIFFE ID, and cluster,
//!   region and jurisdiction come from the trust domain's config.
//! - `both`: both are required. The token decides the principal (issuer facts, job id); when
//!   the token names a SPIFFE ID (a JWT-SVID), it must equal the certificate's byte for byte.
//!   The certificate's SPIFFE ID and fingerprint are added to the principal.

use std::collections::HashMap;

use super::claims::IssuerFacts;
use super::svid::{self, Svid};
use super::{IdentityError, JwtVerifier, Principal, Reason};
use crate::config::{IdentityMode, TrustDomainConfig};

/// Authenticates calls according to the identity mode.
#[derive(Debug)]
pub struct Authenticator {
    mode: IdentityMode,
    jwt: JwtVerifier,
    domains: HashMap<String, IssuerFacts>,
    domain_names: Vec<String>,
}

impl Authenticator {
    /// An authenticator for `mode`, with `jwt` for tokens and `trust_domains` for certificates.
    #[must_use]
    pub fn new(mode: IdentityMode, jwt: JwtVerifier, trust_domains: &[TrustDomainConfig]) -> Self {
        let domains = trust_domains
            .iter()
            .map(|t| {
                (
                    t.domain.clone(),
                    IssuerFacts {
                        cluster: t.cluster.clone(),
                        region: t.region.clone(),
                        jurisdiction: t.jurisdiction.clone(),
                    },
                )
            })
            .collect();
        Self {
            mode,
            jwt,
            domains,
            domain_names: trust_domains.iter().map(|t| t.domain.clone()).collect(),
        }
    }

    /// The JWT verifier (for JWKS prefetch and background refresh).
    #[must_use]
    pub fn jwt(&self) -> &JwtVerifier {
        &self.jwt
    }

    /// Authenticates one call from its bearer token and the leaf DER of its client
    /// certificate, at unix time `now`.
    ///
    /// # Errors
    /// A missing or refused credential, or a token and certificate that disagree.
    pub async fn authenticate(
        &self,
        bearer: Option<&str>,
        leaf: Option<&[u8]>,
        now: u64,
    ) -> Result<Principal, IdentityError> {
        match self.mode {
            IdentityMode::Jwt => {
                let token = bearer.ok_or(IdentityError::Missing)?;
                self.jwt.verify_refreshing(token, now).await
            }
            IdentityMode::Mtls => self.certificate_principal(leaf),
            IdentityMode::Both => {
                let svid = self.svid(leaf)?;
                let token = bearer.ok_or(IdentityError::Missing)?;
                let principal = self.jwt.verify_refreshing(token, now).await?;
                bind(principal, svid)
            }
        }
    }

    /// The principal a client certificate alone stands for: issuer `spiffe://<trust-domain>`,
    /// subject the SPIFFE ID, cluster/region/jurisdiction from the trust domain's config.
    ///
    /// # Errors
    /// No certificate, or one that breaks an X.509-SVID rule or names an unknown trust domain.
    pub fn certificate_principal(&self, leaf: Option<&[u8]>) -> Result<Principal, IdentityError> {
        let svid = self.svid(leaf)?;
        let facts = self
            .domains
            .get(&svid.trust_domain)
            .cloned()
            .unwrap_or_default();
        Ok(Principal {
            issuer: format!("spiffe://{}", svid.trust_domain),
            subject: svid.spiffe_id.clone(),
            spiffe_id: Some(svid.spiffe_id),
            cert_fingerprint: Some(svid.fingerprint),
            cluster: facts.cluster,
            region: facts.region,
            jurisdiction: facts.jurisdiction,
            ..Principal::default()
        })
    }

    /// `both`: adds the client certificate to a principal established otherwise; a SPIFFE ID the
    /// principal already names must be the certificate's, byte for byte.
    ///
    /// # Errors
    /// No certificate, an invalid one, or a SPIFFE ID mismatch.
    pub fn bind_certificate(
        &self,
        principal: Principal,
        leaf: Option<&[u8]>,
    ) -> Result<Principal, IdentityError> {
        bind(principal, self.svid(leaf)?)
    }

    fn svid(&self, leaf: Option<&[u8]>) -> Result<Svid, IdentityError> {
        let der = leaf.ok_or(IdentityError::MissingCertificate)?;
        // The TLS verifier applied these rules already; checking again keeps this function
        // sound on its own and yields the parsed SVID.
        svid::check(der, &self.domain_names).map_err(IdentityError::Certificate)
    }
}

/// `both`: a token's SPIFFE ID must be the certificate's; the certificate's facts join the
/// token's principal.
pub(crate) fn bind(mut principal: Principal, svid: Svid) -> Result<Principal, IdentityError> {
    match &principal.spiffe_id {
        Some(id) if *id != svid.spiffe_id => {
            return Err(IdentityError::Invalid(Reason::SpiffeIdMismatch));
        }
        _ => {}
    }
    principal.spiffe_id = Some(svid.spiffe_id);
    principal.cert_fingerprint = Some(svid.fingerprint);
    Ok(principal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svid(id: &str) -> Svid {
        Svid {
            spiffe_id: id.into(),
            trust_domain: "eu1.example".into(),
            fingerprint: "ab".into(),
        }
    }

    #[test]
    fn both_mode_requires_a_token_spiffe_id_to_equal_the_certificates() {
        let jwt_svid = Principal {
            subject: "spiffe://eu1.example/ns/ml".into(),
            spiffe_id: Some("spiffe://eu1.example/ns/ml".into()),
            ..Principal::default()
        };
        let p = bind(jwt_svid.clone(), svid("spiffe://eu1.example/ns/ml")).unwrap();
        assert_eq!(p.cert_fingerprint.as_deref(), Some("ab"));
        let e = bind(jwt_svid, svid("spiffe://eu1.example/ns/ml2")).unwrap_err();
        assert_eq!(e.reason(), Some(Reason::SpiffeIdMismatch));
        // A Kubernetes token names no SPIFFE ID: the certificate's is added.
        let k8s = Principal {
            subject: "system:serviceaccount:ml:trainer".into(),
            ..Principal::default()
        };
        let p = bind(k8s, svid("spiffe://eu1.example/ns/ml")).unwrap();
        assert_eq!(p.spiffe_id.as_deref(), Some("spiffe://eu1.example/ns/ml"));
        assert_eq!(p.subject, "system:serviceaccount:ml:trainer");
    }
}
