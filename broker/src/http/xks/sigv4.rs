//! SigV4 authentication of XKS proxy API requests (XKS spec, Appendix A): the `Authorization`
//! header is parsed and its scope checked here; the signature itself is recomputed by AWS's
//! own signer (`aws-sigv4`) over exactly the headers the client says it signed, with the
//! store's secret, and compared in constant time. No canonicalisation is written here.
//!
//! Checks, each a distinct reason in the audit record: scheme, credential scope (service
//! `kms-xks-proxy`, the store's region, a known access key id, the date of `X-Amz-Date`),
//! `X-Amz-Date` within ±5 minutes, `host` and `x-amz-date` signed, the signature, and — beyond
//! the spec, on by default — a signature seen before within the window is a replay.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use axum::http::HeaderMap;
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;

/// The SigV4 service name of the XKS proxy API (XKS spec, Appendix A).
pub(crate) const SERVICE: &str = "kms-xks-proxy";
/// How far `X-Amz-Date` may be from our clock, either way.
pub(crate) const MAX_SKEW_SECS: i64 = 5 * 60;
/// Most signatures the replay cache holds per store (a full cache refuses nothing new: it
/// forgets the oldest, which are the first to leave the window anyway).
const MAX_REMEMBERED: usize = 1 << 20;
/// Longest `Authorization` header accepted.
const MAX_AUTHORIZATION: usize = 2048;
/// Most headers a request may say it signed.
const MAX_SIGNED_HEADERS: usize = 32;

/// One credential set of a store, built once at start. `aws_credential_types::Credentials`
/// keeps the secret zeroized on drop and redacted in `Debug`.
#[derive(Debug)]
pub(crate) struct Credential {
    pub(crate) access_key_id: String,
    signing: aws_credential_types::Credentials,
}

impl Credential {
    pub(crate) fn new(access_key_id: String, secret: &str) -> Self {
        let signing = aws_credential_types::Credentials::new(
            access_key_id.as_str(),
            secret,
            None,
            None,
            "keybroker-xks",
        );
        Self {
            access_key_id,
            signing,
        }
    }
}

/// Why a request did not authenticate: a short phrase for the audit record and the log
/// (never the secret, never the signature).
pub(crate) type Refused = &'static str;

/// Verifies the requests of one key store.
#[derive(Debug)]
pub(crate) struct Verifier {
    region: String,
    credentials: Vec<Credential>,
    replays: Option<Mutex<Seen>>,
}

/// Signatures seen within the window, oldest first.
#[derive(Debug, Default)]
struct Seen {
    order: VecDeque<(i64, [u8; 32])>,
    set: HashMap<[u8; 32], i64>,
}

/// What the `Authorization` header says.
struct Parsed<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

impl Verifier {
    pub(crate) fn new(region: String, credentials: Vec<Credential>, reject_replays: bool) -> Self {
        Self {
            region,
            credentials,
            replays: reject_replays.then(|| Mutex::new(Seen::default())),
        }
    }

    /// The access key id that signed this request, or why it is refused. `path` is the
    /// request path exactly as received (already checked to hold no `%`, `.` segments or
    /// query); `host` is the `Host` header or the HTTP/2 authority.
    pub(crate) fn verify(
        &self,
        path: &str,
        headers: &HeaderMap,
        host: Option<&str>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<&str, Refused> {
        let mut values = headers.get_all("authorization").iter();
        let auth = match (values.next(), values.next()) {
            (None, _) => return Err("missing Authorization header"),
            (Some(_), Some(_)) => return Err("more than one Authorization header"),
            (Some(v), None) => v.to_str().map_err(|_| "malformed Authorization header")?,
        };
        if auth.len() > MAX_AUTHORIZATION {
            return Err("malformed Authorization header");
        }
        let p = parse(auth).ok_or("malformed Authorization header")?;
        if p.service != SERVICE {
            return Err("credential scope names another service");
        }
        if p.region != self.region {
            return Err("credential scope names another region");
        }
        let credential = self
            .credentials
            .iter()
            .find(|c| bool::from(c.access_key_id.as_bytes().ct_eq(p.access_key_id.as_bytes())))
            .ok_or("unknown access key id")?;
        let amz_date = single(headers, "x-amz-date")?.ok_or("missing X-Amz-Date header")?;
        let signed_at = parse_amz_date(amz_date).ok_or("malformed X-Amz-Date header")?;
        if !amz_date.starts_with(p.date) || p.date.len() != 8 {
            return Err("credential scope date is not the X-Amz-Date date");
        }
        let now_secs = unix(now);
        if (now_secs - signed_at).abs() > MAX_SKEW_SECS {
            return Err("X-Amz-Date is more than 5 minutes from the server's clock");
        }
        if !p.signed_headers.contains(&"host") || !p.signed_headers.contains(&"x-amz-date") {
            return Err("SignedHeaders must include host and x-amz-date");
        }
        let mut signed: Vec<(&str, String)> = Vec::with_capacity(p.signed_headers.len());
        for name in &p.signed_headers {
            match *name {
                "host" => signed.push(("host", host.ok_or("missing Host header")?.to_owned())),
                // The signer writes X-Amz-Date itself, from the time given below.
                "x-amz-date" => {}
                "authorization" => return Err("SignedHeaders must not include authorization"),
                other => {
                    let mut parts = Vec::new();
                    for v in headers.get_all(other) {
                        parts.push(v.to_str().map_err(|_| "a signed header is not ASCII")?);
                    }
                    if parts.is_empty() {
                        return Err("a signed header is missing");
                    }
                    signed.push((other, parts.join(",")));
                }
            }
        }
        let expected = expected_signature(credential, &self.region, signed_at, path, &signed, body)
            .ok_or("request cannot be signed")?;
        if !bool::from(expected.as_bytes().ct_eq(p.signature.as_bytes())) {
            return Err("signature does not match");
        }
        if let Some(seen) = &self.replays {
            let digest: [u8; 32] = sha2::Sha256::digest(p.signature.as_bytes()).into();
            let mut seen = seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !seen.insert(digest, signed_at, now_secs) {
                return Err("replayed request (signature already seen)");
            }
        }
        Ok(&credential.access_key_id)
    }
}

impl Seen {
    /// Remembers `digest` (signed at `signed_at`); false if it was already there.
    fn insert(&mut self, digest: [u8; 32], signed_at: i64, now: i64) -> bool {
        // A signature older than the window cannot come back (the skew check refuses it).
        while let Some((at, d)) = self.order.front().copied() {
            if at >= now - MAX_SKEW_SECS && self.order.len() < MAX_REMEMBERED {
                break;
            }
            self.order.pop_front();
            if self.set.get(&d) == Some(&at) {
                self.set.remove(&d);
            }
        }
        if self.set.contains_key(&digest) {
            return false;
        }
        self.set.insert(digest, signed_at);
        self.order.push_back((signed_at, digest));
        true
    }
}

fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, Refused> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err("a header the signature covers is repeated"),
        (Some(v), None) => v
            .to_str()
            .map(Some)
            .map_err(|_| "a signed header is not ASCII"),
    }
}

/// `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request,
/// SignedHeaders=a;b, Signature=hex`.
fn parse(auth: &str) -> Option<Parsed<'_>> {
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        let slot = match k {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            _ => return None,
        };
        if slot.replace(v).is_some() {
            return None;
        }
    }
    let mut scope = credential?.split('/');
    let (access_key_id, date, region, service, terminator) = (
        scope.next()?,
        scope.next()?,
        scope.next()?,
        scope.next()?,
        scope.next()?,
    );
    if terminator != "aws4_request" || scope.next().is_some() || access_key_id.is_empty() {
        return None;
    }
    let signed_headers: Vec<&str> = signed?.split(';').collect();
    let well_formed = |h: &&str| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    };
    if signed_headers.len() > MAX_SIGNED_HEADERS
        || !signed_headers.iter().all(well_formed)
        || !signed_headers.windows(2).all(|w| w[0] < w[1])
    {
        return None;
    }
    let signature = signature?;
    if signature.len() != 64
        || !signature
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    Some(Parsed {
        access_key_id,
        date,
        region,
        service,
        signed_headers,
        signature,
    })
}

/// Unix seconds of `YYYYMMDD'T'HHMMSS'Z'`.
fn parse_amz_date(v: &str) -> Option<i64> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let t = time::PrimitiveDateTime::parse(v, format).ok()?;
    Some(t.assume_utc().unix_timestamp())
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The signature AWS's signer computes for this request with `credential`'s secret.
fn expected_signature(
    credential: &Credential,
    region: &str,
    signed_at: i64,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Option<String> {
    let identity = credential.signing.clone().into();
    let mut settings = SigningSettings::default();
    // Verify whatever the client signed (curl and botocore sign more than KMS's host and
    // x-amz-date, e.g. content-type or user-agent).
    settings.excluded_headers = None;
    let at =
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(signed_at).ok()?);
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(at)
        .settings(settings)
        .build()
        .ok()?
        .into();
    let request = SignableRequest::new(
        "POST",
        path,
        headers.iter().map(|(n, v)| (*n, v.as_str())),
        SignableBody::Bytes(body),
    )
    .ok()?;
    let (_, signature) = sign(request, &params).ok()?.into_parts();
    Some(signature)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn authorization_header_parses_and_refuses_variants() {
        let ok = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLEAKIDEXAMPLE/20261207/eu-central-1/kms-xks-proxy/aws4_request, SignedHeaders=host;x-amz-date, Signature=".to_owned() + &"a".repeat(64);
        let p = parse(&ok).unwrap();
        assert_eq!(p.access_key_id, "AKIDEXAMPLEAKIDEXAMPLE");
        assert_eq!(p.signed_headers, ["host", "x-amz-date"]);
        for bad in [
            ok.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA512"),
            ok.replace("aws4_request", "aws4_request/x"),
            ok.replace("host;x-amz-date", "x-amz-date;host"),
            ok.replace("host;x-amz-date", "Host;x-amz-date"),
            ok.replace(&"a".repeat(64), &"A".repeat(64)),
            ok.replace(&"a".repeat(64), &"a".repeat(63)),
            format!("{ok}, Signature={}", "b".repeat(64)),
            ok.replace("Credential=AKID", "Credential=/AKID"),
        ] {
            assert!(parse(&bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn amz_dates_parse_as_utc() {
        assert_eq!(parse_amz_date("19700101T000001Z"), Some(1));
        assert_eq!(parse_amz_date("19700101T000001"), None);
        assert_eq!(parse_amz_date("1970-01-01T00:00:01Z"), None);
    }

    #[test]
    fn the_replay_cache_refuses_a_repeat_and_forgets_outside_the_window() {
        let mut seen = Seen::default();
        assert!(seen.insert([1; 32], 1000, 1000));
        assert!(!seen.insert([1; 32], 1000, 1001));
        assert!(seen.insert([2; 32], 1001, 1001));
        // Later than the window: the first is forgotten (the skew check refuses it anyway).
        assert!(seen.insert([3; 32], 1400, 1400));
        assert!(!seen.set.contains_key(&[1; 32]));
        assert_eq!(seen.order.len(), 1);
    }
}
