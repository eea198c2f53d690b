//! `server.replica_id`: this replica's name in audit records (the host name when unset).

/// Longest replica name (a DNS name, which a Kubernetes pod name is).
const MAX_REPLICA_ID: usize = 253;

/// A replica name goes into every audit record and, on SQLite, the checkpoint origin line:
/// 1 – 253 ASCII letters, digits, `.`, `-`, `_`, starting with a letter or digit.
pub(super) fn check(id: &str) -> Result<String, String> {
    if id.is_empty() || id.len() > MAX_REPLICA_ID {
        return Err(format!("must be 1 to {MAX_REPLICA_ID} characters long"));
    }
    if !id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("must start with a letter or a digit".to_owned());
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "{c:?} is not allowed (letters, digits, '.', '-', '_')"
        ));
    }
    Ok(id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_and_host_names_are_accepted() {
        for id in ["keybroker-0", "kb.eu-west-1.internal", "a", "replica_2"] {
            assert_eq!(check(id).as_deref(), Ok(id));
        }
        assert!(check(&"a".repeat(MAX_REPLICA_ID)).is_ok());
    }

    #[test]
    fn empty_long_or_odd_names_are_refused() {
        for id in [
            String::new(),
            "a".repeat(MAX_REPLICA_ID + 1),
            "-leading-dash".to_owned(),
            ".hidden".to_owned(),
            "has space".to_owned(),
            "new\nline".to_owned(),
            "slash/y".to_owned(),
            "ünïcode".to_owned(),
        ] {
            assert!(check(&id).is_err(), "{id:?}");
        }
    }
}
