"""The Kubernetes base validates against the Kubernetes OpenAPI schemas (kubernetes-validate,
offline, strict: unknown fields are errors) and keeps its security properties: non-root,
read-only root fs, no capabilities, seccomp RuntimeDefault, no API token, zero egress but the
HSM, PostgreSQL and DNS. Run: python -m pytest -q deploy/kubernetes/tests
"""

import copy
import pathlib
import tomllib

import kubernetes_validate
import pytest
import yaml

BASE = pathlib.Path(__file__).resolve().parent.parent
K8S_VERSION = "1.31"
ALLOWED_EGRESS_PORTS = {1792, 5432, 53}


def kustomization():
    return yaml.safe_load((BASE / "kustomization.yaml").read_text())


def resources():
    out = []
    for name in kustomization()["resources"]:
        out.extend(d for d in yaml.safe_load_all((BASE / name).read_text()) if d)
    return out


def by_kind(kind):
    found = [r for r in resources() if r["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def validate(doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    "doc",
    resources() + [yaml.safe_load((BASE / "examples/training-job.yaml").read_text())],
    ids=lambda d: f"{d['kind']}/{d['metadata']['name']}",
)
def test_manifest_matches_the_kubernetes_schema(doc):
    validate(doc)


def test_the_validator_rejects_a_wrong_manifest():
    bad = copy.deepcopy(by_kind("Deployment"))
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsRoot"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad)


def test_every_file_kustomize_names_exists():
    k = kustomization()
    for name in k["resources"]:
        assert (BASE / name).is_file(), name
    for gen in k.get("configMapGenerator", []):
        for f in gen["files"]:
            assert (BASE / f).is_file(), f


def test_the_broker_pod_is_locked_down():
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert "add" not in sc["capabilities"]
    assert by_kind("ServiceAccount")["automountServiceAccountToken"] is False


def test_egress_is_limited_to_hsm_postgres_and_dns():
    policy = by_kind("NetworkPolicy")["spec"]
    assert "Egress" in policy["policyTypes"]
    assert policy["egress"], "an empty egress list with Egress set denies all; we need DNS"
    for rule in policy["egress"]:
        # A rule without `to` or without `ports` would open egress to everything.
        assert rule.get("to"), rule
        assert rule.get("ports"), rule
        assert {p["port"] for p in rule["ports"]} <= ALLOWED_EGRESS_PORTS, rule


def test_callers_request_the_audience_the_broker_accepts():
    config = tomllib.loads((BASE / "config/broker.toml").read_text())
    audiences = {a for i in config["identity"]["jwt_issuers"] for a in i["audiences"]}
    job = yaml.safe_load((BASE / "examples/training-job.yaml").read_text())
    sources = [
        s["serviceAccountToken"]
        for v in job["spec"]["template"]["spec"]["volumes"]
        if "projected" in v
        for s in v["projected"]["sources"]
        if "serviceAccountToken" in s
    ]
    assert sources and all(s["audience"] in audiences for s in sources)
    assert all(s["expirationSeconds"] <= 3600 for s in sources)


def test_probes_use_the_side_port():
    c = by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    config = tomllib.loads((BASE / "config/broker.toml").read_text())
    port = int(config["http"]["listen"].rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["ops"] == port
