"""The chart's RBAC as rendered, without a cluster (docs/rbac.md): the operator's rules in both
modes, Secrets only when asked and only where served, the leader Lease's own Role, the users'
edit/view ClusterRoles, and a reason written next to every rule. tests/cluster/test_rbac.py proves
the same against the API server's authorizer and by running the operator with it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from hack.localcluster import CACHE

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "necrocode-cancel"

OPERATOR = "rel-necrocode-cancel"
FORBIDDEN_VERBS = {"*", "impersonate", "escalate", "bind", "deletecollection", "vouch"}


def render(*sets: str, show: tuple[str, ...] = ()) -> tuple[str, list[dict[str, Any]]]:
    helm = CACHE / "bin" / "helm"
    if not helm.exists():
        pytest.skip("helm not built (make tools)")
    args = [str(helm), "template", "rel", str(CHART), "--namespace", "ops", "--kube-version", "1.36.3"]
    for s in sets:
        args += ["--set", s]
    for template in show:
        args += ["--show-only", f"templates/{template}"]
    out = subprocess.run(args, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout, [d for d in yaml.safe_load_all(out.stdout) if d]


def operator_roles(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Roles and ClusterRoles bound to the operator's ServiceAccount."""
    bound = {(d["roleRef"]["kind"], d["roleRef"]["name"], d["metadata"].get("namespace")) for d in docs
             if d["kind"] in ("RoleBinding", "ClusterRoleBinding")
             and any(s["kind"] == "ServiceAccount" and s["name"] == OPERATOR for s in d["subjects"])}
    return [d for d in docs if (d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) in bound]


def grants(role: dict[str, Any], resource: str, verb: str | None = None) -> bool:
    return any(resource in r["resources"] and (verb is None or verb in r["verbs"]) for r in role["rules"])


MODES = {"cluster-wide": [], "namespaced": ["watchNamespaces={team-a,team-b}"],
         "namespaced-with-release-ns": ["watchNamespaces={team-a,ops}"]}


@pytest.mark.parametrize("secrets", [False, True], ids=["no-secrets", "include-secrets"])
@pytest.mark.parametrize("mode", list(MODES))
def test_secrets_only_when_asked_and_only_where_served(mode: str, secrets: bool) -> None:
    _, docs = render(*MODES[mode], f"operator.includeSecrets={str(secrets).lower()}")
    with_secrets = [(d["kind"], d["metadata"].get("namespace")) for d in docs
                    if d["kind"] in ("Role", "ClusterRole") and grants(d, "secrets")]
    if not secrets:
        assert with_secrets == []
    elif mode == "cluster-wide":
        assert with_secrets == [("ClusterRole", None)]
    else:
        served = MODES[mode][0].split("{")[1].rstrip("}").split(",")
        assert sorted(with_secrets) == sorted(("Role", ns) for ns in served)
    for role in docs:
        for rule in role.get("rules") or []:
            if "secrets" in rule["resources"]:
                assert rule["verbs"] == ["list", "delete"]  # listed by label, deleted by name


@pytest.mark.parametrize("mode", list(MODES))
def test_operator_rules_are_the_least_that_works(mode: str) -> None:
    _, docs = render(*MODES[mode], "operator.includeSecrets=true")
    roles = operator_roles(docs)
    cluster_wide = [d for d in roles if d["kind"] == "ClusterRole"]
    if mode == "cluster-wide":
        [cr] = cluster_wide
        assert grants(cr, "customresourcedefinitions", "watch") and not grants(cr, "namespaces")
    else:  # a fixed list of namespaces: nothing cluster-wide at all
        assert cluster_wide == []
        assert {d["metadata"]["namespace"] for d in roles if d["metadata"]["name"] == OPERATOR} == \
            set(MODES[mode][0].split("{")[1].rstrip("}").split(","))
    for role in roles:
        for rule in role["rules"]:
            assert not FORBIDDEN_VERBS & set(rule["verbs"]), rule
            assert "*" not in rule["resources"] and "*" not in rule["apiGroups"], rule
            assert not {"pods/exec", "pods/attach", "pods/portforward", "pods/eviction", "nodes",
                        "serviceaccounts/token"} & set(rule["resources"]), rule
            if "create" in rule["verbs"]:  # creates only Events, reviews, the leader Lease and kept logs
                assert set(rule["resources"]) <= {"events", "localsubjectaccessreviews", "leases", "configmaps"}, rule
            if "pods/log" in rule["resources"]:  # kept logs: read, nothing else on a pod's subresources
                assert rule["verbs"] == ["get"], rule
                assert "leases" not in rule["resources"] or role["metadata"]["name"] == f"{OPERATOR}-leader"
    # leases are created only in the release namespace (the leader Lease); renewed only by name
    [leader] = [d for d in roles if d["metadata"]["name"] == f"{OPERATOR}-leader"]
    assert leader["kind"] == "Role" and leader["metadata"]["namespace"] == "ops"
    assert sorted((tuple(r["verbs"]), tuple(r.get("resourceNames") or ())) for r in leader["rules"]) == [
        (("create",), ()), (("get", "update"), (f"{OPERATOR}-leader",))]
    served = [d for d in roles if d["metadata"]["name"] == OPERATOR]
    assert all(not grants(d, "leases", "create") and not grants(d, "leases", "patch") for d in served)


def test_no_leader_role_without_leader_election() -> None:
    _, docs = render("leaderElection.enabled=false")
    assert not [d for d in docs if d["metadata"]["name"] == f"{OPERATOR}-leader"]


def test_every_operator_rule_says_why() -> None:
    text, _ = render("operator.includeSecrets=true", show=("rbac.yaml",))
    lines = text.splitlines()
    rules = [i for i, ln in enumerate(lines) if ln.startswith("- apiGroups:")]
    assert len(rules) >= 12
    assert [lines[i] for i in rules if not lines[i - 1].startswith("#")] == []  # a comment right above each
    # and docs/rbac.md covers each resource the operator is granted
    doc = (REPO / "docs" / "rbac.md").read_text()
    _, docs = render("operator.includeSecrets=true")
    for role in operator_roles(docs):
        for rule in role["rules"]:
            for resource in rule["resources"]:
                assert f"`{resource}`" in doc, resource


def test_user_roles_are_the_static_ones_aggregated_and_can_be_left_out() -> None:
    _, docs = render()
    ours = {d["metadata"]["name"]: d for d in docs if d["metadata"]["name"].startswith("necrocode-cancel-")}
    static = {d["metadata"]["name"]: d for d in yaml.safe_load_all((REPO / "deploy" / "user-roles.yaml").read_text())}
    assert set(ours) == set(static) == {"necrocode-cancel-edit", "necrocode-cancel-view"}
    for name, role in ours.items():
        assert role["rules"] == static[name]["rules"]
        assert static[name]["metadata"]["labels"].items() <= role["metadata"]["labels"].items()
        assert role["metadata"]["labels"]["app.kubernetes.io/instance"] == "rel"
        assert not [r for r in role["rules"] if {"vouch", "update", "*"} & set(r["verbs"])]
        assert not [r for r in role["rules"] if any("/" in res for res in r["resources"])]  # no status
    edit, view = ours["necrocode-cancel-edit"], ours["necrocode-cancel-view"]
    # patch only on the cancellations, in edit: the CRD lets it change spec.force to true, nothing else
    assert [sorted(r["resources"]) for r in edit["rules"] if "patch" in r["verbs"]] == [
        ["jobcancellations", "taskcancellations"]]
    assert {k for k, v in edit["metadata"]["labels"].items() if k.startswith("rbac.") and v == "true"} == {
        "rbac.authorization.k8s.io/aggregate-to-edit", "rbac.authorization.k8s.io/aggregate-to-admin"}
    assert {k for k, v in view["metadata"]["labels"].items() if k.startswith("rbac.")} == {
        "rbac.authorization.k8s.io/aggregate-to-view"}
    assert all(set(r["verbs"]) == {"get", "list", "watch"} for r in view["rules"])
    for sets in (["rbac.userRoles=false"], ["rbac.create=false"]):
        _, docs = render(*sets)
        assert not [d for d in docs if d["metadata"]["name"].startswith("necrocode-cancel-")], sets
