//! `keybroker bench` smoke test against a real dev broker (`keybrokerd dev`): a few hundred
//! operations, then the JSON report must hold sane, non-zero figures. No timing assertions
//! (the machine may be loaded); only shapes and counts. The raw-HSM ceiling mode runs against
//! the same dev token.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use softhsm_tests::dev::DevBroker;
use softhsm_tests::workspace_bin;

/// `keybrokerd dev` on free ports in `state`, with the client variables it wrote.
fn start_dev(state: &Path) -> (DevBroker, HashMap<String, String>) {
    let dev = DevBroker::start(state, &[], &[]).unwrap();
    let env = dev.client_env().unwrap();
    (dev, env)
}

fn bench(env: &HashMap<String, String>, args: &[&str]) -> Output {
    Command::new(workspace_bin("keybroker").unwrap())
        .arg("bench")
        .args(args)
        .args(["--output", "json", "--no-progress"])
        .env_remove("KEYBROKER_ENDPOINT")
        .env_remove("KEYBROKER_CA")
        .env_remove("KEYBROKER_TOKEN_FILE")
        .envs(env)
        .output()
        .unwrap()
}

fn report(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Non-zero rate, ordered non-zero percentiles, the expected count, no errors.
fn assert_sane(v: &serde_json::Value, ok: u64) {
    assert_eq!(v["ok"], ok, "{v}");
    assert_eq!(v["errors"], serde_json::json!({}), "{v}");
    assert!(v["ops_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    let lat = &v["latency_ms"];
    let p: Vec<f64> = ["p50", "p90", "p99", "p999", "max"]
        .iter()
        .map(|k| lat[*k].as_f64().unwrap())
        .collect();
    assert!(p[0] > 0.0, "{v}");
    assert!(
        p.windows(2).all(|w| w[0] <= w[1]),
        "percentiles out of order: {v}"
    );
}

#[test]
fn bench_reports_sane_figures_against_a_dev_broker() {
    let state = tempfile::tempdir().unwrap();
    let (_dev, env) = start_dev(state.path());

    let v = report(&bench(
        &env,
        &[
            "datasets/demo",
            "--requests",
            "300",
            "--concurrency",
            "8",
            "--connections",
            "2",
        ],
    ));
    assert_sane(&v, 300);
    assert_eq!(v["target"], "broker");
    assert_eq!(v["op"], "datakey");
    assert_eq!(v["concurrency"], 8);

    let v = report(&bench(
        &env,
        &[
            "datasets/demo",
            "--op",
            "mixed",
            "--mix",
            "datakey=1,decrypt=1",
            "--requests",
            "200",
            "--rate",
            "400",
        ],
    ));
    assert_sane(&v, 200);
    let per_op =
        v["ops"]["datakey"]["ok"].as_u64().unwrap() + v["ops"]["decrypt"]["ok"].as_u64().unwrap();
    assert_eq!(per_op, 200, "{v}");
    assert!(v["ops"]["decrypt"]["ok"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn bench_counts_errors_by_grpc_code() {
    let state = tempfile::tempdir().unwrap();
    let (_dev, env) = start_dev(state.path());
    let v = report(&bench(&env, &["datasets/missing", "--requests", "20"]));
    assert_eq!(v["ok"], 0, "{v}");
    assert_eq!(v["errors"]["PERMISSION_DENIED"], 20, "{v}");
}

#[test]
fn raw_hsm_ceiling_runs_against_the_dev_token() {
    let state = tempfile::tempdir().unwrap();
    // The dev broker creates the token; stop it again so only the bench uses the token.
    start_dev(state.path()).0.stop().unwrap();
    let module = std::fs::read_to_string(state.path().join("hsm.toml")).unwrap();
    let module = module
        .lines()
        .find_map(|l| l.strip_prefix("module = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let out = Command::new(workspace_bin("keybroker").unwrap())
        .args(["bench", "--raw-hsm", "--module", &module, "--token-label"])
        .arg(keybroker_broker::dev::TOKEN_LABEL)
        .arg("--pin-file")
        .arg(state.path().join("hsm-pin"))
        .args(["--op", "decrypt", "--requests", "300", "--concurrency", "4"])
        .args(["--output", "json", "--no-progress"])
        .env("SOFTHSM2_CONF", state.path().join("softhsm2.conf"))
        .output()
        .unwrap();
    let v = report(&out);
    assert_sane(&v, 300);
    assert_eq!(v["target"], "raw-hsm");
}

#[test]
fn bench_refuses_bad_arguments_before_connecting() {
    let env = HashMap::from([(
        "KEYBROKER_ENDPOINT".to_owned(),
        "https://127.0.0.1:1".to_owned(),
    )]);
    for (args, needle) in [
        (&["k", "--op", "mixed"][..], "--op mixed needs --mix"),
        (&["k", "--mix", "datakey=1"][..], "--mix only applies"),
        (
            &["k", "--op", "mixed", "--mix", "wrap=1"][..],
            "unknown operation",
        ),
        (&["k", "--concurrency", "0"][..], "--concurrency"),
        (&["k", "--rate", "0"][..], "--rate must be"),
        (&["--requests", "5"][..], "KEY is required"),
        (
            &["--raw-hsm", "--requests", "5"][..],
            "--raw-hsm needs --module",
        ),
    ] {
        let out = bench(&env, args);
        assert!(!out.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
