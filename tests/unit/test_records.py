"""One model of cancellation records and tasks (necrocode.records), which the CLI, the REST API
and the operator share: the same order, the same "cancellation of a job", the same task."""

from __future__ import annotations

import inspect
import pkgutil
from importlib import import_module
from typing import Any

import pytest

from necrocode import cli, planning, records
from necrocode.api import routes, store
from necrocode.model import Phase


def rec(name: str, created: str, kind: str = "JobCancellation", job: str = "j", phase: str | None = None,
        **spec: Any) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "creationTimestamp": created},
            "spec": {"jobName": job, **spec}, "status": {"phase": phase} if phase else {}}


def names(items: list[dict[str, Any]]) -> list[str]:
    return [f"{i['kind'][0]}:{i['metadata']['name']}" for i in items]


def test_newest_first_is_a_total_order() -> None:
    items = [rec("a", "2026-01-01T00:00:01Z"), rec("b", "2026-01-01T00:00:01Z"),
             rec("b", "2026-01-01T00:00:01Z", kind="TaskCancellation"), rec("z", "2026-01-01T00:00:00Z"),
             rec("c", "2026-01-01T00:00:02Z")]
    want = ["J:c", "T:b", "J:b", "J:a", "J:z"]  # time, then name, then kind: all descending
    assert names(records.newest_first(items)) == want
    assert names(records.newest_first(reversed(items))) == want  # whatever order the API listed them in


def test_the_cancellations_of_a_job_and_which_one_is_current() -> None:
    old_running = rec("j-1", "2026-01-01T00:00:01Z", phase="Running")
    done = rec("j-2", "2026-01-01T00:00:02Z", kind="TaskCancellation", phase="Completed", taskId="t")
    newest = rec("j-3", "2026-01-01T00:00:03Z", phase="Rejected")
    other = rec("k-1", "2026-01-01T00:00:09Z", job="k")
    found = records.of_job([other, old_running, done, newest], "j")
    assert names(found) == ["J:j-3", "T:j-2", "J:j-1"]
    # the REST API's cancellation-status: the newest still going on, else the newest
    assert records.current(found) is old_running
    assert records.current(found[:2]) is newest
    assert records.current([]) is None
    # the CLI's cancel-status: the newest, and every older one still going on
    assert names(records.latest(found)) == ["J:j-3", "J:j-1"]
    assert records.latest([]) == []
    # an unreadable status reads as not started, so as going on
    broken = rec("j-4", "2026-01-01T00:00:04Z") | {"status": {"phase": "Bogus"}}
    assert not records.is_finished(broken) and records.current([broken, newest]) is broken


def test_a_job_name_that_cannot_be_a_label_is_listed_without_a_selector() -> None:
    assert records.job_selector("job1") == "necrocode.io/job=job1"
    long_name = "j" * 64
    assert records.job_selector(long_name) is None
    assert names(records.of_job([rec("x", "t", job=long_name), rec("y", "t")], long_name)) == ["J:x"]


def task(name: str, job: str | None, tid: str | None, *, label_job: bool = True, label_task: bool = True) -> dict[str, Any]:
    labels = {**({"necrocode.io/job": job} if job and label_job else {}),
              **({"necrocode.io/task": tid} if tid and label_task else {})}
    return {"metadata": {"name": name, "labels": labels}, "spec": {**({"job": job} if job else {}),
                                                                   **({"taskId": tid} if tid else {})}}


@pytest.mark.parametrize(("job", "tid", "selector"), [
    ("job1", "t1", "necrocode.io/job=job1,necrocode.io/task=t1"),
    ("j" * 64, "t1", "necrocode.io/task=t1"),
    ("job1", "not a label!", "necrocode.io/job=job1"),
    ("j" * 64, "not a label!", None),
])
def test_task_selector_is_the_narrowest_the_values_allow(job: str, tid: str, selector: str | None) -> None:
    assert records.task_selector(job, tid) == selector


def test_a_task_is_found_by_the_id_the_operator_reads() -> None:
    listed = [task("job1-t1", "job1", "t1"),
              task("job2-t1", "job2", "t1"),                                # another job's t1
              task("job1-x", "job1", "t1", label_task=False) | {"spec": {"job": "job1", "taskId": "x"}},
              task("job1-t1b", "job1", None) | {"metadata": {"name": "job1-t1b", "labels": {
                  "necrocode.io/job": "job1", "necrocode.io/task": "t1"}}},  # no spec.taskId: the label says
              task("t1", "job1", None, label_task=False),                   # neither: its name is its id
              task("job1-t1-nolabel", "job1", "t1", label_job=False)]       # no job label: spec.job says
    found = [t["metadata"]["name"] for t in records.find_tasks(listed, "job1", "t1")]
    assert found == ["job1-t1", "job1-t1b", "t1", "job1-t1-nolabel"]
    # a task whose label says t1 but whose spec says otherwise is what the operator calls "other"
    labelled_other = task("odd", "job1", "other") | {"metadata": {"name": "odd", "labels": {
        "necrocode.io/job": "job1", "necrocode.io/task": "t1"}}}
    assert not records.is_task(labelled_other, "job1", "t1") and records.is_task(labelled_other, "job1", "other")
    assert planning.task_id(labelled_other) == "other"


def test_the_cli_and_the_rest_api_use_this_model() -> None:
    assert planning.task_id is records.task_id
    api = inspect.getsource(routes) + inspect.getsource(store)
    for use in ("records.task_selector(", "records.find_tasks(", "records.job_selector(", "records.of_job(",
                "records.current(", "records.history(", "records.with_kind(", "records.is_finished("):
        assert use in api, use
    assert "newest_first" not in api.replace("records.newest_first", "")
    cli_source = "".join(inspect.getsource(import_module(m.name))
                         for m in pkgutil.walk_packages(cli.__path__, "necrocode.cli.") if m.name != "necrocode.cli.__main__")
    for use in ("records.task_selector(", "records.find_tasks(", "records.job_selector(", "records.of_job(",
                "records.latest(", "records.newest_first(", "records.graceful_running(", "records.jobs_selector(",
                "records.jobs_to_cancel(", "records.in_phase(", "records.started_at(", "records.is_finished("):
        assert use in cli_source, use


def test_listed_records_get_their_kind() -> None:
    listed = [{"metadata": {"name": "a"}}, {"kind": "JobCancellation", "metadata": {"name": "b"}}]
    tagged = records.with_kind(listed, "TaskCancellation")
    assert [o["kind"] for o in tagged] == ["TaskCancellation", "TaskCancellation"]
    assert "kind" not in listed[0]  # copies: what was listed stays as it was


def test_the_history_is_newest_first_and_filtered_by_job_and_phase() -> None:
    from necrocode.model import Phase

    running = rec("j-1", "2026-01-01T00:00:01Z", phase="Running")
    done = rec("j-2", "2026-01-01T00:00:02Z", kind="TaskCancellation", phase="Completed", taskId="t")
    pending = rec("j-3", "2026-01-01T00:00:03Z")  # no status yet: Pending
    other = rec("k-1", "2026-01-01T00:00:09Z", job="k", phase="Running")
    items = [running, other, done, pending]
    assert names(records.history(items)) == ["J:k-1", "J:j-3", "T:j-2", "J:j-1"]
    assert names(records.history(items, "j")) == ["J:j-3", "T:j-2", "J:j-1"]
    assert names(records.history(items, phase=Phase.RUNNING)) == ["J:k-1", "J:j-1"]
    assert names(records.history(items, "j", Phase.PENDING)) == ["J:j-3"]
    assert records.history(items, "j", Phase.FAILED) == []


def test_reading_a_record() -> None:
    running = rec("j-1", "2026-01-01T00:00:01Z", phase="Running") | {"metadata": {"name": "j-1", "namespace": "n",
                                                                              "creationTimestamp": "2026-01-01T00:00:01Z"}}
    r = records.result_of(running)
    assert (r.kind, r.name, r.namespace, r.job_name, r.status.phase) == ("JobCancellation", "j-1", "n", "j", Phase.RUNNING)
    assert records.result_of({"status": {"phase": "Bogus"}}).status.phase == Phase.PENDING  # unreadable: empty
    # started: the operator's startedAt, else the creation time, else unknown
    assert records.started_at(running) == "2026-01-01T00:00:01Z"
    assert records.started_at(running | {"status": {"startedAt": "2026-01-01T00:00:05Z"}}) == "2026-01-01T00:00:05Z"
    assert records.started_at({"metadata": {}}) is None


def test_records_in_a_phase_keep_their_order() -> None:
    items = [rec("a", "1", phase="Failed"), rec("b", "2", phase="Running"), rec("c", "3", phase="Failed"),
             rec("d", "4"), rec("e", "5") | {"status": {"phase": "Bogus"}}]
    assert names(records.in_phase(items, Phase.FAILED)) == ["J:a", "J:c"]
    assert names(records.in_phase(items, Phase.PENDING)) == ["J:d", "J:e"]  # none yet, or unreadable


def test_the_graceful_running_record_is_what_force_escalates() -> None:
    def graceful(name: str, created: str, **kw: Any) -> dict[str, Any]:
        return rec(name, created, phase=kw.pop("phase", "Running"), **kw)
    items = [graceful("old", "2026-01-01T00:00:01Z"), graceful("new", "2026-01-01T00:00:02Z"),
             graceful("forced", "2026-01-01T00:00:03Z", force=True),
             graceful("dry", "2026-01-01T00:00:04Z", dryRun=True),
             graceful("done", "2026-01-01T00:00:05Z", phase="Completed"),
             graceful("task", "2026-01-01T00:00:06Z", taskId="t1"),
             graceful("other", "2026-01-01T00:00:07Z", job="k")]
    assert records.graceful_running(items, "j")["metadata"]["name"] == "new"  # type: ignore[index]
    assert records.graceful_running(items, "j", "t1")["metadata"]["name"] == "task"  # type: ignore[index]
    assert records.graceful_running(items, "j", "t2") is None
    assert records.graceful_running(items[2:5], "j") is None  # forced, dry run, finished: nothing to escalate


def test_one_selector_for_the_records_of_several_jobs() -> None:
    assert records.jobs_selector(["b", "a", "b"]) == "necrocode.io/job in (a,b)"
    assert records.jobs_selector(["a", "j" * 64]) is None  # a name that cannot be a label: none
    assert records.jobs_selector([]) is None


def test_jobs_a_selector_matched_are_cancelled_unless_finished() -> None:
    def job(name: str, phase: str | None = None) -> dict[str, Any]:
        return {"metadata": {"name": name}, "status": {"phase": phase} if phase else {}}
    matched = [job("m3", "Running"), job("done", "Succeeded"), job("m1"), job("gone", "Cancelled"),
               job("named", "Failed"), job("m2", "Pending")]
    assert records.jobs_to_cancel(matched, ["named"]) == (["m1", "m2", "m3"], [("done", "Succeeded"),
                                                                               ("gone", "Cancelled")])
    assert records.jobs_to_cancel([], []) == ([], [])
