"""necrocode.uninstall (`necrocode-operator --release-finalizers`, the chart's pre-delete hook)
against an in-memory API: only the operator's finalizer comes off, only in the served namespaces,
a record changed meanwhile is read again, and the operator's Deployment is stopped first.
tests/cluster/test_chart.py runs it for real, inside `helm uninstall`."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from necrocode import uninstall
from necrocode.kube import Conflict, Credentials, Kube, NotFound
from necrocode.model import FINALIZER

Obj = dict[str, Any]
BASE = "/apis/necrocode.io/v1alpha1"


class FakeApi(Kube):
    """The requests uninstall makes, answered from `objects` (path -> object)."""

    def __init__(self, objects: dict[str, Obj], pods: list[list[str]] | None = None,
                 deployment: bool = True) -> None:
        super().__init__(Credentials(host="https://127.0.0.1:1", ssl=False, configuration=None),  # type: ignore[arg-type]
                         sleep=self._no_sleep)
        self.objects, self.pods, self.deployment = objects, pods or [], deployment
        self.log: list[tuple[str, str]] = []
        self.before_patch: dict[str, Obj] = {}  # a change made by someone else just before our PATCH

    @staticmethod
    async def _no_sleep(_: float) -> None:
        return None

    async def request(self, method: str, path: str, *, params: Any = None, body: Any = None, **_: Any) -> Obj:
        self.log.append((method, path))
        if path.endswith("/scale"):
            if not self.deployment:
                raise NotFound(404, "NotFound", path)
            assert method == "PATCH" and body == {"spec": {"replicas": 0}}
            return {"spec": {"replicas": 0}, "status": {"selector": "app=op"}}
        if "/pods" in path:
            assert (params or {}).get("labelSelector") == "app=op"
            names = self.pods.pop(0) if self.pods else []
            return {"items": [{"metadata": {"name": n}} for n in names], "metadata": {}}
        if method == "GET" and path in self.objects:
            return copy.deepcopy(self.objects[path])
        if method == "GET":  # a list: of one namespace, or of all (the plural right after the group)
            if "/namespaces/" in path:
                return {"items": [copy.deepcopy(o) for p, o in sorted(self.objects.items()) if p.startswith(path + "/")],
                        "metadata": {}}
            plural = path.rsplit("/", 1)[1]
            return {"items": [copy.deepcopy(o) for p, o in sorted(self.objects.items()) if p.split("/")[-2] == plural],
                    "metadata": {}}
        assert method == "PATCH", (method, path)
        if path in self.before_patch:
            self.objects[path]["metadata"].update(self.before_patch.pop(path))
            self._bump(path)
        meta = self.objects[path]["metadata"]
        if body["metadata"]["resourceVersion"] != meta["resourceVersion"]:
            raise Conflict(409, "Conflict", "the object has been modified")
        meta["finalizers"] = body["metadata"]["finalizers"]
        self._bump(path)
        return copy.deepcopy(self.objects[path])

    def _bump(self, path: str) -> None:
        meta = self.objects[path]["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)


def record(ns: str, plural: str, name: str, *finalizers: str) -> tuple[str, Obj]:
    path = f"{BASE}/namespaces/{ns}/{plural}/{name}"
    return path, {"metadata": {"name": name, "namespace": ns, "resourceVersion": "1", "finalizers": list(finalizers)}}


def world() -> dict[str, Obj]:
    return dict([record("a", "jobcancellations", "j1", FINALIZER, "other.io/keep"),
                 record("a", "jobcancellations", "j2"),
                 record("a", "taskcancellations", "t1", FINALIZER),
                 record("ab", "jobcancellations", "j3", FINALIZER),
                 record("b", "jobcancellations", "j4", FINALIZER)])


def fins(api: FakeApi, ns: str, plural: str, name: str) -> list[str]:
    return list(api.objects[f"{BASE}/namespaces/{ns}/{plural}/{name}"]["metadata"]["finalizers"])


def test_only_the_operators_finalizer_comes_off_and_only_where_it_serves() -> None:
    api = FakeApi(world())
    assert asyncio.run(uninstall.release_finalizers(api, ["a"])) == (2, 0)
    assert fins(api, "a", "jobcancellations", "j1") == ["other.io/keep"]
    assert fins(api, "a", "taskcancellations", "t1") == []
    assert fins(api, "b", "jobcancellations", "j4") == [FINALIZER]  # not served
    assert fins(api, "ab", "jobcancellations", "j3") == [FINALIZER]
    assert ("PATCH", f"{BASE}/namespaces/a/jobcancellations/j2") not in api.log  # had none: not written
    # patterns, like --namespace: listed cluster-wide, kept to the matching namespaces
    api = FakeApi(world())
    assert asyncio.run(uninstall.release_finalizers(api, ["a*"])) == (3, 0)
    assert fins(api, "ab", "jobcancellations", "j3") == [] and fins(api, "b", "jobcancellations", "j4") == [FINALIZER]
    # none named: every namespace
    api = FakeApi(world())
    assert asyncio.run(uninstall.release_finalizers(api, [])) == (4, 0)


def test_a_record_changed_meanwhile_is_read_again_and_keeps_the_new_finalizer() -> None:
    api = FakeApi(world())
    path = f"{BASE}/namespaces/a/jobcancellations/j1"
    api.before_patch[path] = {"finalizers": [FINALIZER, "other.io/keep", "late.io/added"]}
    assert asyncio.run(uninstall.release_finalizers(api, ["a"])) == (2, 0)
    assert fins(api, "a", "jobcancellations", "j1") == ["other.io/keep", "late.io/added"]
    assert api.log.count(("GET", path)) == 1  # the conflict's re-read


def test_the_operator_is_stopped_before_anything_is_released() -> None:
    api = FakeApi(world(), pods=[["op-1"], []])
    assert asyncio.run(uninstall.run(api, ["a"], "ops/rel-necrocode-cancel", wait_seconds=5)) == 0
    first_patch = next(i for i, (m, p) in enumerate(api.log) if m == "PATCH" and "/namespaces/a/" in p)
    pod_lists = [i for i, (_, p) in enumerate(api.log) if "/pods" in p]
    assert api.log[0] == ("PATCH", "/apis/apps/v1/namespaces/ops/deployments/rel-necrocode-cancel/scale")
    assert len(pod_lists) == 2 and pod_lists[-1] < first_patch  # waited until no pod was left
    # no Deployment (already gone, or never there): nothing to wait for
    api = FakeApi(world(), deployment=False)
    assert asyncio.run(uninstall.run(api, ["a"], "ops/rel-necrocode-cancel")) == 0
    assert not [p for _, p in api.log if "/pods" in p]
