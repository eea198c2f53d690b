//! What an operator sees of a running `keybrokerd dev`: `/metrics` after a scenario, parsed by
//! an independent Prometheus text parser, holds every metric family the docs promise.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use softhsm_tests::dev::DevBroker;

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn scrape(dev: &DevBroker) -> (prometheus_parse::Scrape, String) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reply = rt
        .block_on(softhsm_tests::https::get_plain(dev.http, "/metrics"))
        .unwrap();
    assert_eq!(reply.status, 200);
    let parsed =
        prometheus_parse::Scrape::parse(reply.text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    (parsed, reply.text)
}

fn value(v: &prometheus_parse::Value) -> f64 {
    use prometheus_parse::Value as V;
    match v {
        V::Counter(x) | V::Gauge(x) | V::Untyped(x) => *x,
        V::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
        V::Summary(_) => 0.0,
    }
}

/// Every family documented in docs/operations.md.
const FAMILIES: [&str; 14] = [
    "keybroker_requests",
    "keybroker_request_duration_seconds",
    "keybroker_policy_decisions",
    "keybroker_component_ready",
    "keybroker_hsm_sessions_in_use",
    "keybroker_hsm_sessions_idle",
    "keybroker_hsm_session_waits",
    "keybroker_hsm_errors",
    "keybroker_audit_commit_batch_records",
    "keybroker_audit_commit_duration_seconds",
    "keybroker_jwks_fetches",
    "keybroker_jwks_fetch_failures",
    "keybroker_leases_active",
    "keybroker_keys",
];

#[test]
fn metrics_after_a_scenario_parse_and_hold_every_family() {
    let state = tempfile::tempdir().unwrap();
    let dev = DevBroker::start(state.path(), &[], &[]).unwrap();
    let generated = json(
        &dev.cli(&[
            "datakey",
            "generate",
            "datasets/demo",
            "--context",
            "dataset=demo",
        ])
        .unwrap(),
    );
    let ct = generated["ciphertext"].as_str().unwrap();
    json(
        &dev.cli(&["datakey", "decrypt", ct, "--context", "dataset=demo"])
            .unwrap(),
    );
    // A modified tag: the HSM refuses it, which counts as an HSM error.
    let mut bytes = base64::engine::general_purpose::STANDARD
        .decode(ct)
        .unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    let tampered = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let refused = dev
        .cli(&["datakey", "decrypt", &tampered, "--context", "dataset=demo"])
        .unwrap();
    assert!(!refused.status.success());

    // The sampler runs once a second: poll until it has seen the scenario.
    let deadline = Instant::now() + Duration::from_secs(10);
    let sample = |s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>| {
        s.samples
            .iter()
            .filter(|x| x.metric == name)
            .filter(|x| label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
            .map(|x| value(&x.value))
            .sum::<f64>()
    };
    let (scraped, text) = loop {
        let (s, text) = scrape(&dev);
        let seen = sample(
            &s,
            "keybroker_hsm_errors_total",
            Some(("code", "tag_mismatch")),
        ) >= 1.0
            && sample(&s, "keybroker_leases_active", None) >= 2.0;
        if seen || Instant::now() > deadline {
            break (s, text);
        }
        std::thread::sleep(Duration::from_millis(100)); // poll interval, not synchronisation
    };
    for family in FAMILIES {
        assert!(
            scraped.docs.contains_key(family),
            "{family} missing from /metrics:\n{text}"
        );
    }
    // The dev issuer's keys are a file: a sample, never fetched.
    assert_eq!(sample(&scraped, "keybroker_jwks_fetches_total", None), 0.0);
    let at_least = |name: &str, label: Option<(&str, &str)>, min: f64| {
        let got = sample(&scraped, name, label);
        assert!(got >= min, "{name} {label:?}: {got} < {min}\n{text}");
    };
    at_least(
        "keybroker_requests_total",
        Some(("method", "GenerateDataKey")),
        1.0,
    );
    at_least(
        "keybroker_hsm_errors_total",
        Some(("code", "tag_mismatch")),
        1.0,
    );
    // Idle sessions may be 0 at a sample (the health probe may hold the one idle session).
    assert!(
        scraped
            .samples
            .iter()
            .any(|x| x.metric == "keybroker_hsm_sessions_idle"
                && x.labels.get("hsm") == Some("softhsm-dev")),
        "{text}"
    );
    at_least("keybroker_audit_commit_batch_records_count", None, 3.0);
    at_least("keybroker_audit_commit_duration_seconds_count", None, 3.0);
    at_least("keybroker_leases_active", None, 2.0);
    at_least("keybroker_keys", Some(("state", "ENABLED")), 1.0);
    // No key names in labels.
    assert!(
        scraped
            .samples
            .iter()
            .all(|s| s.labels.values().all(|v| !v.contains("datasets/")))
    );
    let (status, _) = dev.stop().unwrap();
    assert!(status.success(), "{status:?}");
}

/// The lines of `haystack` that contain one of `secrets` (as given).
fn leaks<'a>(haystack: &'a [String], secrets: &[(String, String)]) -> Vec<(&'a str, String)> {
    let mut found = Vec::new();
    for line in haystack {
        for (what, secret) in secrets {
            if line.contains(secret.as_str()) {
                found.push((line.as_str(), what.clone()));
            }
        }
    }
    found
}

#[test]
fn logs_and_audit_records_hold_no_secret_and_request_lines_carry_the_request_id() {
    let state = tempfile::tempdir().unwrap();
    let dev = DevBroker::start(state.path(), &[], &[("KEYBROKER_LOG", "debug")]).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let generated = json(
        &dev.cli(&[
            "datakey",
            "generate",
            "datasets/demo",
            "--context",
            "dataset=demo",
        ])
        .unwrap(),
    );
    let ct = generated["ciphertext"].as_str().unwrap().to_owned();
    let opened = json(
        &dev.cli(&["datakey", "decrypt", &ct, "--context", "dataset=demo"])
            .unwrap(),
    );
    // A forged token (valid shape, wrong signature) is refused; it must not be logged either.
    let token = std::fs::read_to_string(state.path().join("token"))
        .unwrap()
        .trim()
        .to_owned();
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    let forged_file = state.path().join("forged-token");
    std::fs::write(&forged_file, &forged).unwrap();
    let refused = dev
        .cli(&[
            "--token-file",
            forged_file.to_str().unwrap(),
            "datakey",
            "generate",
            "datasets/demo",
        ])
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("UNAUTHENTICATED"));
    let audit_dir = state.path().join("audit");
    let (status, output) = dev.stop().unwrap();
    assert!(status.success(), "{status:?}");

    let mut secrets = Vec::new();
    for (what, file) in [("PIN", "hsm-pin"), ("SO PIN", "hsm-so-pin")] {
        let pin = std::fs::read_to_string(state.path().join(file)).unwrap();
        secrets.push((what.to_owned(), pin.trim().to_owned()));
    }
    secrets.push(("dev JWT".to_owned(), token.clone()));
    // The signature part alone, in case a token is logged cut up.
    secrets.push((
        "JWT signature".to_owned(),
        token.rsplit('.').next().unwrap().to_owned(),
    ));
    secrets.push(("forged JWT".to_owned(), forged));
    for (what, v) in [("generated", &generated), ("decrypted", &opened)] {
        let plaintext = b64.decode(v["plaintext"].as_str().unwrap()).unwrap();
        assert_eq!(plaintext.len(), 32);
        secrets.push((format!("{what} data key (base64)"), b64.encode(&plaintext)));
        secrets.push((
            format!("{what} data key (base64url)"),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&plaintext),
        ));
        secrets.push((format!("{what} data key (hex)"), hex::encode(&plaintext)));
        secrets.push((
            format!("{what} data key (HEX)"),
            hex::encode_upper(&plaintext),
        ));
    }
    for (what, s) in &secrets {
        assert!(s.len() >= 16, "{what} too short to scan for");
    }
    // The scan can fail: a planted secret is found.
    let control = vec![format!("log line holding {} by mistake", secrets[0].1)];
    assert_eq!(leaks(&control, &secrets).len(), 1);

    let audit = softhsm_tests::broker::read_audit_segments(&audit_dir).unwrap();
    assert!(audit.len() >= 3, "{audit:?}");
    assert!(
        output.len() > 20,
        "debug logging produced {} lines",
        output.len()
    );
    let found = leaks(&output, &secrets);
    assert!(found.is_empty(), "secrets in the broker output: {found:?}");
    let found = leaks(&audit, &secrets);
    assert!(found.is_empty(), "secrets in the audit log: {found:?}");

    // Text format: every broker line inside a request span names the request id, and the
    // refused request's id is the one in its audit record.
    let in_request: Vec<&String> = output
        .iter()
        .filter(|l| l.contains("request{") && l.contains("keybroker_broker"))
        .collect();
    assert!(in_request.len() >= 3, "{output:#?}");
    for line in &in_request {
        assert!(line.contains("request_id="), "no request id: {line}");
    }
}

#[test]
fn json_log_lines_parse_and_name_the_request_id_of_each_request() {
    let state = tempfile::tempdir().unwrap();
    // First run writes the dev config; then switch it to JSON.
    let dev = DevBroker::start(state.path(), &[], &[]).unwrap();
    dev.stop().unwrap();
    let config = state.path().join("broker.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[log]\nformat = \"json\"\nlevel = \"info\"\n");
    std::fs::write(&config, text).unwrap();
    let dev = DevBroker::start(state.path(), &[], &[]).unwrap();
    json(
        &dev.cli(&[
            "datakey",
            "generate",
            "datasets/demo",
            "--context",
            "dataset=demo",
        ])
        .unwrap(),
    );
    let (status, output) = dev.stop().unwrap();
    assert!(status.success());
    let events: Vec<serde_json::Value> = output
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!events.is_empty(), "{output:#?}");
    let released: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["fields"]["message"] == "data key issued")
        .collect();
    assert_eq!(released.len(), 1, "{events:#?}");
    let span = &released[0]["spans"][0];
    assert_eq!(span["name"], "request", "{span}");
    assert!(
        span["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{span}"
    );
}

#[test]
fn sighup_reloads_the_log_level_from_the_config_file() {
    let state = tempfile::tempdir().unwrap();
    let dev = DevBroker::start(state.path(), &[], &[]).unwrap();
    dev.stop().unwrap();
    let config = state.path().join("broker.toml");
    let base = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{base}\n[log]\nlevel = \"warn\"\n")).unwrap();
    let dev = DevBroker::start(state.path(), &[], &[]).unwrap();
    let generate = || {
        json(
            &dev.cli(&[
                "datakey",
                "generate",
                "datasets/demo",
                "--context",
                "dataset=demo",
            ])
            .unwrap(),
        )
    };
    generate();
    // A broken level is refused and the old one stays.
    std::fs::write(
        &config,
        format!("{base}\n[log]\nlevel = \"warn,=bogus[\"\n"),
    )
    .unwrap();
    dev.signal("HUP").unwrap();
    dev.wait_for("previous log level stays", Duration::from_secs(10))
        .unwrap();
    generate();
    std::fs::write(&config, format!("{base}\n[log]\nlevel = \"info\"\n")).unwrap();
    dev.signal("HUP").unwrap();
    dev.wait_for("log level reloaded", Duration::from_secs(10))
        .unwrap();
    generate();
    let (status, output) = dev.stop().unwrap();
    assert!(status.success());
    let issued = output
        .iter()
        .filter(|l| l.contains("data key issued"))
        .count();
    assert_eq!(
        issued, 1,
        "only the request after the reload is logged: {output:#?}"
    );
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next().map(|u| u == "0"))
        .unwrap()
}

/// `keybrokerd --config` on a fresh token; stderr lines go to the returned channel.
fn start_production(
    dir: &std::path::Path,
    args: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead as _;
    let token = softhsm_tests::SoftHsmToken::new("harden").unwrap();
    let pin = token.pin.clone();
    let config = softhsm_tests::broker::write_config(dir, &token, &pin).unwrap();
    drop(token); // its files stay in the process token dir
    let mut child = std::process::Command::new(softhsm_tests::workspace_bin("keybrokerd").unwrap())
        .arg("--config")
        .arg(&config)
        .args(args)
        .env("SOFTHSM2_CONF", softhsm_tests::process_softhsm_conf())
        .env("KEYBROKER_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

fn wait_line(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = line.contains(needle);
                seen.push(line);
                if hit {
                    return seen;
                }
            }
            Err(e) => panic!("no line with {needle:?}: {e}; got {seen:#?}"),
        }
    }
}

#[test]
fn production_mode_refuses_root_without_allow_root() {
    if !running_as_root() {
        // The refusal needs uid 0 (CI runs as root); the pure rule is unit-tested.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut child, rx) = start_production(dir.path(), &[]);
    let status = child.wait().unwrap();
    assert!(!status.success());
    let lines: Vec<String> = rx.iter().collect();
    assert!(
        lines.iter().any(|l| l.contains("refusing to run as root")),
        "{lines:#?}"
    );
}

#[test]
fn production_mode_runs_without_core_dumps_and_with_locked_memory_or_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, rx) = start_production(dir.path(), &["--allow-root"]);
    let lines = wait_line(&rx, "serving");
    let hardened = lines
        .iter()
        .find(|l| l.contains("process hardened"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    let pid = child.id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "{core}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let locked_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    if hardened.contains("memory_locked=true") {
        assert!(locked_kb > 0, "{status}");
    } else {
        assert!(
            lines.iter().any(|l| l.contains("memory NOT locked")),
            "no warning: {lines:#?}"
        );
    }
    if running_as_root() {
        // (Locked memory is not asserted for root: a container without CAP_IPC_LOCK gets the
        // warning, checked above.)
        assert!(lines.iter().any(|l| l.contains("running as root")));
    }
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(child.wait().unwrap().success());
}

#[test]
fn sigterm_under_load_keeps_every_acknowledged_operation_and_the_final_checkpoint_covers_the_log() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let state = tempfile::tempdir().unwrap();
    let dev = DevBroker::start(state.path(), &[], &[]).unwrap();
    let env = dev.client_env().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt
        .block_on(keybroker_client::Client::connect(
            keybroker_client::ClientConfig {
                ca: Some(env["KEYBROKER_CA"].clone().into()),
                token_file: Some(env["KEYBROKER_TOKEN_FILE"].clone().into()),
                ..keybroker_client::ClientConfig::new(dev.endpoint.clone())
            },
        ))
        .unwrap();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let context: std::collections::BTreeMap<String, String> =
        [("dataset".to_owned(), "load".to_owned())].into();
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (client, acked, stop, context) =
            (client.clone(), acked.clone(), stop.clone(), context.clone());
        workers.push(rt.spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(k) = client
                    .generate_data_key("datasets/demo", &context, None)
                    .await
                {
                    acked.lock().unwrap().push(k.lease_id.clone());
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 100 {
        assert!(Instant::now() < deadline, "load did not start");
        std::thread::sleep(Duration::from_millis(20)); // poll interval
    }
    // SIGTERM while the workers keep sending.
    let (status, output) = dev.stop().unwrap();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        rt.block_on(w).unwrap();
    }
    assert!(status.success(), "exit {status:?}: {output:#?}");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 100);

    let audit_dir = state.path().join("audit");
    let records = softhsm_tests::broker::read_audit_segments(&audit_dir).unwrap();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|lease| !records.iter().any(|r| r.contains(lease.as_str())))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged, not audited: {missing:?}",
        acked.len()
    );
    // The final checkpoint covers the whole log, and an offline verifier agrees.
    let checkpoint = std::fs::read_to_string(audit_dir.join("checkpoint")).unwrap();
    let size: usize = checkpoint.lines().nth(1).unwrap().parse().unwrap();
    assert_eq!(size, records.len(), "{checkpoint}");
    let verify = std::process::Command::new(softhsm_tests::workspace_bin("keybroker").unwrap())
        .args(["--output", "json", "audit", "verify"])
        .arg(&audit_dir)
        .arg("--vkey")
        .arg(audit_dir.join("checkpoint.vkey"))
        .output()
        .unwrap();
    let verified = json(&verify);
    assert_eq!(verified["verified"], true);
    assert_eq!(verified["tree_size"], size);
}
