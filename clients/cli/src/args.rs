//! Pure parsers for command-line values: `k=v` pairs for `--context`/`--label` and lifetimes
//! such as `15m` or `1h30m` for `--ttl`. Unit-tested here, away from process-global env.

use std::collections::BTreeMap;
use std::time::Duration;

use super::error::CliError;

/// Parses one `k=v` pair: split at the first `=` (the value may contain `=`), key non-empty.
///
/// # Errors
/// A message for clap when there is no `=` or the key is empty.
pub(crate) fn parse_pair(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected k=v, got {s:?}"))?;
    if k.is_empty() {
        return Err(format!("empty key in {s:?}: expected k=v"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// Collects pairs into a map, refusing a key given twice.
///
/// # Errors
/// `Usage` naming the flag and the duplicated key.
pub(crate) fn pairs_to_map(
    flag: &str,
    pairs: &[(String, String)],
) -> Result<BTreeMap<String, String>, CliError> {
    let mut map = BTreeMap::new();
    for (k, v) in pairs {
        if map.insert(k.clone(), v.clone()).is_some() {
            return Err(CliError::Usage(format!(
                "--{flag}: key {k:?} given more than once"
            )));
        }
    }
    Ok(map)
}

/// Parses a lifetime: one or more `<number><unit>` parts with units `s`, `m`, `h`, `d`
/// (`15m`, `1h30m`, `90s`), or a bare number of seconds. Must be positive.
///
/// # Errors
/// A message for clap on bad syntax, zero, or overflow.
pub(crate) fn parse_ttl(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: use e.g. 90s, 15m, 1h30m, 2d");
    let s = s.trim();
    if s.is_empty() {
        return Err(bad());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = s.parse().map_err(|_| bad())?;
        return positive(Duration::from_secs(secs), s);
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(bad)?;
    }
    if !digits.is_empty() {
        return Err(bad());
    }
    positive(Duration::from_secs(total), s)
}

fn positive(d: Duration, s: &str) -> Result<Duration, String> {
    if d.is_zero() {
        Err(format!("duration {s:?} must be positive"))
    } else {
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }

    #[test]
    fn pair_splits_at_first_equals() {
        assert_eq!(
            parse_pair("dataset=imagenet"),
            Ok(pair("dataset", "imagenet"))
        );
        assert_eq!(parse_pair("q=a=b=="), Ok(pair("q", "a=b==")));
        assert_eq!(parse_pair("empty="), Ok(pair("empty", "")));
    }

    #[test]
    fn pair_rejects_missing_equals_and_empty_key() {
        assert!(parse_pair("novalue").is_err());
        assert!(parse_pair("=v").is_err());
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let ok = pairs_to_map("context", &[pair("a", "1"), pair("b", "2")]);
        assert_eq!(ok.ok().map(|m| m.len()), Some(2));
        let err = pairs_to_map("context", &[pair("a", "1"), pair("a", "1")]);
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(msg, "--context: key \"a\" given more than once");
    }

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172_800)));
    }

    #[test]
    fn ttl_rejects_garbage_zero_and_overflow() {
        for s in ["", "m", "15x", "1h30", "0", "0m", "-5m", "1.5h", "1 h"] {
            assert!(parse_ttl(s).is_err(), "{s:?} accepted");
        }
        assert!(parse_ttl("99999999999999999999d").is_err());
        assert!(parse_ttl("18446744073709551615d").is_err());
    }
}
