//! SPIFFE ID syntax (SPIFFE-ID §2): pure, so the config parser that checks the IDs it is given
//! compiles on its own in the fuzz targets.

/// Longest SPIFFE ID accepted (SPIFFE-ID §2.3).
const MAX_ID_LEN: usize = 2048;

/// The trust domain of a SPIFFE ID, if `id` is one: scheme exactly `spiffe://` (lower case),
/// trust domain of `a-z 0-9 . - _`, a non-empty path of non-empty segments of
/// `A-Z a-z 0-9 . - _` that are not `.` or `..`; no port, user info, query or fragment.
pub(crate) fn parse_spiffe_id(id: &str) -> Option<&str> {
    if id.len() > MAX_ID_LEN {
        return None;
    }
    let rest = id.strip_prefix("spiffe://")?;
    let (td, path) = rest.split_once('/')?;
    if !crate::config::is_trust_domain(td) {
        return None;
    }
    let ok_segment = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b))
    };
    path.split('/').all(ok_segment).then_some(td)
}
