"""Conditions by the Kubernetes API conventions (issue 16), read by the real kubectl: `Succeeded`
is True only for a Completed cancellation and False, with the phase as its reason, for one that
ended otherwise (here Rejected), so `kubectl wait --for=condition=Succeeded` and
`--for=condition=Succeeded=false` tell the two apart on both kinds; `Complete` says only that it
ended; `Running` is False once ended; each condition carries observedGeneration and
lastTransitionTime. `kubectl get -o wide` shows the MESSAGE and COMPLETED columns."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest

from tests.support.kube import ClusterInfo, Kubectl, kubectl

pytestmark = pytest.mark.usefixtures("operator")

KINDS = ("jobcancellations", "taskcancellations")


def cancel(kube: Kubectl, plural: str, ns: str, name: str, job: str, **spec: Any) -> None:
    if plural == "jobcancellations":
        kube.cancel_job(ns, name, job, **spec)
    else:
        kube.cancel_task(ns, name, job, "a", **spec)


def wait(cluster: ClusterInfo, ns: str, what: str, condition: str, timeout: str = "60s") -> subprocess.CompletedProcess[str]:
    return kubectl(cluster, "wait", "-n", ns, f"--for=condition={condition}", what, f"--timeout={timeout}", timeout=90)


@pytest.mark.parametrize("plural", KINDS)
def test_kubectl_wait_tells_success_from_the_other_ends(kube: Kubectl, cluster: ClusterInfo, namespace: str,
                                                         plural: str) -> None:
    ns = namespace
    kube.create_job(ns, "j1")
    kube.create_runner(ns, "j1", "a", grace=1)
    kube.create_task(ns, "j1", "a", "Running", runner="j1-a-runner")
    cancel(kube, plural, ns, "good", "j1", gracePeriodSeconds=1)
    cancel(kube, plural, ns, "bad", "no-such-job")  # Rejected: nothing was cancelled

    ok = wait(cluster, ns, f"{plural}/good", "Succeeded")
    assert ok.returncode == 0 and "condition met" in ok.stdout, ok.stdout + ok.stderr
    failed = wait(cluster, ns, f"{plural}/bad", "Succeeded=false")
    assert failed.returncode == 0 and "condition met" in failed.stdout, failed.stdout + failed.stderr
    # both have ended, so one look (timeout 0) is the answer: each is met for one of them only
    for name, condition in (("bad", "Succeeded"), ("good", "Succeeded=false")):
        out = wait(cluster, ns, f"{plural}/{name}", condition, timeout="0s")
        assert out.returncode != 0 and "condition met" not in out.stdout, (name, condition, out.stdout)
    for name in ("good", "bad"):  # Complete: only "it ended"
        out = wait(cluster, ns, f"{plural}/{name}", "Complete", timeout="0s")
        assert out.returncode == 0, out.stdout + out.stderr

    for name, phase, succeeded in (("good", "Completed", "True"), ("bad", "Rejected", "False")):
        obj = kube.get(plural, ns, name)
        st = obj["status"]
        assert st["phase"] == phase, st
        conds = {c["type"]: c for c in st["conditions"]}
        assert (conds["Succeeded"]["status"], conds["Succeeded"]["reason"]) == (succeeded, phase), conds
        assert (conds["Complete"]["status"], conds["Running"]["status"]) == ("True", "False"), conds
        assert conds["Succeeded"]["message"] == st["message"]
        generation = obj["metadata"]["generation"]
        assert st["observedGeneration"] == generation
        for c in conds.values():
            assert c["observedGeneration"] == generation and c["lastTransitionTime"], c
    assert {c["type"]: c["reason"] for c in kube.get(plural, ns, "bad")["status"]["conditions"]}["Rejected"] \
        == "JobNotFound"


@pytest.mark.parametrize("plural", KINDS)
def test_get_wide_shows_the_message_and_when_it_completed(kube: Kubectl, cluster: ClusterInfo, namespace: str,
                                                          plural: str) -> None:
    ns = namespace
    cancel(kube, plural, ns, "bad", "no-such-job", reason="typo")
    kube.wait_phase(plural, ns, "bad")
    out = kubectl(cluster, "get", plural, "-n", ns, "-o", "wide")
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()[:2]
    names = header.split()
    assert names[-4:] == ["REASON", "MESSAGE", "COMPLETED", "AGE"] and "REQUESTER" in names, header
    message = kube.get(plural, ns, "bad")["status"]["message"]
    assert "not found" in message and message in row, row
    completed, age = row.split()[-2:]
    assert re.fullmatch(r"(\d+[smhd])+", completed) and re.fullmatch(r"(\d+[smhd])+", age), row  # ages: "3s"
    narrow = kubectl(cluster, "get", plural, "-n", ns).stdout.splitlines()[0].split()
    assert "MESSAGE" not in narrow and "COMPLETED" not in narrow, narrow
