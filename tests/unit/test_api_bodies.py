"""The REST API's request bodies and answers for issue 18's fields, without a server: the
mode's rules (the CRD's, in its words), that the OpenAPI document states them the same way the
server applies them (schemathesis generates from it), and that an answer carries the drain,
cooperative and kept-log status as the operator writes it. The served API is tested in
tests/cluster/test_api.py."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest
from pydantic import ValidationError

from necrocode import records
from necrocode.api.schemas import DEADLINE_ONLY_FOR_DRAIN, DRAIN_NEEDS_DEADLINE, JobCancelRequest, TaskCancelRequest

ACCEPTED: list[dict[str, Any]] = [
    {}, {"mode": "Cancel"}, {"mode": "Drain", "drainDeadlineSeconds": 1}, {"mode": "Drain", "drainDeadlineSeconds": 86400},
    {"drainDeadlineSeconds": None}, {"cooperativeSeconds": 3600, "preserveLogs": False}, {"preserveLogs": None},
    {"mode": "Drain", "drainDeadlineSeconds": 30.0, "cooperativeSeconds": 0, "preserveLogs": True, "force": True},
]
REFUSED: list[tuple[dict[str, Any], tuple[str, ...], str]] = [
    ({"mode": "Drain"}, (), DRAIN_NEEDS_DEADLINE),
    ({"mode": "Drain", "drainDeadlineSeconds": None}, (), DRAIN_NEEDS_DEADLINE),
    ({"drainDeadlineSeconds": 60}, ("drainDeadlineSeconds",), DEADLINE_ONLY_FOR_DRAIN),
    ({"mode": "Cancel", "drainDeadlineSeconds": 60}, ("drainDeadlineSeconds",), DEADLINE_ONLY_FOR_DRAIN),
    ({"mode": "Drain", "drainDeadlineSeconds": 0}, ("drainDeadlineSeconds",), "greater than or equal to 1"),
    ({"mode": "Drain", "drainDeadlineSeconds": 86401}, ("drainDeadlineSeconds",), "less than or equal to 86400"),
    ({"mode": "Drain", "drainDeadlineSeconds": "60"}, ("drainDeadlineSeconds",), "integer"),
    ({"mode": "drain", "drainDeadlineSeconds": 60}, ("mode",), "'Cancel' or 'Drain'"),
    ({"cooperativeSeconds": 3601}, ("cooperativeSeconds",), "less than or equal to 3600"),
    ({"cooperativeSeconds": -1}, ("cooperativeSeconds",), "greater than or equal to 0"),
    ({"preserveLogs": "true"}, ("preserveLogs",), "boolean"),
]


@pytest.mark.parametrize("body", ACCEPTED)
def test_accepted_bodies_become_the_spec_the_operator_reads(body: dict[str, Any]) -> None:
    spec = JobCancelRequest.model_validate(body).spec("job1", "alice")
    assert spec["mode"] == body.get("mode", "Cancel")
    assert spec.get("drainDeadlineSeconds") == body.get("drainDeadlineSeconds")
    assert spec["cooperativeSeconds"] == body.get("cooperativeSeconds", 0)
    assert spec.get("preserveLogs") == body.get("preserveLogs")  # absent or null: left to the operator
    task = TaskCancelRequest.model_validate({**body, "jobId": "job1"}).spec("t3", "alice")
    assert {k: task.get(k) for k in ("mode", "drainDeadlineSeconds", "cooperativeSeconds", "preserveLogs")} == {
        k: spec.get(k) for k in ("mode", "drainDeadlineSeconds", "cooperativeSeconds", "preserveLogs")}


@pytest.mark.parametrize(("body", "loc", "fragment"), REFUSED)
def test_refused_bodies_say_which_rule(body: dict[str, Any], loc: tuple[str, ...], fragment: str) -> None:
    for model, full in ((JobCancelRequest, body), (TaskCancelRequest, {**body, "jobId": "job1"})):
        with pytest.raises(ValidationError) as err:
            model.model_validate(full)
        [e] = err.value.errors()
        assert e["loc"] == loc and fragment in e["msg"], e


def test_the_openapi_schema_states_the_same_rules() -> None:
    """What the document calls valid the server accepts, and what it calls invalid is refused:
    a generated client, or schemathesis' positive and negative checks, can rely on it."""
    for model, extra in ((JobCancelRequest, {}), (TaskCancelRequest, {"jobId": "job1"})):
        # the validator schemathesis itself checks with
        validator = jsonschema_rs.validator_for(model.model_json_schema(by_alias=True))
        for body in ACCEPTED:
            assert validator.is_valid({**body, **extra}), body
        for body, _, _ in REFUSED:
            assert not validator.is_valid({**body, **extra}), body


def test_an_answer_carries_the_windows_and_the_kept_logs() -> None:
    status = {"phase": "Completed",
              "progress": {"runnersCooperative": 1, "tasksFinishedInDrain": 2, "finishedDuringCancel": 1,
                           "logsKept": 1, "logsFailed": 1},
              "drain": {"startedAt": "2026-11-25T09:30:13Z", "deadline": "2026-11-25T09:40:13Z",
                        "finishedAt": "2026-11-25T09:31:00Z", "runningAtStart": 2, "finishedInWindow": 2,
                        "stillRunning": 0, "endedBy": "AllFinished"},
              "cooperative": {"startedAt": "2026-11-25T09:31:00Z", "deadline": "2026-11-25T09:31:30Z", "stopped": 1},
              "runnerOutcomes": [{"pod": "p1", "outcome": "Cooperative"}, {"pod": "p2", "outcome": "TaskFinished"}],
              "logs": [{"pod": "p1", "task": "a", "configMap": "job1-a-log", "bytes": 4096, "truncated": True},
                       {"pod": "p2", "error": "node lost"}],
              "plan": {"drainTasks": ["a"], "cancelledAtOnce": ["b"], "logs": ["p1"]}}
    obj = {"kind": "JobCancellation", "metadata": {"name": "c1", "namespace": "ns"}, "spec": {"jobName": "job1"},
           "status": status}
    # as the routes answer: by alias, without nulls
    answer = records.result_of(obj).model_dump(mode="json", by_alias=True, exclude_none=True)["status"]
    assert answer["drain"] == status["drain"]
    assert answer["cooperative"] == status["cooperative"]
    assert answer["logs"] == [{**status["logs"][0]}, {"pod": "p2", "bytes": 0, "truncated": False, "error": "node lost"}]
    assert answer["runnerOutcomes"] == status["runnerOutcomes"]
    assert {k: answer["progress"][k] for k in status["progress"]} == status["progress"]
    assert {k: answer["plan"][k] for k in status["plan"]} == status["plan"]
