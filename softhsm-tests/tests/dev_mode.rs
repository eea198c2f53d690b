//! The README path: `keybrokerd dev` creates everything on first run, `source client.env` is
//! all the `keybroker` CLI needs, and a second run reuses the token, catalog and keys.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use std::io::{BufRead as _, BufReader};

fn bin(name: &str) -> PathBuf {
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built (cargo build --workspace)",
        path.display()
    );
    path
}

struct Dev {
    child: Child,
    endpoint: String,
    /// The side port (plain HTTP in dev mode).
    http: std::net::SocketAddr,
    /// The broker's log lines (stderr), drained by a thread so the pipe never fills.
    log: std::sync::mpsc::Receiver<String>,
}

impl Dev {
    /// Waits (bounded) for a log line containing `needle`; returns it.
    fn wait_for_log(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line with {needle:?} within 30 s: {e}"),
            }
        }
    }
}

fn start_dev(state: &Path) -> Dev {
    let mut child = Command::new(bin("keybrokerd"))
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--xks-listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(state)
        .env_remove("SOFTHSM2_CONF")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // The receiver may be gone (test finished); keep draining.
            let _ = tx.send(line);
        }
    });
    let stdout = child.stdout.take().unwrap();
    let mut endpoint = None;
    let mut http = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(e) = line.trim().strip_prefix("endpoint:") {
            endpoint = Some(e.trim().to_owned());
        }
        if let Some(h) = line.trim().strip_prefix("http:") {
            http = h.split_whitespace().next().map(str::to_owned);
        }
        if line.trim().starts_with("try:") {
            break;
        }
    }
    let endpoint = endpoint.expect("dev mode printed no endpoint");
    assert!(endpoint.starts_with("https://127.0.0.1:"), "{endpoint}");
    let http = http.expect("dev mode printed no side port");
    let http = http.strip_prefix("http://").unwrap().parse().unwrap();
    Dev {
        child,
        endpoint,
        http,
        log,
    }
}

/// A test that fails before [`stop`] must not leave its broker running (it would hold ports
/// and a SoftHSM token for the rest of the run).
impl Drop for Dev {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn stop(mut dev: Dev) {
    let pid = dev.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = dev.child.wait().unwrap();
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
}

fn client_env(state: &Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(state.join("client.env")).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn cli(env: &HashMap<String, String>, args: &[&str]) -> Output {
    Command::new(bin("keybroker"))
        .args(args)
        .env_remove("KEYBROKER_ENDPOINT")
        .env_remove("KEYBROKER_CA")
        .env_remove("KEYBROKER_TOKEN_FILE")
        .envs(env)
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn dev_mode_first_run_creates_everything_and_second_run_reuses_it() {
    let state = tempfile::tempdir().unwrap();
    let dev = start_dev(state.path());
    let env = client_env(state.path());
    assert_eq!(env["KEYBROKER_ENDPOINT"], dev.endpoint);
    for f in [
        "softhsm2.conf",
        "catalog.db",
        "tls/ca.pem",
        "dev-issuer/jwks.json",
        "token",
        "broker.toml",
    ] {
        assert!(state.path().join(f).exists(), "{f} missing");
    }
    let generated = json(&cli(
        &env,
        &[
            "datakey",
            "generate",
            "datasets/demo",
            "--context",
            "dataset=demo",
        ],
    ));
    let ct = generated["ciphertext"].as_str().unwrap().to_owned();
    assert_eq!(generated["key_version"], 1);
    assert!(
        generated["lease_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert!(generated["expires_at"].as_str().is_some());
    let opened = json(&cli(
        &env,
        &["datakey", "decrypt", &ct, "--context", "dataset=demo"],
    ));
    assert_eq!(opened["plaintext"], generated["plaintext"]);
    let wrong = cli(
        &env,
        &["datakey", "decrypt", &ct, "--context", "dataset=other"],
    );
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("INVALID_ARGUMENT"));
    let token_before = std::fs::read(state.path().join("token")).unwrap();
    stop(dev);

    // Second run: same token, catalog and key; a fresh dev token.
    let dev = start_dev(state.path());
    let env = client_env(state.path());
    assert_ne!(
        std::fs::read(state.path().join("token")).unwrap(),
        token_before
    );
    let opened = json(&cli(
        &env,
        &["datakey", "decrypt", &ct, "--context", "dataset=demo"],
    ));
    assert_eq!(opened["plaintext"], generated["plaintext"]);
    let keys = json(&cli(&env, &["keys", "list"]));
    // The demo key, the attested-release key and the four XKS keys of `xks.env`, made once and
    // reused.
    let names: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "datasets/demo",
            "models/confidential",
            "xks-decrypt-only",
            "xks-demo",
            "xks-encrypt-only",
            "xks-impotent"
        ],
        "{keys}"
    );
    // xks.env holds the dev SigV4 secret: owner-only.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(state.path().join("xks.env"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "xks.env mode {mode:o}");
    stop(dev);
}

fn hup(dev: &Dev) {
    let pid = dev.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
}

fn generate_demo(env: &HashMap<String, String>) -> Output {
    cli(
        env,
        &[
            "datakey",
            "generate",
            "datasets/demo",
            "--context",
            "dataset=demo",
        ],
    )
}

#[test]
fn sighup_reloads_the_policy_and_a_broken_policy_keeps_the_one_in_force() {
    let state = tempfile::tempdir().unwrap();
    let dev = start_dev(state.path());
    let env = client_env(state.path());
    let policy = state.path().join("dev-policy.cedar");
    let original = std::fs::read_to_string(&policy).unwrap();
    json(&generate_demo(&env));

    // Read-only policy: GenerateDataKey is no longer permitted, after the reload, without a
    // restart.
    std::fs::write(
        &policy,
        "@id(\"dev-read-only\")\npermit (principal, action == Keybroker::Action::\"GetKey\", \
         resource) when { principal.namespace == \"dev\" };\n",
    )
    .unwrap();
    hup(&dev);
    dev.wait_for_log("policy reloaded");
    let denied = generate_demo(&env);
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("PERMISSION_DENIED"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );

    // A policy that does not validate is refused; the read-only one stays in force (no
    // fallback to allow, no crash).
    std::fs::write(
        &policy,
        "@id(\"typo\")\npermit (principal, action, resource) when { principal.namespce == \"dev\" };\n",
    )
    .unwrap();
    hup(&dev);
    let refused = dev.wait_for_log("policy reload refused");
    assert!(refused.contains("namespce"), "{refused}");
    assert!(!generate_demo(&env).status.success());

    // Restoring the original policy works again: a refused reload does not wedge reloading.
    std::fs::write(&policy, original).unwrap();
    hup(&dev);
    dev.wait_for_log("policy reloaded");
    json(&generate_demo(&env));
    stop(dev);
}

#[test]
fn policy_check_accepts_the_shipped_policies_and_names_every_problem_offline() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("dev.cedar");
    std::fs::write(&good, keybroker_broker::policy::DEV_POLICY).unwrap();
    let default = dir.path().join("default.cedar");
    std::fs::write(&default, keybroker_broker::policy::DEFAULT_POLICY).unwrap();
    let typo = dir.path().join("typo.cedar");
    std::fs::write(
        &typo,
        keybroker_broker::policy::DEV_POLICY.replace("principal.namespace", "principal.namespce"),
    )
    .unwrap();
    let huge = dir.path().join("huge.cedar");
    std::fs::write(&huge, vec![b' '; 2 * 1024 * 1024]).unwrap();
    let no_env = HashMap::new();
    let ok = json(&cli(
        &no_env,
        &[
            "policy",
            "check",
            good.to_str().unwrap(),
            default.to_str().unwrap(),
        ],
    ));
    // The hash the broker will record for this policy.
    let engine = keybroker_broker::policy::PolicyEngine::from_text(
        keybroker_broker::policy::DEV_POLICY,
        "d",
    )
    .unwrap();
    assert_eq!(ok[0]["sha256"], engine.sha256(), "{ok}");
    assert_eq!(ok[1]["valid"], true, "{ok}");
    assert!(!ok[1]["policies"].as_array().unwrap().is_empty());

    let bad = cli(
        &no_env,
        &[
            "policy",
            "check",
            good.to_str().unwrap(),
            typo.to_str().unwrap(),
            huge.to_str().unwrap(),
            "/nonexistent/p.cedar",
        ],
    );
    assert!(!bad.status.success());
    let reports: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    let valid: Vec<bool> = reports
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["valid"].as_bool().unwrap())
        .collect();
    assert_eq!(valid, [true, false, false, false]);
    assert!(reports[1]["error"].as_str().unwrap().contains("namespce"));
    assert!(
        reports[2]["error"]
            .as_str()
            .unwrap()
            .contains("larger than")
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("3 of 4 policy files refused"));
}

#[test]
fn side_port_reports_health_readiness_per_component_and_request_metrics() {
    let state = tempfile::tempdir().unwrap();
    let dev = start_dev(state.path());
    let env = client_env(state.path());
    json(&generate_demo(&env));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let get = |path: &str| {
        rt.block_on(softhsm_tests::https::get_plain(dev.http, path))
            .unwrap()
    };
    let health = get("/healthz");
    assert_eq!(health.status, 200);
    // Readiness comes from the 1 s probe: poll until the first probe has run.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let ready = loop {
        let r = get("/readyz");
        if r.status == 200 || std::time::Instant::now() > deadline {
            break r;
        }
    };
    assert_eq!(ready.status, 200, "{ready:?}");
    assert_eq!(ready.json["ready"], true);
    for c in ["hsm:softhsm-dev", "catalog", "audit"] {
        assert_eq!(ready.json["components"][c]["ready"], true, "{c}: {ready:?}");
    }
    let metrics = get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text.contains(
            "keybroker_requests_total{surface=\"grpc\",method=\"GenerateDataKey\",code=\"ok\"} 1"
        ),
        "{}",
        metrics.text
    );
    assert!(
        metrics
            .text
            .contains("keybroker_policy_decisions_total{outcome=\"allow\"}")
    );
    assert!(
        metrics
            .text
            .contains("keybroker_component_ready{component=\"audit\"} 1")
    );
    // No key names or subjects in labels.
    assert!(!metrics.text.contains("datasets/demo"));
    assert_eq!(get("/nope").status, 404);
    stop(dev);
}

#[test]
fn check_config_accepts_the_dev_config_and_names_the_broken_field() {
    let state = tempfile::tempdir().unwrap();
    let dev = start_dev(state.path());
    stop(dev);
    let config = state.path().join("broker.toml");
    let ok = Command::new(bin("keybrokerd"))
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let pin = std::fs::read_to_string(state.path().join("hsm-pin")).unwrap();
    assert!(
        !String::from_utf8_lossy(&ok.stdout).contains(pin.trim()),
        "report shows the PIN"
    );

    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "max_token_lifetime = \"24h\"",
            "max_token_lifetime = \"90d\"",
        ),
    )
    .unwrap();
    let bad = Command::new(bin("keybrokerd"))
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("max_token_lifetime"), "{err}");
}

#[test]
fn cli_names_the_missing_setting() {
    let out = cli(&HashMap::new(), &["datakey", "generate", "datasets/demo"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("KEYBROKER_ENDPOINT"), "{err}");
}
