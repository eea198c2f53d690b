//! Typed reading of a JWT payload and the claim rules jsonwebtoken does not enforce for us.
//!
//! Every claim we read has exactly one accepted JSON type: a list or an object where a string
//! belongs, a string or a float where a timestamp belongs, is a rejection — never a coercion.
//! Pure functions of (payload, rules, now) so the edges can be tested exactly.

use serde_json::{Map, Value};

use super::{Principal, Reason};

/// Timestamps above this (year ~36800) are not plausible and refused as out of range.
const MAX_TIME: u64 = 1 << 40;

/// The claims a token must or may carry, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claims {
    pub(crate) iss: String,
    pub(crate) sub: String,
    pub(crate) aud: Vec<String>,
    pub(crate) exp: u64,
    pub(crate) nbf: Option<u64>,
    pub(crate) iat: Option<u64>,
    pub(crate) k8s: Option<K8s>,
    pub(crate) job: Option<String>,
}

/// `kubernetes.io` of a projected service-account token.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct K8s {
    pub(crate) namespace: Option<String>,
    pub(crate) service_account: Option<String>,
    pub(crate) pod: Option<String>,
}

/// What an issuer requires of the claims.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules<'a> {
    pub(crate) audiences: &'a [String],
    pub(crate) leeway: u64,
    pub(crate) max_lifetime: u64,
}

/// Reads `iss` alone (to pick the issuer before any signature work).
pub(crate) fn issuer(map: &Map<String, Value>) -> Result<&str, Reason> {
    string(map, "iss")?.ok_or(Reason::MissingClaim("iss"))
}

/// Reads every claim we use, with strict types. `job_claim` names the claim carrying the job id.
pub(crate) fn parse(map: &Map<String, Value>, job_claim: Option<&str>) -> Result<Claims, Reason> {
    let iss = issuer(map)?.to_owned();
    let sub = string(map, "sub")?
        .filter(|s| !s.is_empty())
        .ok_or(Reason::MissingClaim("sub"))?
        .to_owned();
    let aud = match map.get("aud") {
        None => return Err(Reason::MissingClaim("aud")),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(Reason::ClaimType("aud"))?,
        Some(_) => return Err(Reason::ClaimType("aud")),
    };
    let exp = time(map, "exp")?.ok_or(Reason::MissingClaim("exp"))?;
    let nbf = time(map, "nbf")?;
    let iat = time(map, "iat")?;
    if nbf.is_none() && iat.is_none() {
        return Err(Reason::MissingClaim("iat"));
    }
    if map.contains_key("jti") {
        string(map, "jti")?;
    }
    let k8s = match map.get("kubernetes.io") {
        None => None,
        Some(Value::Object(k)) => Some(K8s {
            namespace: typed(k.get("namespace"), "kubernetes.io.namespace")?
                .map(|n| dns1123_label(n, "kubernetes.io.namespace"))
                .transpose()?,
            service_account: reference(k, "serviceaccount", "kubernetes.io.serviceaccount")?
                .map(|n| dns1123_subdomain(n, "kubernetes.io.serviceaccount"))
                .transpose()?,
            pod: reference(k, "pod", "kubernetes.io.pod")?
                .map(|n| dns1123_subdomain(n, "kubernetes.io.pod"))
                .transpose()?,
        }),
        Some(_) => return Err(Reason::ClaimType("kubernetes.io")),
    };
    let job = match job_claim {
        None => None,
        Some(name) => typed(map.get(name), "job")?.filter(|j| !j.is_empty()),
    };
    Ok(Claims {
        iss,
        sub,
        aud,
        exp,
        nbf,
        iat,
        k8s,
        job,
    })
}

/// Audience, time and lifetime rules at unix time `now`.
pub(crate) fn check(c: &Claims, rules: Rules<'_>, now: u64) -> Result<(), Reason> {
    // Exactly one audience, and it is ours: a token for several services is refused.
    match c.aud.as_slice() {
        [one] if rules.audiences.iter().any(|a| a == one) => {}
        _ => return Err(Reason::Audience),
    }
    // Valid while now < exp + leeway.
    if now >= c.exp.saturating_add(rules.leeway) {
        return Err(Reason::Expired);
    }
    let skewed_now = now.saturating_add(rules.leeway);
    if c.nbf.is_some_and(|nbf| nbf > skewed_now) {
        return Err(Reason::NotYetValid);
    }
    if c.iat.is_some_and(|iat| iat > skewed_now) {
        return Err(Reason::IssuedInFuture);
    }
    let start = match (c.iat, c.nbf) {
        (Some(a), Some(b)) => a.min(b),
        (Some(t), None) | (None, Some(t)) => t,
        (None, None) => return Err(Reason::MissingClaim("iat")),
    };
    if c.exp <= start || c.exp - start > rules.max_lifetime {
        return Err(Reason::Lifetime);
    }
    Ok(())
}

/// Facts about the issuer that the token cannot carry.
#[derive(Debug, Clone, Default)]
pub(crate) struct IssuerFacts {
    pub(crate) cluster: Option<String>,
    pub(crate) region: Option<String>,
    pub(crate) jurisdiction: Option<String>,
}

/// Maps verified claims to a [`Principal`]; a Kubernetes `sub` must agree with `kubernetes.io`.
pub(crate) fn principal(c: Claims, facts: &IssuerFacts) -> Result<Principal, Reason> {
    let k8s = c.k8s.unwrap_or_default();
    if let (Some(ns), Some(sa)) = (&k8s.namespace, &k8s.service_account)
        && c.sub != format!("system:serviceaccount:{ns}:{sa}")
    {
        return Err(Reason::SubjectMismatch);
    }
    let spiffe_id = c.sub.starts_with("spiffe://").then(|| c.sub.clone());
    Ok(Principal {
        issuer: c.iss,
        subject: c.sub,
        namespace: k8s.namespace,
        service_account: k8s.service_account,
        pod: k8s.pod,
        spiffe_id,
        job_id: c.job,
        cluster: facts.cluster.clone(),
        region: facts.region.clone(),
        jurisdiction: facts.jurisdiction.clone(),
        cert_fingerprint: None,
    })
}

/// The caller's region from the issuer's `region_claim`, when configured and present: 1 to 64
/// of `[A-Za-z0-9._-]` (a region name, never free text), or the token is refused.
pub(crate) fn region(
    map: &Map<String, Value>,
    region_claim: Option<&str>,
) -> Result<Option<String>, Reason> {
    let Some(name) = region_claim else {
        return Ok(None);
    };
    let Some(region) = typed(map.get(name), "region")? else {
        return Ok(None);
    };
    let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if region.is_empty() || region.len() > 64 || !region.bytes().all(ok) {
        return Err(Reason::ClaimType("region"));
    }
    Ok(Some(region))
}

/// A Kubernetes namespace name: an RFC 1123 label (1–63 of `[a-z0-9-]`, alphanumeric at both
/// ends), as the API server enforces. Anything else did not come from Kubernetes — and a
/// newline or a quote in a name is how log lines and records get forged.
fn dns1123_label(name: String, claim: &'static str) -> Result<String, Reason> {
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = name.as_bytes();
    let valid = !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|&c| ok(c) || c == b'-')
        && b.first().copied().is_some_and(ok)
        && b.last().copied().is_some_and(ok);
    if valid {
        Ok(name)
    } else {
        Err(Reason::KubernetesName(claim))
    }
}

/// A Kubernetes service-account or pod name: an RFC 1123 subdomain (at most 253 characters,
/// dot-separated labels of `[a-z0-9-]`, alphanumeric at both ends of each).
fn dns1123_subdomain(name: String, claim: &'static str) -> Result<String, Reason> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|label| dns1123_label(label.to_owned(), claim).is_ok());
    if valid {
        Ok(name)
    } else {
        Err(Reason::KubernetesName(claim))
    }
}

fn string<'a>(map: &'a Map<String, Value>, name: &'static str) -> Result<Option<&'a str>, Reason> {
    match map.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Reason::ClaimType(name)),
    }
}

fn typed(v: Option<&Value>, name: &'static str) -> Result<Option<String>, Reason> {
    match v {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Reason::ClaimType(name)),
    }
}

/// `{"name": "..."}` references (`serviceaccount`, `pod`).
fn reference(
    k: &Map<String, Value>,
    field: &str,
    name: &'static str,
) -> Result<Option<String>, Reason> {
    match k.get(field) {
        None => Ok(None),
        Some(Value::Object(r)) => {
            if r.get("uid").is_some_and(|u| !u.is_string()) {
                return Err(Reason::ClaimType(name));
            }
            typed(r.get("name"), name)?
                .map(Some)
                .ok_or(Reason::ClaimType(name))
        }
        Some(_) => Err(Reason::ClaimType(name)),
    }
}

pub(crate) fn time(map: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, Reason> {
    match map.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|t| *t <= MAX_TIME)
            .map(Some)
            .ok_or(Reason::ClaimType(name)),
        Some(_) => Err(Reason::ClaimType(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    proptest! {
        /// Any well-typed Kubernetes token maps namespace/SA/pod/job straight through, and the
        /// facts come from the issuer, never from the token.
        #[test]
        fn kubernetes_claims_map_to_principal(
            ns in "[a-z]([a-z0-9-]{0,19}[a-z0-9])?", sa in "[a-z]([a-z0-9-]{0,19}[a-z0-9])?",
            pod in "[a-z0-9]([a-z0-9-]{0,28}[a-z0-9])?", job in proptest::option::of("[a-z0-9-]{1,20}"),
            region in "[a-z]{2}-[a-z]+-[0-9]",
        ) {
            let mut m = obj(json!({"iss": "i", "sub": format!("system:serviceaccount:{ns}:{sa}"),
                "aud": "a", "exp": 200, "iat": 100, "region": "us-east-1",
                "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa, "uid": "u"},
                                  "pod": {"name": pod, "uid": "u"}}}));
            if let Some(j) = &job { m.insert("job".into(), json!(j)); }
            let c = parse(&m, Some("job")).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let facts = IssuerFacts { region: Some(region.clone()), ..IssuerFacts::default() };
            let p = principal(c, &facts).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(p.namespace, Some(ns));
            prop_assert_eq!(p.service_account, Some(sa));
            prop_assert_eq!(p.pod, Some(pod));
            prop_assert_eq!(p.job_id, job);
            prop_assert_eq!(p.region, Some(region));
        }

        /// Whatever JSON sits where a string belongs, it is a string or a rejection.
        #[test]
        fn non_string_namespace_is_refused(n in any::<i64>(), b in any::<bool>()) {
            for bad in [json!(n), json!(b), json!([n]), json!({"x": n}), Value::Null] {
                let m = obj(json!({"iss": "i", "sub": "s", "aud": "a", "exp": 2, "iat": 1,
                                   "kubernetes.io": {"namespace": bad}}));
                prop_assert_eq!(parse(&m, None), Err(Reason::ClaimType("kubernetes.io.namespace")));
            }
        }
    }

    #[test]
    fn kubernetes_names_outside_rfc_1123_refuse_the_token() {
        let token = |ns: &str, sa: &str| {
            obj(
                json!({"iss": "i", "sub": format!("system:serviceaccount:{ns}:{sa}"),
                "aud": "a", "exp": 2, "iat": 1,
                "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa}}}),
            )
        };
        assert!(parse(&token("ml", "trainer"), None).is_ok());
        assert!(parse(&token("ml", "trainer.v2-a"), None).is_ok());
        for (ns, sa, claim) in [
            ("ml", "x\nFORGED-LOG-LINE", "kubernetes.io.serviceaccount"),
            ("ml\r", "trainer", "kubernetes.io.namespace"),
            ("ml", "Trainer", "kubernetes.io.serviceaccount"),
            ("ml", "-trainer", "kubernetes.io.serviceaccount"),
            ("ml", "trainer.", "kubernetes.io.serviceaccount"),
            ("ml", "a..b", "kubernetes.io.serviceaccount"),
            ("ml", "", "kubernetes.io.serviceaccount"),
            ("ml", "a\"b", "kubernetes.io.serviceaccount"),
            ("m.l", "trainer", "kubernetes.io.namespace"),
            ("", "trainer", "kubernetes.io.namespace"),
        ] {
            assert_eq!(
                parse(&token(ns, sa), None).map(|_| ()),
                Err(Reason::KubernetesName(claim)),
                "{ns:?} {sa:?}"
            );
        }
        let long_sa = "a".repeat(254);
        assert!(parse(&token("ml", &long_sa), None).is_err());
        assert!(parse(&token(&"n".repeat(64), "sa"), None).is_err());
        let max_sa = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert!(parse(&token(&"n".repeat(63), &max_sa), None).is_ok());
    }

    #[test]
    fn the_region_claim_is_read_only_when_configured_and_only_as_a_region_name() {
        let m = obj(json!({"region": "eu-west-1", "zone": "eu-west-1\nFORGED"}));
        assert_eq!(region(&m, None), Ok(None));
        assert_eq!(region(&m, Some("region")), Ok(Some("eu-west-1".into())));
        assert_eq!(region(&m, Some("absent")), Ok(None));
        assert_eq!(region(&m, Some("zone")), Err(Reason::ClaimType("region")));
        let n = obj(json!({"region": 5}));
        assert_eq!(region(&n, Some("region")), Err(Reason::ClaimType("region")));
        let long = obj(json!({"region": "r".repeat(65)}));
        assert_eq!(
            region(&long, Some("region")),
            Err(Reason::ClaimType("region"))
        );
    }

    #[test]
    fn empty_job_claim_is_no_job() {
        let m = obj(json!({"iss": "i", "sub": "s", "aud": "a", "exp": 2, "iat": 1, "job": ""}));
        assert_eq!(parse(&m, Some("job")).map(|c| c.job), Ok(None));
    }
}
