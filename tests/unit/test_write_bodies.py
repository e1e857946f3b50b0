"""The bodies of the PUTs that release a Lease and change a task: what they keep and what they drop."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from necrocode.cleaner import _held_for, released
from necrocode.clock import ManualClock
from necrocode.logs import Bound
from necrocode.model import AffectedTask, Ref, Requester, TaskState
from necrocode.taskregistry import TaskRegistry


def lease() -> dict[str, Any]:
    return {"metadata": {"name": "slot-1", "resourceVersion": "42", "managedFields": [{"manager": "pool"}],
                         "labels": {"necrocode.io/repo-pool": "main", "necrocode.io/job": "j", "necrocode.io/task": "a",
                                    "team": "x"}},
            "spec": {"holderIdentity": "j-a-runner", "leaseDurationSeconds": 3600}}


def test_a_released_lease_has_no_holder_no_job_and_is_dirty_and_keeps_the_rest() -> None:
    out = released(lease(), "uid-1")
    assert out["kind"] == "Lease" and out["apiVersion"] == "coordination.k8s.io/v1"
    assert out["metadata"]["labels"] == {"necrocode.io/repo-pool": "main", "team": "x", "necrocode.io/slot-state": "dirty",
                                         "necrocode.io/released-by": "uid-1"}  # counted exactly after a restart
    assert out["metadata"]["resourceVersion"] == "42"  # the guard of the PUT
    assert "managedFields" not in out["metadata"]  # absent: the server keeps them
    assert out["spec"] == {"leaseDurationSeconds": 3600}


def test_a_lease_is_held_for_a_job_while_it_has_its_labels_and_a_holder() -> None:
    assert _held_for(lease(), "necrocode.io/job=j")
    assert _held_for(lease(), "necrocode.io/job=j,necrocode.io/task=a")
    assert not _held_for(lease(), "necrocode.io/job=k")
    assert not _held_for(released(lease(), "uid-1"), "necrocode.io/job=j")


def test_a_task_update_keeps_its_status_and_records_the_cancellation() -> None:
    clock = ManualClock(datetime(2026, 11, 26, 3, 0, tzinfo=UTC))
    reg = TaskRegistry(None, "ns", clock=clock, log=Bound(), concurrency=1)  # type: ignore[arg-type]
    task = {"apiVersion": "necrocode.io/v1alpha1", "kind": "AgentTask",
            "metadata": {"name": "j-a", "resourceVersion": "7", "managedFields": [{}]},
            "status": {"state": "Running", "runner": "j-a-runner", "repoSlot": "slot-1"}}
    a = AffectedTask(taskId="a", name="j-a", before="Running", after="Cancelled", reason="")
    by = Ref("JobCancellation", "stop", "uid-1")
    out = reg._update(task, a, by=by, requester=Requester(""), reason="budget", prev=TaskState.RUNNING)
    assert out["metadata"] == {"name": "j-a", "resourceVersion": "7"}
    assert out["status"]["runner"] == "j-a-runner" and out["status"]["repoSlot"] == "slot-1"
    assert out["status"]["state"] == "Cancelled"
    assert out["status"]["cancellation"] == {"reason": "budget", "cancelledAt": "2026-11-26T03:00:00Z",
                                             "cancelledBy": "stop", "cancelledByKind": "JobCancellation",
                                             "cancelledByUid": "uid-1", "previousState": "Running"}
    verified = reg._update(task, a, by=by, requester=Requester("alice", verified=True), reason="", prev=TaskState.RUNNING)
    assert verified["status"]["cancellation"]["requestedBy"] == "alice"
    assert verified["status"]["cancellation"]["requesterVerified"] is True
    blocked = reg._update(task, a.model_copy(update={"after": "Blocked", "reason": "dependency a cancelled"}),
                          by=Ref("TaskCancellation", "stop", "uid-2"), requester=Requester("bob"), reason="x",
                          prev=TaskState.PENDING)
    assert blocked["status"]["blockedBy"] == "stop" and blocked["status"]["message"] == "dependency a cancelled"
    assert blocked["status"]["blockedByUid"] == "uid-2"
    assert "cancellation" not in blocked["status"]
