//! X.509-SVID rules and client CA rotation, with a CA and SVIDs minted by rcgen at test time.

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use time::{Duration, OffsetDateTime};

use super::svid::{self, SvidError};
use super::{ClientCa, Reloaded};

const ID: &str = "spiffe://eu1.test/ns/ml/sa/trainer";

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca() -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let pem = p.self_signed(&key).unwrap().pem();
    Ca {
        pem,
        issuer: Issuer::new(p, key),
    }
}

fn leaf(ca: &Ca, edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = vec![SanType::URI(ID.try_into().unwrap())];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
    p.not_after = OffsetDateTime::now_utc() + Duration::hours(1);
    edit(&mut p);
    let key = KeyPair::generate().unwrap();
    p.signed_by(&key, &ca.issuer).unwrap().der().to_vec()
}

fn domains() -> Vec<String> {
    vec!["eu1.test".into()]
}

#[test]
fn svid_rules_refuse_each_hostile_leaf() {
    let ca = ca();
    let ok = svid::check(&leaf(&ca, |_| {}), &domains()).unwrap();
    assert_eq!(ok.spiffe_id, ID);
    assert_eq!(ok.fingerprint.len(), 64);
    let cases: Vec<(&str, Vec<u8>, SvidError)> = vec![
        (
            "two URI SANs",
            leaf(&ca, |p| {
                p.subject_alt_names
                    .push(SanType::URI("spiffe://eu1.test/other".try_into().unwrap()));
            }),
            SvidError::UriCount(2),
        ),
        (
            "no URI SAN",
            leaf(&ca, |p| {
                p.subject_alt_names = vec![SanType::DnsName("a.test".try_into().unwrap())];
            }),
            SvidError::UriCount(0),
        ),
        (
            "foreign trust domain",
            leaf(&ca, |p| {
                p.subject_alt_names = vec![SanType::URI("spiffe://us1.test/x".try_into().unwrap())];
            }),
            SvidError::ForeignTrustDomain("us1.test".into()),
        ),
        (
            "not a SPIFFE ID",
            leaf(&ca, |p| {
                p.subject_alt_names = vec![SanType::URI("https://eu1.test/x".try_into().unwrap())];
            }),
            SvidError::NotSpiffeId,
        ),
        (
            "CA certificate as leaf",
            leaf(&ca, |p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)),
            SvidError::CaAsLeaf,
        ),
        (
            "keyCertSign on leaf",
            leaf(&ca, |p| p.key_usages.push(KeyUsagePurpose::KeyCertSign)),
            SvidError::KeyUsage,
        ),
        (
            "no digitalSignature",
            leaf(&ca, |p| {
                p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]
            }),
            SvidError::KeyUsage,
        ),
        (
            "no key usage",
            leaf(&ca, |p| p.key_usages.clear()),
            SvidError::KeyUsage,
        ),
    ];
    for (what, der, want) in cases {
        assert_eq!(svid::check(&der, &domains()), Err(want), "{what}");
    }
    assert_eq!(
        svid::check(b"\x30\x03junk", &domains()),
        Err(SvidError::Malformed)
    );
}

fn verify(ca: &std::sync::Arc<ClientCa>, der: &[u8]) -> Result<(), rustls::Error> {
    ca.verifier()
        .verify_client_cert(&CertificateDer::from(der), &[], UnixTime::now())
        .map(|_| ())
}

#[test]
fn bundle_rotation_swaps_roots_and_a_bad_bundle_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.pem");
    let (old, new) = (ca(), ca());
    std::fs::write(&path, &old.pem).unwrap();
    let store = ClientCa::load(&path, domains()).unwrap();
    let (from_old, from_new) = (leaf(&old, |_| {}), leaf(&new, |_| {}));
    verify(&store, &from_old).unwrap();
    verify(&store, &from_new).unwrap_err();
    assert_eq!(store.reload().unwrap(), Reloaded::Unchanged);

    for bad in [
        "",
        "not pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ] {
        std::fs::write(&path, bad).unwrap();
        store.reload().unwrap_err();
        verify(&store, &from_old).unwrap();
    }
    std::fs::remove_file(&path).unwrap();
    store.reload().unwrap_err();
    verify(&store, &from_old).unwrap();

    std::fs::write(&path, &new.pem).unwrap();
    assert_eq!(store.reload().unwrap(), Reloaded::Replaced(1));
    verify(&store, &from_new).unwrap();
    verify(&store, &from_old).unwrap_err();
}

#[test]
fn verifier_refuses_expired_svids_and_applies_the_svid_rules() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.pem");
    let ca1 = ca();
    std::fs::write(&path, &ca1.pem).unwrap();
    let store = ClientCa::load(&path, domains()).unwrap();
    let expired = leaf(&ca1, |p| {
        p.not_before = OffsetDateTime::now_utc() - Duration::days(2);
        p.not_after = OffsetDateTime::now_utc() - Duration::days(1);
    });
    verify(&store, &expired).unwrap_err();
    let two = leaf(&ca1, |p| {
        p.subject_alt_names
            .push(SanType::URI("spiffe://eu1.test/b".try_into().unwrap()));
    });
    verify(&store, &two).unwrap_err();
}
