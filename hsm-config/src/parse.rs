//! TOML → [`Inventory`]: the serde shape of the file, then one validation pass over it.
//!
//! The serde structs are private and permissive about values (so the error can name the field
//! and the rule) but strict about shape (`deny_unknown_fields`).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};

use crate::model::{DEFAULT_POOL_SIZE, MAX_POOL_SIZE, MAX_TOKEN_LABEL_LEN};
use crate::{HsmEntry, Inventory, InventoryError, PinSource, TokenSelector, is_valid_jurisdiction};

// Loading lives with parsing, so the model (the types) depends on nothing.
impl Inventory {
    /// Reads and validates the inventory file at `path`.
    ///
    /// # Errors
    /// [`InventoryError::Read`] when the file cannot be read, otherwise the errors of
    /// [`Inventory::parse`].
    pub fn load(path: &Path) -> Result<Self, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates inventory text; `origin` is only used to name the file in errors.
    ///
    /// # Errors
    /// [`InventoryError::Syntax`] for TOML errors and unknown fields,
    /// [`InventoryError::Invalid`] for the first broken rule (empty inventory, duplicate id,
    /// relative module path, inline PIN, label length, jurisdiction syntax, pool size, …).
    pub fn parse(text: &str, origin: &Path) -> Result<Self, InventoryError> {
        parse(text, origin)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    #[serde(default)]
    hsm: Vec<RawHsm>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHsm {
    id: String,
    module: PathBuf,
    token_label: Option<String>,
    slot: Option<u64>,
    pin: RawPin,
    jurisdiction: String,
    region: String,
    provider: String,
    certification: String,
    pool_size: Option<i64>,
}

/// The `pin` value as written. An inline PIN is recognised but its value is dropped at once,
/// so it can reach neither an error message nor memory we keep.
enum RawPin {
    Inline,
    Table {
        env: Option<String>,
        file: Option<PathBuf>,
    },
}

impl<'de> Deserialize<'de> for RawPin {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawPinVisitor)
    }
}

struct RawPinVisitor;

impl<'de> Visitor<'de> for RawPinVisitor {
    type Value = RawPin;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"a table: { env = "VAR" } or { file = "/path" }"#)
    }

    fn visit_str<E: de::Error>(self, _pin: &str) -> Result<RawPin, E> {
        Ok(RawPin::Inline)
    }

    fn visit_i64<E: de::Error>(self, _pin: i64) -> Result<RawPin, E> {
        Ok(RawPin::Inline)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawPin, A::Error> {
        let (mut env, mut file) = (None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "env" => env = Some(map.next_value::<String>()?),
                "file" => file = Some(map.next_value::<PathBuf>()?),
                other => return Err(de::Error::unknown_field(other, &["env", "file"])),
            }
        }
        Ok(RawPin::Table { env, file })
    }
}

/// Builds `Invalid` errors for one file.
struct Checker<'a> {
    path: &'a Path,
}

impl Checker<'_> {
    fn invalid(&self, field: impl Into<String>, problem: impl Into<String>) -> InventoryError {
        InventoryError::Invalid {
            path: self.path.to_path_buf(),
            field: field.into(),
            problem: problem.into(),
        }
    }
}

pub(crate) fn parse(text: &str, origin: &Path) -> Result<Inventory, InventoryError> {
    let raw: RawInventory = toml::from_str(text).map_err(|e| syntax_error(text, origin, &e))?;
    let ck = Checker { path: origin };
    if raw.hsm.is_empty() {
        return Err(ck.invalid(
            "hsm",
            "the inventory is empty: declare at least one [[hsm]] table",
        ));
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut hsms = Vec::with_capacity(raw.hsm.len());
    for (i, raw_hsm) in raw.hsm.into_iter().enumerate() {
        let entry = entry(&ck, i, raw_hsm)?;
        if let Some(first) = seen.insert(entry.id.clone(), i) {
            return Err(ck.invalid(
                format!("hsm[{i}].id"),
                format!("duplicate id {:?}, already used by hsm[{first}]", entry.id),
            ));
        }
        hsms.push(entry);
    }
    Ok(Inventory { hsms })
}

fn syntax_error(text: &str, origin: &Path, e: &toml::de::Error) -> InventoryError {
    let (line, column) = e.span().map_or((0, 0), |s| line_col(text, s.start));
    InventoryError::Syntax {
        path: origin.to_path_buf(),
        line,
        column,
        message: e.message().trim_end().to_owned(),
    }
}

/// 1-based line and column (in characters) of byte offset `at`.
pub(crate) fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn entry(ck: &Checker<'_>, i: usize, raw: RawHsm) -> Result<HsmEntry, InventoryError> {
    let field = |name: &str| format!("hsm[{i}].{name}");
    if !is_valid_id(&raw.id) {
        return Err(ck.invalid(
            field("id"),
            format!(
                "{:?} is not a valid id: expected [a-z0-9][a-z0-9-]{{0,62}}",
                raw.id
            ),
        ));
    }
    if !raw.module.is_absolute() {
        return Err(ck.invalid(
            field("module"),
            format!(
                "{} is not an absolute path: give the full path of the PKCS#11 module",
                raw.module.display()
            ),
        ));
    }
    let token = match (raw.token_label, raw.slot) {
        (Some(_), Some(_)) => {
            return Err(ck.invalid(
                field("slot"),
                "exactly one of token_label or slot must be set",
            ));
        }
        (None, None) => {
            return Err(ck.invalid(
                field("token_label"),
                "exactly one of token_label or slot must be set",
            ));
        }
        (Some(label), None) => {
            if label.is_empty() || label.len() > MAX_TOKEN_LABEL_LEN {
                return Err(ck.invalid(
                    field("token_label"),
                    format!(
                        "must be 1..={MAX_TOKEN_LABEL_LEN} bytes (PKCS#11 token labels are \
                         {MAX_TOKEN_LABEL_LEN} bytes), got {}",
                        label.len()
                    ),
                ));
            }
            if label.chars().any(char::is_control) {
                return Err(ck.invalid(field("token_label"), "must not contain control characters"));
            }
            TokenSelector::Label(label)
        }
        (None, Some(slot)) => TokenSelector::Slot(slot),
    };
    let pin = pin_source(ck, &field("pin"), raw.pin)?;
    if !is_valid_jurisdiction(&raw.jurisdiction) {
        return Err(ck.invalid(
            field("jurisdiction"),
            format!(
                "{:?} is not a jurisdiction code: expected upper case like EU, CH, UK, US \
                 (optionally with a sub-code, e.g. US-GOV)",
                short(&raw.jurisdiction)
            ),
        ));
    }
    for (name, value) in [
        ("region", &raw.region),
        ("provider", &raw.provider),
        ("certification", &raw.certification),
    ] {
        check_text(ck, &field(name), value)?;
    }
    let pool_size = match raw.pool_size {
        None => DEFAULT_POOL_SIZE,
        Some(n) => u16::try_from(n)
            .ok()
            .filter(|n| (1..=MAX_POOL_SIZE).contains(n))
            .ok_or_else(|| {
                ck.invalid(
                    field("pool_size"),
                    format!("must be in 1..={MAX_POOL_SIZE}, got {n}"),
                )
            })?,
    };
    Ok(HsmEntry {
        id: raw.id,
        module: raw.module,
        token,
        pin,
        jurisdiction: raw.jurisdiction,
        region: raw.region,
        provider: raw.provider,
        certification: raw.certification,
        pool_size,
    })
}

fn pin_source(ck: &Checker<'_>, field: &str, raw: RawPin) -> Result<PinSource, InventoryError> {
    match raw {
        RawPin::Inline => Err(ck.invalid(
            field,
            "an inline PIN is not accepted: config files get copied, committed and logged. \
             Use pin = { env = \"VAR\" } or pin = { file = \"/run/secrets/hsm-pin\" }",
        )),
        RawPin::Table {
            env: Some(var),
            file: None,
        } => {
            if is_valid_env_name(&var) {
                Ok(PinSource::Env(var))
            } else {
                Err(ck.invalid(
                    format!("{field}.env"),
                    format!(
                        "{:?} is not an environment variable name: expected [A-Za-z_][A-Za-z0-9_]*",
                        short(&var)
                    ),
                ))
            }
        }
        RawPin::Table {
            env: None,
            file: Some(path),
        } => {
            if path.as_os_str().is_empty() {
                return Err(ck.invalid(format!("{field}.file"), "is empty"));
            }
            // Relative paths resolve against the inventory file's directory, like every other
            // path in the configuration.
            let dir = ck.path.parent().unwrap_or_else(|| std::path::Path::new(""));
            Ok(PinSource::File(dir.join(path)))
        }
        RawPin::Table { .. } => Err(ck.invalid(field, "exactly one of env or file must be set")),
    }
}

fn check_text(ck: &Checker<'_>, field: &str, value: &str) -> Result<(), InventoryError> {
    if value.trim().is_empty() {
        return Err(ck.invalid(field, "must not be empty"));
    }
    if value.len() > 128 {
        return Err(ck.invalid(
            field,
            format!("must be at most 128 bytes, got {}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ck.invalid(field, "must not contain control characters"));
    }
    Ok(())
}

fn is_valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&b.len())
        && b.first().is_some_and(ok)
        && b.iter().all(|c| ok(c) || *c == b'-')
}

fn is_valid_env_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.first()
        .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// At most 40 characters of a user value, for error messages.
fn short(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}
