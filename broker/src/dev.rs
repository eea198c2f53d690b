//! Dev mode: everything a laptop needs, created under one state dir on first run and reused
//! after: a SoftHSM2 token (own `softhsm2.conf`), the SQLite catalog, a dev JWT issuer, a dev CA
//! and server certificate (TLS is on in dev mode too), the broker config, and `client.env`.
//!
//! Secrets (HSM PINs, the issuer's signing key, the TLS key) are files of mode 0600 in a 0700
//! directory; none is printed.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keybroker_formats::dev_token::{
    self, ISSUER_DIR, ISSUER_FILE, IssuerInfo, MintError, SIGNING_KEY_FILE, Workload,
};
use zeroize::Zeroizing;

/// Name of the demo key created on first run.
pub const DEMO_KEY: &str = "datasets/demo";
/// Name of the key that needs an attestation result (the dev policy's
/// `dev-models-confidential-needs-fresh-tee`), created on first run.
pub const CONFIDENTIAL_KEY: &str = "models/confidential";
/// Issuer (`iss`) of the dev attestation verifier's results.
pub const DEV_ATTESTATION_ISSUER: &str = "https://dev-attestation.keybroker.invalid";
/// Directory of the dev attestation verifier under the state dir.
pub const ATTESTATION_DIR: &str = "dev-attestation";
/// Token label of the dev SoftHSM token.
pub const TOKEN_LABEL: &str = "keybroker-dev";
/// Issuer of dev tokens.
pub const DEV_ISSUER: &str = "https://dev.keybroker.invalid";
/// Audience of dev tokens.
pub const DEV_AUDIENCE: &str = "keybroker";
/// Default listen address in dev mode.
pub const DEV_LISTEN: &str = "127.0.0.1:7443";

/// Where SoftHSM2's module usually is on Debian/Ubuntu.
const SOFTHSM_MODULES: [&str; 3] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
];

/// Why dev mode could not prepare its state dir.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// File-system problem.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// SoftHSM2 is not installed.
    #[error("SoftHSM2 not found (looked for {0}); run scripts/install-deps")]
    NoSoftHsm(String),
    /// `softhsm2-util` failed.
    #[error("softhsm2-util --init-token failed: {0}")]
    InitToken(String),
    /// The system's random generator failed.
    #[error("the system random generator failed")]
    Randomness,
    /// The dev config has no XKS key store (`[[http.xks.stores]]` was removed by hand).
    #[error("the dev config has no [[http.xks.stores]] with a credential")]
    NoXksStore,
    /// Certificate or key generation failed.
    #[error("generating dev credentials: {0}")]
    Credentials(#[from] rcgen::Error),
    /// The dev issuer under the state dir cannot mint a token.
    #[error("dev token: {0}")]
    Token(#[from] MintError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DevError + '_ {
    move |source| DevError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The state dir's files.
#[derive(Debug, Clone)]
pub struct DevPaths {
    /// The state dir (absolute).
    pub dir: PathBuf,
}

impl DevPaths {
    /// `broker.toml`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("broker.toml")
    }
    /// `softhsm2.conf`, to export as `SOFTHSM2_CONF` before the module loads.
    pub fn softhsm_conf(&self) -> PathBuf {
        self.dir.join("softhsm2.conf")
    }
    /// `client.env`.
    pub fn client_env(&self) -> PathBuf {
        self.dir.join("client.env")
    }
    /// The dev token file.
    pub fn token(&self) -> PathBuf {
        self.dir.join("token")
    }
    /// The dev CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("tls/ca.pem")
    }
}

/// Creates what is missing under `dir` (first run) and returns its paths. Idempotent.
///
/// # Errors
/// See [`DevError`].
pub fn prepare(dir: &Path) -> Result<DevPaths, DevError> {
    create_private_dir(dir)?;
    let dir = fs::canonicalize(dir).map_err(io(dir))?;
    let paths = DevPaths { dir: dir.clone() };
    if !paths.config().exists() {
        init_token(&dir)?;
        init_issuer(&dir)?;
        init_tls(&dir)?;
        write_configs(&dir)?;
    }
    upgrade_policy(&dir, &paths.config())?;
    upgrade_http(&paths.config())?;
    upgrade_xks(&dir, &paths.config())?;
    upgrade_attestation(&dir, &paths.config())?;
    Ok(paths)
}

/// The built-in dev policy of earlier releases: a dev dir still holding exactly this text gets
/// the current one (a policy edited by hand is left alone).
const PREVIOUS_DEV_POLICIES: [&str; 1] = [include_str!("../policy/previous/dev-xks.cedar")];

/// Dev dirs created before policy existed: write the dev policy and point the config at it,
/// so dev mode keeps working with zero extra setup.
fn upgrade_policy(dir: &Path, config: &Path) -> Result<(), DevError> {
    init_policy(dir)?;
    let policy = dir.join("dev-policy.cedar");
    let current = fs::read_to_string(&policy).map_err(io(&policy))?;
    if PREVIOUS_DEV_POLICIES.contains(&current.as_str()) {
        write_public(&policy, crate::policy::DEV_POLICY)?;
    }
    let text = fs::read_to_string(config).map_err(io(config))?;
    if !text.contains("[policy]") {
        write_public(config, &format!("{text}\n{POLICY_SECTION}"))?;
    }
    Ok(())
}

/// Dev dirs created before the side port existed get one (plain HTTP on loopback: health,
/// readiness and metrics only; the transit endpoint needs TLS and is not enabled in dev).
fn upgrade_http(config: &Path) -> Result<(), DevError> {
    let text = fs::read_to_string(config).map_err(io(config))?;
    if !text.contains("[http]") {
        write_public(
            config,
            &format!(
                "{text}
{HTTP_SECTION}"
            ),
        )?;
    }
    Ok(())
}

/// URI prefix of the dev XKS key store.
pub const XKS_PREFIX: &str = "dev/xks";
/// AWS region of the dev XKS key store (the SigV4 scope the tester signs with).
pub const XKS_REGION: &str = "eu-central-1";
/// The dev XKS keys: (name, `xks-usage` label), as AWS's conformance client names them in
/// `xks.env` (`KEY_ID`, `ENCRYPT_ONLY_KEY_ID`, `DECRYPT_ONLY_KEY_ID`, `IMPOTENT_KEY_ID`).
pub const XKS_KEYS: [(&str, &str, &str); 4] = [
    ("KEY_ID", "xks-demo", "encrypt,decrypt"),
    ("ENCRYPT_ONLY_KEY_ID", "xks-encrypt-only", "encrypt"),
    ("DECRYPT_ONLY_KEY_ID", "xks-decrypt-only", "decrypt"),
    ("IMPOTENT_KEY_ID", "xks-impotent", "none"),
];

/// Dev dirs without an XKS key store get one: a SigV4 credential (secret in `xks/secret`,
/// 0600) and an `[http.xks]` section with its own TLS listener (the dev side port is plain
/// HTTP).
fn upgrade_xks(dir: &Path, config: &Path) -> Result<(), DevError> {
    let text = fs::read_to_string(config).map_err(io(config))?;
    if text.contains("[http.xks]") {
        return Ok(());
    }
    let d = dir.join("xks");
    create_private_dir(&d)?;
    use base64::Engine as _;
    use ring::rand::SecureRandom as _;
    let rng = ring::rand::SystemRandom::new();
    let mut random = zeroize::Zeroizing::new([0u8; 56]);
    rng.fill(random.as_mut_slice())
        .map_err(|_| DevError::Randomness)?;
    // 24 characters of A-Z2-7 (32 symbols: a byte mod 32 is unbiased), then a 256-bit secret.
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let access_key_id: String = random[..24]
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b % 32)]))
        .collect();
    let secret =
        zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&random[24..]));
    write_secret(&d.join("secret"), secret.as_bytes())?;
    init_kms_client(&d)?;
    write_public(
        config,
        &format!(
            "{text}
# The AWS KMS External Key Store proxy API (docs/xks.md): its own TLS listener, one key store.
[http.xks]
listen = \"{DEV_XKS_LISTEN}\"

[[http.xks.stores]]
uri_prefix = \"{XKS_PREFIX}\"
region = \"{XKS_REGION}\"
keys = [\"xks-*\"]
credentials = [{{ access_key_id = \"{access_key_id}\", secret_file = \"xks/secret\" }}]
# Calls must present the dev \"AWS KMS\" client certificate (xks/kms-client.pem), as KMS does.
mtls = {{ ca_file = \"xks/kms-client-ca.pem\", names = [\"{XKS_CLIENT_NAME}\"] }}
"
        ),
    )
}

/// Dev dirs without attestation get the dev attestation verifier (an EAR producer in the
/// Trustee layout, as `keybroker dev-attestation` mints): its Ed25519 signing key (0600), JWKS
/// and `verifier.json` under `dev-attestation/`, and an `[attestation]` section.
fn upgrade_attestation(dir: &Path, config: &Path) -> Result<(), DevError> {
    let text = fs::read_to_string(config).map_err(io(config))?;
    if text.contains("[attestation]") {
        return Ok(());
    }
    let d = dir.join(ATTESTATION_DIR);
    create_private_dir(&d)?;
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    write_secret(&d.join("signing-key.pem"), kp.serialize_pem().as_bytes())?;
    let kid = format!("dev-att-{}", &random_secret()[..8]);
    let jwks = serde_json::json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(kp.public_key_raw()),
    }]});
    write_public(&d.join("jwks.json"), &jwks.to_string())?;
    let verifier = serde_json::json!({
        "issuer": DEV_ATTESTATION_ISSUER, "kid": kid, "profile": "ear", "layout": "trustee",
    });
    write_public(&d.join("verifier.json"), &verifier.to_string())?;
    write_public(
        config,
        &format!(
            "{text}
# Attested key release (docs/attestation.md): the dev attestation verifier, whose results
# `keybroker dev-attestation` mints. Never for production.
[attestation]
max_age = \"5m\"

[[attestation.verifiers]]
name = \"dev\"
profile = \"ear\"
layout = \"trustee\"
issuer = \"{DEV_ATTESTATION_ISSUER}\"
jwks_file = \"{ATTESTATION_DIR}/jwks.json\"
algorithms = [\"EdDSA\"]
"
        ),
    )
}

/// The name on the dev "AWS KMS" client certificate (KMS presents `cks.kms.<region>.amazonaws.com`).
pub const XKS_CLIENT_NAME: &str = "cks.kms.eu-central-1.amazonaws.com";

/// A dev CA standing in for Amazon Trust Services, and a client certificate for
/// [`XKS_CLIENT_NAME`] from it, under `d` (`kms-client-ca.pem`, `kms-client.pem`,
/// `kms-client-key.pem`).
fn init_kms_client(d: &Path) -> Result<(), DevError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(
        DnType::CommonName,
        "keybroker dev stand-in for the AWS KMS client CA",
    );
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec![XKS_CLIENT_NAME.to_owned()])?;
    leaf.distinguished_name
        .push(DnType::CommonName, XKS_CLIENT_NAME);
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &issuer)?;
    write_public(&d.join("kms-client-ca.pem"), &ca_cert.pem())?;
    write_public(&d.join("kms-client.pem"), &cert.pem())?;
    write_secret(
        &d.join("kms-client-key.pem"),
        key.serialize_pem().as_bytes(),
    )
}

/// Default listen address of the dev XKS proxy API.
pub const DEV_XKS_LISTEN: &str = "127.0.0.1:7482";

/// Writes `xks.env` (mode 0600: it holds the dev SigV4 secret) with exactly the variables
/// AWS's XKS conformance client reads, so `source DIR/xks.env` is all a tester needs.
///
/// # Errors
/// File-system problems, or a config without an XKS key store.
pub fn write_xks_env(
    paths: &DevPaths,
    config: &crate::config::XksConfig,
    addr: std::net::SocketAddr,
) -> Result<(), DevError> {
    let store = config.stores.first().ok_or(DevError::NoXksStore)?;
    let credential = store.credentials.first().ok_or(DevError::NoXksStore)?;
    let secret = zeroize::Zeroizing::new(
        fs::read_to_string(&credential.secret_file).map_err(io(&credential.secret_file))?,
    );
    let mut text = format!(
        "# keybroker dev mode: the XKS proxy API for AWS's conformance client. `source` this\n\
         # file. Holds the dev SigV4 secret: never copy it to a real key store.\n\
         export XKS_PROXY_HOST=localhost:{}\nexport URI_PREFIX={}\nexport REGION={}\n\
         export SIGV4_ACCESS_KEY_ID={}\nexport SIGV4_SECRET_ACCESS_KEY={}\n\
         export CURL_CA_BUNDLE={}\n",
        addr.port(),
        store.uri_prefix,
        store.region,
        credential.access_key_id,
        secret.trim(),
        paths.ca().display(),
    );
    for (var, name, _) in XKS_KEYS {
        text.push_str(&format!("export {var}={name}\n"));
    }
    if store.mtls.is_some() {
        let (cert, key) = (
            paths.dir.join("xks/kms-client.pem"),
            paths.dir.join("xks/kms-client-key.pem"),
        );
        text.push_str(&format!(
            "# The dev stand-in for AWS KMS's client certificate (the store requires mTLS).\n\
             export XKS_CLIENT_CERT={}\nexport XKS_CLIENT_KEY={}\n\
             export MTLS=\"--key {} --cert {}\"\n",
            cert.display(),
            key.display(),
            key.display(),
            cert.display()
        ));
    }
    let text = zeroize::Zeroizing::new(text);
    write_secret(&paths.dir.join("xks.env"), text.as_bytes())
}

/// The `[http]` section of the dev config.
pub const HTTP_SECTION: &str = "[http]
listen = \"127.0.0.1:7480\"
tls = false
";

/// The `[policy]` section of dev and test configs.
pub const POLICY_SECTION: &str = "[policy]\nfile = \"dev-policy.cedar\"\n";

/// Writes `dir/dev-policy.cedar` (namespace `dev` may use and administer every key) unless it
/// exists.
///
/// # Errors
/// File-system problems.
pub fn init_policy(dir: &Path) -> Result<(), DevError> {
    let path = dir.join("dev-policy.cedar");
    if path.exists() {
        return Ok(());
    }
    write_public(&path, crate::policy::DEV_POLICY)
}

fn create_private_dir(dir: &Path) -> Result<(), DevError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    set_mode(dir, 0o700)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), DevError> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io(path))
}

/// Writes a secret file with mode 0600 from the start (never briefly world-readable).
fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), DevError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))
}

fn write_public(path: &Path, text: &str) -> Result<(), DevError> {
    fs::write(path, text).map_err(io(path))
}

fn random_secret() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The SoftHSM2 module on this machine.
///
/// # Errors
/// [`DevError::NoSoftHsm`] when none is installed.
pub fn softhsm_module() -> Result<PathBuf, DevError> {
    SOFTHSM_MODULES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| DevError::NoSoftHsm(SOFTHSM_MODULES.join(", ")))
}

fn init_token(dir: &Path) -> Result<(), DevError> {
    softhsm_module()?;
    let tokens = dir.join("tokens");
    if tokens.exists() {
        // A half-finished earlier first run: start the token over.
        fs::remove_dir_all(&tokens).map_err(io(&tokens))?;
    }
    create_private_dir(&tokens)?;
    let conf = dir.join("softhsm2.conf");
    write_public(
        &conf,
        &format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        ),
    )?;
    let pin = random_secret();
    let so_pin = random_secret();
    write_secret(&dir.join("hsm-pin"), pin.as_bytes())?;
    write_secret(&dir.join("hsm-so-pin"), so_pin.as_bytes())?;
    // softhsm2-util takes PINs only as arguments; this runs once, on the developer's machine.
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            TOKEN_LABEL,
            "--so-pin",
            &so_pin,
            "--pin",
            &pin,
        ])
        .output()
        .map_err(|e| {
            DevError::InitToken(format!(
                "cannot run softhsm2-util ({e}); run scripts/install-deps"
            ))
        })?;
    if !out.status.success() {
        return Err(DevError::InitToken(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}

/// Creates the dev JWT issuer under `dir/dev-issuer` (Ed25519 signing key, JWKS, issuer.json).
///
/// # Errors
/// File-system or key-generation failures.
pub fn init_issuer(dir: &Path) -> Result<(), DevError> {
    let d = dir.join(ISSUER_DIR);
    create_private_dir(&d)?;
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    write_secret(&d.join(SIGNING_KEY_FILE), kp.serialize_pem().as_bytes())?;
    let kid = format!("dev-{}", &random_secret()[..8]);
    let jwks = serde_json::json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(kp.public_key_raw()),
    }]});
    write_public(&d.join("jwks.json"), &jwks.to_string())?;
    let issuer = IssuerInfo {
        issuer: DEV_ISSUER.to_owned(),
        audience: DEV_AUDIENCE.to_owned(),
        kid,
        subject: "system:serviceaccount:dev:trainer".to_owned(),
        namespace: "dev".to_owned(),
        service_account: "trainer".to_owned(),
    };
    let json = serde_json::to_string(&issuer).unwrap_or_default();
    write_public(&d.join(ISSUER_FILE), &json)
}

/// Mints a dev token valid for `ttl` with the issuer under the state dir and writes it to
/// [`DevPaths::token`] (mode 0600, replaced in one rename: readers never see half a token).
///
/// # Errors
/// An unreadable or broken issuer, or a file that cannot be written.
pub fn write_token(paths: &DevPaths, ttl: std::time::Duration) -> Result<(), DevError> {
    let d = paths.dir.join(ISSUER_DIR);
    let read = |name: &str| {
        let path = d.join(name);
        fs::read(&path).map(Zeroizing::new).map_err(io(&path))
    };
    let issuer = IssuerInfo::parse(&read(ISSUER_FILE)?)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let key = read(SIGNING_KEY_FILE)?;
    let token = dev_token::mint(&issuer, &key, &Workload::default(), now, ttl)?;
    let (path, tmp) = (paths.token(), paths.dir.join(".token.tmp"));
    write_secret(&tmp, token.as_bytes())?;
    fs::rename(&tmp, &path).map_err(io(&path))
}

/// Creates a dev CA and a server certificate for localhost/127.0.0.1 under `dir/tls`.
///
/// # Errors
/// File-system or key-generation failures.
pub fn init_tls(dir: &Path) -> Result<(), DevError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let d = dir.join("tls");
    create_private_dir(&d)?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "keybroker dev CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    server
        .distinguished_name
        .push(DnType::CommonName, "keybroker dev server");
    let server_cert = server.signed_by(&server_key, &issuer)?;
    write_public(&d.join("ca.pem"), &ca_cert.pem())?;
    write_public(&d.join("server.pem"), &server_cert.pem())?;
    write_secret(
        &d.join("server-key.pem"),
        server_key.serialize_pem().as_bytes(),
    )
}

/// Region of the dev issuer's callers (and of the dev HSM).
pub const DEV_REGION: &str = "local-dev";

fn write_configs(dir: &Path) -> Result<(), DevError> {
    let module = softhsm_module()?;
    write_public(
        &dir.join("hsm.toml"),
        &format!(
            "# Dev inventory: one SoftHSM2 token, created by `keybrokerd dev`.\n\
             [[hsm]]\nid = \"softhsm-dev\"\nmodule = \"{}\"\ntoken_label = \"{TOKEN_LABEL}\"\n\
             pin = {{ file = \"{}\" }}\njurisdiction = \"EU\"\nregion = \"local-dev\"\n\
             provider = \"SoftHSM2\"\ncertification = \"none (software token, development only)\"\n",
            module.display(),
            dir.join("hsm-pin").display()
        ),
    )?;
    write_public(
        &dir.join("broker.toml"),
        &format!(
            "# Dev broker config, created by `keybrokerd dev`. Not for production.\n\
             hsm_inventory = \"hsm.toml\"\n\n[server]\nlisten = \"{DEV_LISTEN}\"\n\
             tls_cert = \"tls/server.pem\"\ntls_key = \"tls/server-key.pem\"\n\n\
             [store]\nsqlite_path = \"catalog.db\"\n\n[residency]\nallowed_jurisdictions = [\"EU\"]\n\n\
             [audit]\ndir = \"audit\"\n\n\
             [[identity.jwt_issuers]]\nissuer = \"{DEV_ISSUER}\"\naudiences = [\"{DEV_AUDIENCE}\"]\n\
             jwks_file = \"dev-issuer/jwks.json\"\nalgorithms = [\"EdDSA\"]\nmax_token_lifetime = \"24h\"\n\
             # The callers' region, recorded in every audit record (principal.region).\n\
             region = \"{DEV_REGION}\"\n\n\
             {POLICY_SECTION}"
        ),
    )
}

/// Writes `client.env` for `endpoint`, so `source DIR/client.env` is all a client needs.
///
/// # Errors
/// File-system problems.
pub fn write_client_env(paths: &DevPaths, endpoint: &str) -> Result<(), DevError> {
    write_public(
        &paths.client_env(),
        &format!(
            "# keybroker dev mode: `source` this file, then use the `keybroker` CLI.\n\
             export KEYBROKER_ENDPOINT={endpoint}\nexport KEYBROKER_CA={}\nexport KEYBROKER_TOKEN_FILE={}\n",
            paths.ca().display(),
            paths.token().display()
        ),
    )
}
