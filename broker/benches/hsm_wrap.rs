//! Cost of the `HsmPool` wrapper: `encrypt_gcm` of 32 bytes through the pool (semaphore,
//! `spawn_blocking`, cached label lookup) versus the bare `C_Encrypt` on an open session with
//! a found handle, on the same SoftHSM2 token.
//!
//! Needs SoftHSM2 (`softhsm2-util`; module from `$SOFTHSM2_MODULE` or
//! `/usr/lib/softhsm/libsofthsm2.so`). Run: `cargo bench -p keybroker-broker --bench hsm_wrap`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::Attribute;
use cryptoki::session::UserType;
use keybroker_broker::hsm::{HsmPool, HsmSettings, TokenSelector};
use zeroize::Zeroizing;

const LABEL: &str = "bench";
const PIN: &str = "87654321";
const KEY: &str = "kb:bench:v1";

fn module() -> PathBuf {
    std::env::var_os("SOFTHSM2_MODULE").map_or_else(
        || PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
        PathBuf::from,
    )
}

fn token_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let ok = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", LABEL])
        .args(["--so-pin", "12345678", "--pin", PIN])
        .status()
        .unwrap()
        .success();
    assert!(ok, "softhsm2-util --init-token failed");
    #[allow(unsafe_code)]
    // SAFETY: called first thing in the bench, before any other thread exists or SoftHSM is loaded.
    unsafe {
        std::env::set_var("SOFTHSM2_CONF", &conf);
    }
    dir
}

fn bench(c: &mut Criterion) {
    let _dir = token_dir();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let pool = rt
        .block_on(HsmPool::connect(HsmSettings {
            id: "bench".into(),
            module: module(),
            token: TokenSelector::Label(LABEL.into()),
            pin: PIN.to_owned().into(),
            pool_size: 4,
        }))
        .unwrap();
    rt.block_on(pool.create_aes_key(KEY)).unwrap();
    let plaintext = [7u8; 32];
    let iv = [1u8; 12];

    let mut group = c.benchmark_group("gcm_encrypt_32B");
    group.bench_function("hsm_pool", |b| {
        b.iter(|| {
            rt.block_on(pool.encrypt_gcm(KEY, iv, Vec::new(), Zeroizing::new(plaintext.to_vec())))
                .unwrap()
        });
    });

    // The same call, raw: an already-open logged-in session and an already-found handle.
    let ctx = Pkcs11::new(module()).unwrap();
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("{e}"),
    }
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let session = ctx.open_rw_session(slot).unwrap();
    match session.login(UserType::User, Some(&PIN.to_owned().into())) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("{e}"),
    }
    let key = session
        .find_objects(&[Attribute::Label(KEY.as_bytes().to_vec())])
        .unwrap()[0];
    group.bench_function("raw_c_encrypt", |b| {
        b.iter(|| {
            let mut iv = iv;
            let params = GcmParams::new(&mut iv, &[], 128.into()).unwrap();
            black_box(
                session
                    .encrypt(&Mechanism::AesGcm(params), key, black_box(&plaintext))
                    .unwrap(),
            )
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = bench
}
criterion_main!(benches);
