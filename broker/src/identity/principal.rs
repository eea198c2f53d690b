//! [`Principal`], the normalized caller, and [`Reason`], why a token was refused: pure types
//! with no dependency on the rest of the broker, so the JWT claim rules (`claims.rs`) compile
//! on their own in the fuzz targets.

/// Why a token was refused: one variant per rule, so tests and logs can tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// Larger than the limit (8 KiB for workload tokens, `MAX_TOKEN_LEN`).
    #[error("token too large")]
    TooLarge,
    /// Not exactly three dot-separated parts.
    #[error("not a compact JWS (three parts)")]
    NotCompactJws,
    /// A part is not unpadded base64url.
    #[error("{0} is not base64url")]
    Base64(&'static str),
    /// A part is not a JSON object (or has trailing data).
    #[error("{0} is not a JSON object")]
    NotJsonObject(&'static str),
    /// A JSON object has the same key twice.
    #[error("{0} has a duplicate JSON key")]
    DuplicateKey(&'static str),
    /// A header field other than `alg`, `kid`, `typ`.
    #[error("header has a field other than alg/kid/typ")]
    HeaderField,
    /// `alg` is not one of the issuer's asymmetric algorithms (`none`, HMAC, unknown).
    #[error("alg not allowed")]
    AlgNotAllowed,
    /// No `kid` in the header.
    #[error("header has no kid")]
    MissingKid,
    /// The issuer has no key with this `kid`.
    #[error("unknown kid for this issuer")]
    UnknownKid,
    /// The header `alg` differs from the JWK's.
    #[error("header alg differs from the key's alg")]
    AlgKeyMismatch,
    /// `iss` names no configured issuer.
    #[error("unknown issuer")]
    UnknownIssuer,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// A required claim is absent.
    #[error("missing claim {0}")]
    MissingClaim(&'static str),
    /// A claim has the wrong JSON type or an out-of-range value.
    #[error("claim {0} has the wrong type or range")]
    ClaimType(&'static str),
    /// `aud` is not exactly one configured audience.
    #[error("audience is not exactly a configured audience")]
    Audience,
    /// `exp` has passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid (nbf)")]
    NotYetValid,
    /// `iat` is in the future (beyond the leeway).
    #[error("iat is in the future")]
    IssuedInFuture,
    /// `exp` is not after `iat`/`nbf`, or `exp - iat` exceeds the issuer's maximum.
    #[error("token lifetime exceeds the issuer's maximum")]
    Lifetime,
    /// A `kubernetes.io` namespace, service-account or pod name breaks the Kubernetes name
    /// rules (RFC 1123 label or subdomain).
    #[error("{0} is not a valid Kubernetes name")]
    KubernetesName(&'static str),
    /// `sub` disagrees with the `kubernetes.io` namespace/service account.
    #[error("sub disagrees with kubernetes.io claims")]
    SubjectMismatch,
    /// `both` mode: the token's SPIFFE ID is not the client certificate's.
    #[error("token SPIFFE ID differs from the client certificate's")]
    SpiffeIdMismatch,
    /// The issuer's JWKS URL has not been fetched successfully yet.
    #[error("issuer's JWKS is not loaded (fetch failing)")]
    JwksUnavailable,
}

/// The normalized identity of a caller, handed to policy and audit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Principal {
    /// Token issuer.
    pub issuer: String,
    /// Token subject (`system:serviceaccount:ns:sa`, a SPIFFE ID, …).
    pub subject: String,
    /// Kubernetes namespace, when the token says.
    pub namespace: Option<String>,
    /// Kubernetes service account, when the token says.
    pub service_account: Option<String>,
    /// Kubernetes pod name, when the token says.
    pub pod: Option<String>,
    /// SPIFFE ID, when the subject is one.
    pub spiffe_id: Option<String>,
    /// Training job id, from verified identity only (the issuer's `job_claim`).
    pub job_id: Option<String>,
    /// Cluster of the issuer (config, not the token).
    pub cluster: Option<String>,
    /// Region of the issuer's cluster (config, not the token).
    pub region: Option<String>,
    /// Jurisdiction of the issuer's cluster (config, not the token).
    pub jurisdiction: Option<String>,
    /// SHA-256 of the client certificate's DER (lower-case hex), with mTLS.
    pub cert_fingerprint: Option<String>,
}
