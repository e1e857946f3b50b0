"""The chart and the image, checked without a cluster: helm lint and template, the chart's
copies of CRDs/policy/rules/dashboard equal to their single sources, hadolint, the lock."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "necrocode-cancel"
sys.path.insert(0, str(REPO / "hack"))
from localcluster import CACHE  # noqa: E402

COPIES = {  # chart file -> its single source
    **{CHART / "crds" / p.name: p for p in (REPO / "crds").glob("*.yaml")},
    CHART / "files" / "admission-policy.yaml": REPO / "deploy" / "admission-policy.yaml",
    CHART / "files" / "requester-policy.yaml": REPO / "deploy" / "requester-policy.yaml",
    CHART / "files" / "user-roles.yaml": REPO / "deploy" / "user-roles.yaml",
    CHART / "files" / "necrocode-alerts.yaml": REPO / "deploy" / "prometheus" / "necrocode-alerts.yaml",
    CHART / "files" / "necrocode-dashboard.json": REPO / "deploy" / "grafana" / "necrocode-dashboard.json",
}


def helm() -> str:
    path = CACHE / "bin" / "helm"
    if not path.exists():
        pytest.skip("helm not built (make tools)")
    return str(path)


def template(*sets: str) -> list[dict]:
    args = [helm(), "template", "rel", str(CHART), "--namespace", "ops", "--kube-version", "1.36.3"]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_chart_copies_equal_their_single_source() -> None:
    assert len([p for p in COPIES if p.parent.name == "crds"]) == 4
    stale = [str(c.relative_to(REPO)) for c, src in COPIES.items() if not c.exists() or c.read_bytes() != src.read_bytes()]
    assert not stale, f"out of date (run `make chart-sync`): {stale}"
    extra = {p.name for p in (CHART / "crds").iterdir()} - {p.name for p in (REPO / "crds").iterdir()}
    assert not extra


def test_helm_lint_passes() -> None:
    out = subprocess.run([helm(), "lint", str(CHART), "--strict"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_default_render_is_cluster_wide_hardened_and_single_replica() -> None:
    docs = template()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ClusterRole", "ClusterRole", "ClusterRole", "ClusterRole", "ClusterRoleBinding",
                     "ClusterRoleBinding", "ClusterRoleBinding", "Deployment", "Deployment", "Role", "RoleBinding",
                     "Service", "Service", "ServiceAccount", "ServiceAccount", "ValidatingAdmissionPolicy",
                     "ValidatingAdmissionPolicyBinding"]
    [dep] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "rel-necrocode-cancel"]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["resources"]["limits"]["memory"]
    rules = [r for d in docs if d["kind"] == "ClusterRole" for r in d["rules"]]
    resources = {res for r in rules for res in r["resources"]}
    # the API server's identity: only the auth delegator role and read/create on the contract
    api_bindings = {d["roleRef"]["name"] for d in docs if d["kind"] == "ClusterRoleBinding"
                    and d["subjects"][0]["name"] == "rel-necrocode-cancel-api"}
    assert api_bindings == {"system:auth-delegator", "rel-necrocode-cancel-api"}
    assert "secrets" not in resources and "pods/exec" not in resources
    assert not any("impersonate" in r["verbs"] or "*" in r["verbs"] or "*" in r["resources"] for r in rules)


def test_ha_render_has_two_replicas_leader_election_and_a_pdb() -> None:
    docs = template("replicaCount=2", "metrics.prometheusRule.enabled=true", "dashboard.enabled=true",
                    "metrics.serviceMonitor.enabled=true")
    [dep] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "rel-necrocode-cancel"]
    assert dep["spec"]["replicas"] == 2
    assert "--leader-elect" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    [pdb] = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"]["minAvailable"] == 1
    [rule] = [d for d in docs if d["kind"] == "PrometheusRule"]
    source = yaml.safe_load((REPO / "deploy" / "prometheus" / "necrocode-alerts.yaml").read_text())
    assert rule["spec"]["groups"] == source["groups"]
    [cm] = [d for d in docs if d["kind"] == "ConfigMap"]
    dashboard = (REPO / "deploy" / "grafana" / "necrocode-dashboard.json").read_text()
    assert cm["data"]["necrocode-dashboard.json"].strip() == dashboard.strip()


def test_namespaced_render_uses_roles_only_in_the_listed_namespaces() -> None:
    docs = template("watchNamespaces={team-a,team-b}")
    roles = {(d["kind"], d["metadata"].get("namespace")) for d in docs if d["kind"] in ("Role", "RoleBinding")}
    assert roles == {("Role", "team-a"), ("Role", "team-b"), ("RoleBinding", "team-a"), ("RoleBinding", "team-b"),
                     ("Role", "ops"), ("RoleBinding", "ops")}
    # nothing cluster-wide for the operator (docs/rbac.md: kopf needs no namespaces or CRDs then)
    assert not [d for d in docs if d["kind"] == "ClusterRoleBinding"
                and any(s["name"] == "rel-necrocode-cancel" for s in d["subjects"])]
    assert not any(d["kind"] == "ClusterRoleBinding" and d["metadata"]["name"] == "rel-necrocode-cancel-api" for d in docs)
    [dep] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "rel-necrocode-cancel"]
    assert dep["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["--namespace=team-a", "--namespace=team-b"]


def _api(docs: list[dict]) -> tuple[dict, dict, dict]:
    """The API's container, pod spec and Service."""
    [dep] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "rel-necrocode-cancel-api"]
    [svc] = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "rel-necrocode-cancel-api"]
    pod = dep["spec"]["template"]["spec"]
    return pod["containers"][0], pod, svc


def test_api_render_plain_http_with_a_body_limit_and_vouch() -> None:
    docs = template()
    c, pod, svc = _api(docs)
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["NECROCODE_API_MAX_BODY_BYTES"] == "65536"
    assert "NECROCODE_API_AUDIENCES" not in env and "NECROCODE_API_TLS_CERT_FILE" not in env
    assert c["livenessProbe"]["httpGet"]["scheme"] == c["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
    assert [v["name"] for v in pod["volumes"]] == ["tmp"]
    assert svc["spec"]["ports"][0]["appProtocol"] == "http"
    # the API creates on its callers' behalf: the requester policy keeps what it records only with `vouch`
    [role] = [d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "rel-necrocode-cancel-api"]
    [rule] = [r for r in role["rules"] if "jobcancellations" in r["resources"]]
    assert set(rule["resources"]) == {"jobcancellations", "taskcancellations"}
    assert set(rule["verbs"]) == {"get", "list", "create", "vouch"}


def test_api_render_with_tls_audiences_and_a_smaller_limit() -> None:
    docs = template("api.tls.secretName=api-tls", "api.audiences={necrocode-api,console}", "api.maxBodyBytes=4096")
    c, pod, svc = _api(docs)
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["NECROCODE_API_MAX_BODY_BYTES"] == "4096"
    assert env["NECROCODE_API_AUDIENCES"] == "necrocode-api,console"
    assert (env["NECROCODE_API_TLS_CERT_FILE"], env["NECROCODE_API_TLS_KEY_FILE"]) == (
        "/etc/necrocode/tls/tls.crt", "/etc/necrocode/tls/tls.key")
    [mount] = [m for m in c["volumeMounts"] if m["name"] == "tls"]
    assert mount == {"name": "tls", "mountPath": "/etc/necrocode/tls", "readOnly": True}
    [vol] = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert vol["secret"] == {"secretName": "api-tls", "defaultMode": 0o440}
    assert pod["securityContext"]["fsGroup"] == 10001  # what makes the 0440 key readable to the server
    assert c["livenessProbe"]["httpGet"]["scheme"] == c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert svc["spec"]["ports"][0]["appProtocol"] == "https"
    # a multi-replica API is rendered the same way (each pod mounts the Secret)
    assert _api(template("api.tls.secretName=api-tls", "api.replicaCount=3"))[1]["volumes"][-1] == vol


def test_api_values_are_checked_by_the_schema() -> None:
    for bad in ("api.maxBodyBytes=0", "api.audiences={a\\,b}", "api.tls.secretName=Not_A_Name", "api.tls.bogus=1"):
        out = subprocess.run([helm(), "template", "rel", str(CHART), "--kube-version", "1.36.0", "--set", bad],
                             capture_output=True, text=True)
        assert out.returncode != 0, bad
        assert "api" in out.stderr, (bad, out.stderr)


def test_values_schema_refuses_bad_values() -> None:
    out = subprocess.run([helm(), "template", "rel", str(CHART), "--kube-version", "1.36.3", "--set", "replicaCount=0",
                          "--set", "operator.logFormat=xml"], capture_output=True, text=True)
    assert out.returncode != 0
    assert "replicaCount" in out.stderr and "logFormat" in out.stderr


def test_dockerfile_is_clean_under_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    out = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    text = (REPO / "Dockerfile").read_text()
    assert text.count("FROM python:3.11.7-slim-bookworm") == 2  # multi-stage, pinned base
    assert "requirements.lock" in text and "USER 10001" in text


def test_lock_pins_every_runtime_dependency() -> None:
    lock = {line.split("==")[0] for line in (REPO / "requirements.lock").read_text().splitlines()
            if line and not line.startswith("#")}
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {d.split("==")[0].lower() for d in deps} <= lock
    assert all("==" in line for line in (REPO / "requirements.lock").read_text().splitlines()
               if line and not line.startswith("#"))
