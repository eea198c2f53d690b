//! The C2SP tlog-tiles static layout (height 8): hash tiles `tile/<L>/<N>[.p/<W>]` and entry
//! bundles `tile/entries/<N>[.p/<W>]`.
//!
//! Level `L` tile `N` holds the hashes of tree level `8·L`, indices `256·N ..`; a bundle holds
//! the records themselves, each prefixed by its big-endian `u16` length. The broker writes these
//! paths and bundles and auditors read them with the same functions. Pure: paths are relative
//! strings, bundles are bytes; opening files is the caller's business.

/// Entries per full tile.
pub const TILE_WIDTH: u64 = 256;
/// Largest record of our logs (a bundle's `u16` length prefix could carry up to 64 KiB).
pub const MAX_RECORD_BYTES: usize = 16 * 1024;

/// `n` as C2SP path elements (`x001/x234/067`).
#[must_use]
pub fn index_path(mut n: u64) -> String {
    let mut out = format!("{:03}", n % 1000);
    while n >= 1000 {
        n /= 1000;
        out = format!("x{:03}/{out}", n % 1000);
    }
    out
}

fn with_width(base: String, width: u64) -> String {
    if width == TILE_WIDTH {
        base
    } else {
        format!("{base}.p/{width}")
    }
}

/// Path of hash tile `n` at `level` holding `width` hashes.
#[must_use]
pub fn tile_path(level: u32, n: u64, width: u64) -> String {
    with_width(format!("tile/{level}/{}", index_path(n)), width)
}

/// Path of entry bundle `n` holding `width` records.
#[must_use]
pub fn bundle_path(n: u64, width: u64) -> String {
    with_width(format!("tile/entries/{}", index_path(n)), width)
}

/// Which partial stands in for a removed partial of `width` entries: the narrowest of the
/// `present` widths (of the same tile or bundle) that is wider but not full. C2SP tlog-tiles
/// lets a log drop partial tiles no current checkpoint reads, and a reader use a wider one.
#[must_use]
pub fn wider_partial(width: u64, present: impl IntoIterator<Item = u64>) -> Option<u64> {
    present
        .into_iter()
        .filter(|w| *w > width && *w < TILE_WIDTH)
        .min()
}

/// Encodes records as an entry bundle.
#[must_use]
pub fn bundle_bytes<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        // Records are at most 16 KiB, so the length fits.
        out.extend_from_slice(&u16::try_from(e.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// Splits an entry bundle into its records; `None` if a length prefix runs past the end.
#[must_use]
pub fn parse_bundle(mut bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        out.push(rest.get(..len)?);
        bytes = rest.get(len..)?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_c2sp_tlog_tiles() {
        assert_eq!(index_path(0), "000");
        assert_eq!(index_path(1_234_067), "x001/x234/067");
        assert_eq!(tile_path(0, 1_234_067, 256), "tile/0/x001/x234/067");
        assert_eq!(tile_path(1, 5, 7), "tile/1/005.p/7");
        assert_eq!(bundle_path(0, 3), "tile/entries/000.p/3");
        assert_eq!(
            bundle_bytes([&b"ab"[..], b""]),
            vec![0, 2, b'a', b'b', 0, 0]
        );
    }

    #[test]
    fn a_bundle_cut_short_does_not_parse() {
        assert_eq!(
            parse_bundle(&[0, 1, b'x', 0, 0]),
            Some(vec![&b"x"[..], b""])
        );
        assert_eq!(parse_bundle(&[0]), None);
        assert_eq!(parse_bundle(&[0, 5, b'a']), None);
    }

    #[test]
    fn the_narrowest_wider_partial_stands_in() {
        assert_eq!(wider_partial(3, [2, 9, 5, 256]), Some(5));
        assert_eq!(wider_partial(3, [1, 2, 256]), None);
    }

    proptest::proptest! {
        #[test]
        fn bundles_round_trip(records in proptest::collection::vec(
            proptest::collection::vec(0u8..=255, 0..300), 0..20)
        ) {
            let bytes = bundle_bytes(records.iter().map(Vec::as_slice));
            let back: Vec<Vec<u8>> = parse_bundle(&bytes)
                .unwrap_or_default()
                .into_iter()
                .map(<[u8]>::to_vec)
                .collect();
            proptest::prop_assert_eq!(back, records);
        }
    }
}
