"""The chart's API Priority and Fairness objects on the real API server (flowControl.enabled):
the FlowSchema and PriorityLevelConfiguration the chart renders, applied as rendered, make the
API server classify every request of the operator's ServiceAccount into the chart's priority
level, and the leader Lease's into the built-in leader-election level; another ServiceAccount
of the same namespace stays where it was. What the API server decided is in every answer's
X-Kubernetes-PF-FlowSchema-UID and X-Kubernetes-PF-PriorityLevel-UID headers."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support.kube import ClusterInfo, Kubectl, sa_kubeconfig, wait_for

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "necrocode-cancel"


def rendered(cluster: ClusterInfo, ns: str) -> list[dict]:
    """The chart's flow-control objects for release "rel" in `ns` (nothing else of the chart)."""
    from hack.localcluster import CACHE

    helm = (cluster.bins or CACHE / "bin") / "helm"
    if not helm.exists():
        pytest.skip("helm not built (make tools)")
    out = subprocess.run([str(helm), "template", "rel", str(CHART), "--namespace", ns, "--kube-version", "1.36.3",
                          "--set", "flowControl.enabled=true", "--show-only", "templates/flowcontrol.yaml"],
                         check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def classified(probe: Kubectl, ns: str, lease: bool = False) -> tuple[str, str]:
    """(FlowSchema uid, PriorityLevelConfiguration uid) the API server gave one request of the
    probe's identity: a list of ConfigMaps, or a read of the leader Lease. An answer refused by
    RBAC or not found carries them too: APF classifies before authorization."""
    try:
        if lease:
            _, _, headers = probe.coord.read_namespaced_lease_with_http_info("rel-necrocode-cancel-leader", ns)
        else:
            _, _, headers = probe.core.list_namespaced_config_map_with_http_info(ns, limit=1)
    except ApiException as exc:
        headers = exc.headers or {}
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    return (str(headers.get("x-kubernetes-pf-flowschema-uid", "")),
            str(headers.get("x-kubernetes-pf-prioritylevel-uid", "")))


@pytest.fixture
def flow_control(kube: Kubectl, cluster: ClusterInfo, solo_namespace: str) -> Iterator[dict[str, dict]]:
    """The rendered objects created on the API server (cluster-scoped: deleted afterwards),
    by kind and name, as the API server returned them (with their uids)."""
    fc = client.FlowcontrolApiserverV1Api(kube.api)
    docs = rendered(cluster, solo_namespace)
    created: dict[str, dict] = {}
    try:
        for doc in sorted(docs, key=lambda d: d["kind"] != "PriorityLevelConfiguration"):  # levels first
            create = (fc.create_priority_level_configuration if doc["kind"] == "PriorityLevelConfiguration"
                      else fc.create_flow_schema)
            created[f"{doc['kind']}/{doc['metadata']['name']}"] = kube.api.sanitize_for_serialization(create(doc))
        yield created
    finally:
        for key in created:
            kind, name = key.split("/")
            delete = fc.delete_flow_schema if kind == "FlowSchema" else fc.delete_priority_level_configuration
            try:
                delete(name)
            except ApiException:
                pass


def test_the_chart_puts_the_operators_requests_in_its_own_priority_level(
        kube: Kubectl, cluster: ClusterInfo, solo_namespace: str, flow_control: dict[str, dict], tmp_path: Path) -> None:
    ns = solo_namespace
    name = f"rel-necrocode-cancel-{ns}"
    schema, level = flow_control[f"FlowSchema/{name}"], flow_control[f"PriorityLevelConfiguration/{name}"]
    leases = flow_control[f"FlowSchema/{name}-leader-election"]
    # the chart's ServiceAccount, as the chart names it in its release namespace, and a neighbour
    sa = schema["spec"]["rules"][0]["subjects"][0]["serviceAccount"]
    assert sa == {"name": "rel-necrocode-cancel", "namespace": ns}
    for account in (sa["name"], "neighbour"):
        kube.core.create_namespaced_service_account(ns, {"metadata": {"name": account}})
    operator = Kubectl(sa_kubeconfig(kube, cluster.kubeconfig, tmp_path / "operator.kubeconfig", ns, sa["name"]))
    neighbour = Kubectl(sa_kubeconfig(kube, cluster.kubeconfig, tmp_path / "neighbour.kubeconfig", ns, "neighbour"))
    try:
        ours = (schema["metadata"]["uid"], level["metadata"]["uid"])
        # the API server's APF configuration controller picks new objects up within a moment
        wait_for(lambda: classified(operator, ns) == ours, timeout=30, interval=0.2,
                 what="the operator's requests classified into the chart's FlowSchema and priority level")
        built_in_leader_level = client.FlowcontrolApiserverV1Api(kube.api).read_priority_level_configuration(
            "leader-election").metadata.uid
        assert classified(operator, ns, lease=True) == (leases["metadata"]["uid"], built_in_leader_level)
        other_schema, other_level = classified(neighbour, ns)
        assert other_schema and other_schema != schema["metadata"]["uid"]
        assert other_level and other_level != level["metadata"]["uid"]
    finally:
        operator.api.close()
        neighbour.api.close()
