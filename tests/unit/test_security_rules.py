"""Table tests of the pure security rules: whose request it is (model.requester_of), who escalated
it (model.force_requester_of) and which objects belong to the job instance acted on
(planning.belongs_to)."""

from __future__ import annotations

from typing import Any

import pytest

from necrocode.model import (
    ANNOTATION_FORCE_REQUESTER,
    ANNOTATION_REQUESTER,
    ANNOTATION_REQUESTER_GROUPS,
    LABEL_JOB_UID,
    Requester,
    force_requester_of,
    requester_of,
)
from necrocode.planning import JobInstance, belongs_to

JOB = JobInstance(uid="new-uid", created="2026-12-02T10:00:00Z")


def obj(created: Any = None, labels: dict[str, str] | None = None, owners: list[dict[str, Any]] | None = None) -> Any:
    meta: dict[str, Any] = {"name": "x", "labels": labels or {}}
    if created is not None:
        meta["creationTimestamp"] = created
    if owners is not None:
        meta["ownerReferences"] = owners
    return {"metadata": meta}


def owner(kind: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": "necrocode.io/v1alpha1", "kind": kind, "name": "j", "uid": uid}


@pytest.mark.parametrize(("o", "job", "by_time", "want"), [
    # the job-uid label decides first, whatever the times or owners say
    (obj("2026-12-02T09:00:00Z", {LABEL_JOB_UID: "new-uid"}), JOB, True, True),
    (obj("2026-12-02T11:00:00Z", {LABEL_JOB_UID: "old-uid"}), JOB, True, False),
    (obj("2026-12-02T11:00:00Z", {LABEL_JOB_UID: "old-uid"}, [owner("AgentJob", "new-uid")]), JOB, True, False),
    # then an owner reference to an AgentJob
    (obj("2026-12-02T09:00:00Z", owners=[owner("AgentJob", "new-uid")]), JOB, True, True),
    (obj("2026-12-02T11:00:00Z", owners=[owner("AgentJob", "old-uid")]), JOB, True, False),
    (obj("2026-12-02T09:00:00Z", owners=[owner("ReplicaSet", "new-uid")]), JOB, True, False),  # falls to time
    (obj("2026-12-02T09:00:00Z", owners=["garbage"]), JOB, True, False),  # type: ignore[list-item]
    # the older label contract, for artifacts: created no earlier than the job
    (obj("2026-12-02T10:00:00Z"), JOB, True, True),
    (obj("2026-12-02T10:00:01Z"), JOB, True, True),
    (obj("2026-12-02T09:59:59Z"), JOB, True, False),
    (obj("2026-12-02T09:59:59Z"), JOB, False, True),  # the older contract where no work is destroyed
    # what cannot be read never excludes
    (obj(None), JOB, True, True),
    (obj("not a time"), JOB, True, True),
    (obj(12345), JOB, True, True),
    (obj("2026-12-02T09:00:00Z"), JobInstance("new-uid", "garbage"), True, True),
    # no instance known (a record from before instances were recorded): as before
    (obj("2026-12-02T09:00:00Z", {LABEL_JOB_UID: "old-uid"}), None, True, True),
    (obj("2026-12-02T09:00:00Z"), JobInstance(""), True, True),
])
def test_objects_belong_to_the_job_instance_they_were_made_for(o: Any, job: JobInstance | None, by_time: bool,
                                                             want: bool) -> None:
    assert belongs_to(o, job, by_time=by_time) is want


@pytest.mark.parametrize(("annotations", "claimed", "installed", "want"), [
    ({ANNOTATION_REQUESTER: "alice", ANNOTATION_REQUESTER_GROUPS: "g1,g2"}, "bob", True,
     Requester("alice", ("g1", "g2"), verified=True)),
    ({ANNOTATION_REQUESTER: "alice"}, None, True, Requester("alice", (), verified=True)),
    ({ANNOTATION_REQUESTER: "alice", ANNOTATION_REQUESTER_GROUPS: ",,g1,"}, None, True,
     Requester("alice", ("g1",), verified=True)),
    ({ANNOTATION_REQUESTER: "alice", ANNOTATION_REQUESTER_GROUPS: 7}, None, True, Requester("alice", (), verified=True)),
    # without the policy an annotation is only a claim: anyone could have written it
    ({ANNOTATION_REQUESTER: "alice"}, "bob", False, Requester("bob")),
    ({}, "bob", True, Requester("bob")),
    ({ANNOTATION_REQUESTER: ""}, None, True, Requester("")),
    ({ANNOTATION_REQUESTER: ["x"]}, "bob", True, Requester("bob")),
])
def test_only_the_api_servers_record_is_a_verified_requester(annotations: dict[str, Any], claimed: str | None,
                                                             installed: bool, want: Requester) -> None:
    assert requester_of({"annotations": annotations}, claimed, policy_installed=installed) == want


def test_an_unverified_requester_is_shown_as_such() -> None:
    assert Requester("alice", verified=True).text == "alice"
    assert Requester("bob").text == "bob (unverified)"
    assert Requester("").text == ""


@pytest.mark.parametrize(("annotations", "installed", "want"), [
    ({ANNOTATION_FORCE_REQUESTER: "alice"}, True, "alice"),
    ({ANNOTATION_FORCE_REQUESTER: "alice"}, False, "alice (unverified)"),  # no policy wrote it: a claim
    ({ANNOTATION_FORCE_REQUESTER: ""}, True, None),
    ({ANNOTATION_FORCE_REQUESTER: 7}, True, None),
    ({ANNOTATION_REQUESTER: "bob"}, True, None),  # forced from the start: nobody escalated it
    ({ANNOTATION_FORCE_REQUESTER: "x" * 400}, True, "x" * 238 + "... (truncated)"),
])
def test_who_escalated_is_the_api_servers_record(annotations: dict[str, Any], installed: bool,
                                                  want: str | None) -> None:
    who = force_requester_of({"annotations": annotations}, policy_installed=installed)
    assert (who.text if who else None) == want
