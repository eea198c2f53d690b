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
            namespace: typed(k.get("namespace"), "kubernetes.io.namespace")?,
            service_account: reference(k, "serviceaccount", "kubernetes.io.serviceaccount")?,
            pod: reference(k, "pod", "kubernetes.io.pod")?,
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

fn time(map: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, Reason> {
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
            ns in "[a-z][a-z0-9-]{0,20}", sa in "[a-z][a-z0-9-]{0,20}",
            pod in "[a-z0-9-]{1,30}", job in proptest::option::of("[a-z0-9-]{1,20}"),
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
    fn empty_job_claim_is_no_job() {
        let m = obj(json!({"iss": "i", "sub": "s", "aud": "a", "exp": 2, "iat": 1, "job": ""}));
        assert_eq!(parse(&m, Some("job")).map(|c| c.job), Ok(None));
    }
}
