"""The chart and the image, checked without a cluster: helm lint and template, the chart's
copies of CRDs/policy/rules/dashboard equal to their single sources, hadolint, the lock."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hack.localcluster import CACHE

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "necrocode-cancel"

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
                     "ClusterRoleBinding", "ClusterRoleBinding", "Deployment", "Deployment", "Job", "Role", "Role",
                     "RoleBinding", "RoleBinding", "Service", "Service", "ServiceAccount", "ServiceAccount",
                     "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    [dep] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "rel-necrocode-cancel"]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["startupProbe"]["httpGet"] == c["livenessProbe"]["httpGet"] and c["startupProbe"]["periodSeconds"] == 1
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
    # the rules file's, with this release's operator targets (the ServiceMonitor's job and namespace)
    text = (REPO / "deploy" / "prometheus" / "necrocode-alerts.yaml").read_text()
    source = yaml.safe_load(text.replace('job=~".*necrocode-cancel"', 'job="rel-necrocode-cancel",namespace="ops"'))
    assert rule["spec"]["groups"] == source["groups"]
    assert 'job=~".*necrocode-cancel"' in text
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
    assert c["startupProbe"]["httpGet"]["scheme"] == "HTTP"
    assert [v["name"] for v in pod["volumes"]] == ["tmp"]
    assert svc["spec"]["ports"][0]["appProtocol"] == "http"
    # the API creates on its callers' behalf: the requester policy keeps what it records only with `vouch`
    [role] = [d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "rel-necrocode-cancel-api"]
    [rule] = [r for r in role["rules"] if "jobcancellations" in r["resources"]]
    assert set(rule["resources"]) == {"jobcancellations", "taskcancellations"}
    assert set(rule["verbs"]) == {"get", "list", "create", "patch", "vouch"}  # patch: the escalate endpoint


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
    assert c["startupProbe"]["httpGet"]["scheme"] == "HTTPS"
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


def _rules(*sets: str) -> dict[str, dict]:
    [rule] = [d for d in template("metrics.prometheusRule.enabled=true", *sets) if d["kind"] == "PrometheusRule"]
    return {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}


def test_prometheus_rule_selects_its_release_and_links_the_runbooks_where_told() -> None:
    rules = _rules()
    assert rules["NecrocodeOperatorDown"]["expr"].strip() == 'absent(up{job="rel-necrocode-cancel",namespace="ops"} == 1)'
    assert 'max(necrocode_leader{job="rel-necrocode-cancel",namespace="ops"})' in rules["NecrocodeNoLeader"]["expr"]
    base = "https://github.com/necrocode/necrocode-cancel/blob/main/docs/runbooks.md"
    assert {a: r["annotations"]["runbook_url"] for a, r in rules.items()} == {a: f"{base}#{a.lower()}" for a in rules}
    # another scrape job, and the runbooks somewhere else
    rules = _rules("metrics.prometheusRule.selector=job=\"necrocode\"",
                   "metrics.prometheusRule.runbookBaseURL=https://wiki.example.com/necrocode/runbooks")
    assert rules["NecrocodeOperatorDown"]["expr"].strip() == 'absent(up{job="necrocode"} == 1)'
    assert rules["NecrocodeNoLeader"]["expr"].count('{job="necrocode"}') == 2
    assert {r["annotations"]["runbook_url"] for r in rules.values()} == {
        f"https://wiki.example.com/necrocode/runbooks#{a.lower()}" for a in rules}
    out = subprocess.run([helm(), "template", "rel", str(CHART), "--kube-version", "1.36.3",
                          "--set", "metrics.prometheusRule.runbookBaseURL=wiki/runbooks#x"], capture_output=True, text=True)
    assert out.returncode != 0 and "runbookBaseURL" in out.stderr


def _operator_env(docs: list[dict]) -> dict[str, str]:
    [dep] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "rel-necrocode-cancel"]
    return {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_default_ttl_of_finished_records_is_a_chart_value() -> None:
    assert _operator_env(template())["NECROCODE_DEFAULT_TTL_SECONDS"] == "604800"  # 7 days
    assert _operator_env(template("operator.defaultTTLSecondsAfterFinished=0"))["NECROCODE_DEFAULT_TTL_SECONDS"] == "0"
    assert _operator_env(template("operator.defaultTTLSecondsAfterFinished=null"))["NECROCODE_DEFAULT_TTL_SECONDS"] == ""
    for bad in ("operator.defaultTTLSecondsAfterFinished=-1", "operator.defaultTTLSecondsAfterFinished=1d"):
        out = subprocess.run([helm(), "template", "rel", str(CHART), "--kube-version", "1.36.3", "--set", bad],
                             capture_output=True, text=True)
        assert out.returncode != 0 and "defaultTTLSecondsAfterFinished" in out.stderr, (bad, out.stderr)


def test_uninstall_hook_stops_the_operator_with_its_identity_where_its_pods_run() -> None:
    sets = ("watchNamespaces={team-a,team-b}", "nodeSelector.pool=ops", "tolerations[0].operator=Exists",
            "hostAliases[0].ip=10.0.0.1", "hostAliases[0].hostnames={kubernetes.default.svc}",
            "apiServer.host=kubernetes.default.svc", "apiServer.port=6443", "image.tag=v9")
    docs = template(*sets)
    hooks = {d["kind"]: d for d in docs if "helm.sh/hook" in (d["metadata"].get("annotations") or {})}
    assert set(hooks) == {"Role", "RoleBinding", "Job"}
    assert {d["metadata"]["annotations"]["helm.sh/hook"] for d in hooks.values()} == {"pre-delete"}
    weights = {k: int(d["metadata"]["annotations"]["helm.sh/hook-weight"]) for k, d in hooks.items()}
    assert weights["Role"] < weights["RoleBinding"] < weights["Job"]  # its RBAC first
    # the hook's extra rights: scale that one Deployment, list pods in the release namespace; nothing else
    role = hooks["Role"]
    assert role["metadata"]["namespace"] == "ops"
    assert role["rules"] == [
        {"apiGroups": ["apps"], "resources": ["deployments/scale"], "resourceNames": ["rel-necrocode-cancel"],
         "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]
    assert hooks["RoleBinding"]["subjects"] == [{"kind": "ServiceAccount", "name": "rel-necrocode-cancel",
                                                "namespace": "ops"}]
    job = hooks["Job"]["spec"]["template"]["spec"]
    [dep] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "rel-necrocode-cancel"]
    operator = dep["spec"]["template"]["spec"]
    assert job["serviceAccountName"] == operator["serviceAccountName"] == "rel-necrocode-cancel"
    for key in ("nodeSelector", "tolerations", "hostAliases", "securityContext"):
        assert job[key] == operator[key], key  # it runs where, and as, the operator's pods do
    [c] = job["containers"]
    assert c["image"] == operator["containers"][0]["image"] == "ghcr.io/necrocode/necrocode-cancel:v9"
    assert c["args"] == ["--release-finalizers", "--deployment=ops/rel-necrocode-cancel", "--namespace=team-a",
                         "--namespace=team-b"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]) == ("kubernetes.default.svc", "6443")
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and job["restartPolicy"] == "Never"
    # the pods it waits for are the operator's, not its own
    assert hooks["Job"]["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "pre-delete"
    assert not [d for d in template("uninstallHook.enabled=false") if d["kind"] == "Job"]
    assert [d["kind"] for d in template("rbac.create=false") if "helm.sh/hook" in
            (d["metadata"].get("annotations") or {})] == ["Job"]


def test_global_values_are_accepted_alone_and_as_a_subchart(tmp_path: Path) -> None:
    """values.schema.json closes the top level: `global` (what a parent chart shares with its
    subcharts) must be let through, or the chart cannot be a dependency."""
    assert template("global.imageRegistry=registry.example.com", "global.foo.bar=1")
    parent = tmp_path / "platform"
    (parent / "charts").mkdir(parents=True)
    (parent / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": "platform", "version": "1.0.0",
        "dependencies": [{"name": "necrocode-cancel", "version": "*", "repository": f"file://{CHART}"}]}))
    (parent / "values.yaml").write_text(yaml.safe_dump({
        "global": {"imageRegistry": "registry.example.com", "storageClass": "fast"},
        "necrocode-cancel": {"replicaCount": 2}}))
    (parent / "templates").mkdir()
    out = subprocess.run([helm(), "dependency", "build", str(parent)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run([helm(), "lint", str(parent), "--strict"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run([helm(), "template", "p", str(parent), "--namespace", "ops", "--kube-version", "1.36.3"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    [dep] = [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "Deployment"
             and d["metadata"]["name"] == "p-necrocode-cancel"]
    assert dep["spec"]["replicas"] == 2
    # the schema still refuses what is wrong, under the parent too
    out = subprocess.run([helm(), "template", "p", str(parent), "--kube-version", "1.36.3",
                          "--set", "necrocode-cancel.replicaCount=0"], capture_output=True, text=True)
    assert out.returncode != 0 and "replicaCount" in out.stderr


def test_api_budget_is_rendered_into_the_operators_environment() -> None:
    """operator.apiBudget: the settings of docs/operations.md "The API budget", defaults as the
    operator's own (no rate limit, at most 50 in flight, fewer while the API server slows with
    more, nothing per cancellation)."""
    budget = ("NECROCODE_CONCURRENCY", "NECROCODE_API_QPS", "NECROCODE_API_BURST", "NECROCODE_CANCELLATION_QPS",
              "NECROCODE_CANCELLATION_CONCURRENCY", "NECROCODE_ADAPTIVE_CONCURRENCY")
    env = _operator_env(template())
    assert [env[k] for k in budget] == ["50", "0", "0", "0", "0", "true"]
    assert _operator_env(template("operator.apiBudget.adaptive=false"))["NECROCODE_ADAPTIVE_CONCURRENCY"] == "false"
    assert env["NECROCODE_ADAPTIVE_TOLERANCE_PERCENT"] == "25"
    assert _operator_env(template("operator.apiBudget.adaptiveTolerancePercent=50"))[
        "NECROCODE_ADAPTIVE_TOLERANCE_PERCENT"] == "50"
    env = _operator_env(template("operator.concurrency=20"))  # the older value still works...
    assert env["NECROCODE_CONCURRENCY"] == "20"
    env = _operator_env(template("operator.concurrency=20", "operator.apiBudget.concurrency=30",  # ...the budget's wins
                                 "operator.apiBudget.qps=100", "operator.apiBudget.burst=250",
                                 "operator.apiBudget.perCancellation.qps=15",
                                 "operator.apiBudget.perCancellation.concurrency=5"))
    assert [env[k] for k in budget] == ["30", "100", "250", "15", "5", "true"]


def test_api_budget_values_are_checked_by_the_schema() -> None:
    for bad in ("operator.apiBudget.qps=-1", "operator.apiBudget.burst=1.5", "operator.apiBudget.concurrency=0",
                "operator.apiBudget.perCancellation.concurrency=-1", "operator.apiBudget.perCancellation.qps=x",
                "operator.apiBudget.perCancellation.burst=3", "operator.apiBudget.adaptive=sometimes",
                "operator.apiBudget.adaptiveTolerancePercent=4", "operator.apiBudget.adaptiveTolerancePercent=0.5",
                "flowControl.lendablePercent=101",
                "flowControl.matchingPrecedence=10001", "flowControl.queuing.queues=0", "flowControl.bogus=1"):
        out = subprocess.run([helm(), "template", "rel", str(CHART), "--kube-version", "1.36.3", "--set", bad],
                             capture_output=True, text=True)
        assert out.returncode != 0, bad
        assert bad.split("=")[0].split(".")[-1] in out.stderr, (bad, out.stderr)


def _flow_control(docs: list[dict]) -> tuple[dict, dict[str, dict]]:
    [level] = [d for d in docs if d["kind"] == "PriorityLevelConfiguration"]
    return level, {d["metadata"]["name"]: d for d in docs if d["kind"] == "FlowSchema"}


def test_flow_control_is_off_by_default() -> None:
    assert not [d for d in template() if d["apiVersion"].startswith("flowcontrol.")]


def test_flow_control_puts_the_operators_service_account_in_a_level_of_its_own() -> None:
    """flowControl.enabled: every request of the operator's ServiceAccount (the chart's name for
    it, in the release namespace) is classified into the chart's priority level, except its leader
    Lease's renewals, which keep the built-in leader-election level ahead of it."""
    level, schemas = _flow_control(template("flowControl.enabled=true", "flowControl.nominalConcurrencyShares=12",
                                            "flowControl.lendablePercent=0", "flowControl.matchingPrecedence=800"))
    assert level["metadata"]["name"] == "rel-necrocode-cancel-ops"
    assert level["spec"] == {"type": "Limited", "limited": {
        "nominalConcurrencyShares": 12, "lendablePercent": 0,
        "limitResponse": {"type": "Queue", "queuing": {"queues": 16, "handSize": 4, "queueLengthLimit": 50}}}}
    main, leases = schemas["rel-necrocode-cancel-ops"], schemas["rel-necrocode-cancel-ops-leader-election"]
    sa = {"kind": "ServiceAccount", "serviceAccount": {"name": "rel-necrocode-cancel", "namespace": "ops"}}
    assert main["spec"]["priorityLevelConfiguration"] == {"name": "rel-necrocode-cancel-ops"}
    assert main["spec"]["matchingPrecedence"] == 800
    [rule] = main["spec"]["rules"]
    assert rule["subjects"] == [sa]
    assert rule["resourceRules"] == [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": True,
                                      "namespaces": ["*"]}]
    assert leases["spec"]["priorityLevelConfiguration"] == {"name": "leader-election"}
    assert leases["spec"]["matchingPrecedence"] == 799
    assert leases["spec"]["rules"][0]["subjects"] == [sa]
    assert leases["spec"]["rules"][0]["resourceRules"][0]["namespaces"] == ["ops"]
    # another ServiceAccount name, no leader election: one schema, for that account
    _, schemas = _flow_control(template("flowControl.enabled=true", "serviceAccount.name=cancel-bot",
                                        "leaderElection.enabled=false"))
    [only] = schemas.values()
    assert only["spec"]["rules"][0]["subjects"][0]["serviceAccount"] == {"name": "cancel-bot", "namespace": "ops"}
