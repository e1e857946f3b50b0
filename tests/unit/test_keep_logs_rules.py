"""Kept runner logs, the wiring's rules (issue 18, item 3): which cancellations keep their runners'
logs (spec.preserveLogs, else the operator's default, and never changed for one under way), where
the KeepLogs step sits (after the runners are told, before any is deleted), and what it adds to
the cancellation's bound."""

from __future__ import annotations

from typing import Any

import pytest

from necrocode.logtail import KeptText, kubelet_error
from necrocode.model import CancellationSpec
from necrocode.policies.resume import cancellation_bound, keeps_logs, log_keeping_bound, log_windows
from necrocode.steps import steps_for


def spec(**kw: Any) -> CancellationSpec:
    return CancellationSpec.model_validate({"jobName": "j", **kw})


@pytest.mark.parametrize("fields, default, keeps", [
    ({}, False, False),
    ({}, True, True),  # the operator's default (NECROCODE_PRESERVE_LOGS, the chart's value)
    ({"preserveLogs": True}, False, True),
    ({"preserveLogs": False}, True, False),  # the spec says no: not kept whatever the default
    ({"preserveLogs": True, "force": True}, False, True),  # forced: a bounded read, then the runners go
    ({"preserveLogs": True, "dryRun": True}, False, True),  # a dry run's plan lists them
])
def test_logs_are_kept_as_the_spec_says_else_as_the_operator_default_says(fields: dict[str, Any], default: bool,
                                                                          keeps: bool) -> None:
    assert keeps_logs(spec(**fields), default) is keeps


def test_a_cancellation_under_way_keeps_the_step_table_it_started_with() -> None:
    """An operator restarted with another default neither adds KeepLogs to a cancellation under
    way (its steps recorded in status) nor takes it away."""
    recorded = [d.name for d in steps_for("JobCancellation", logs=True)]
    assert keeps_logs(spec(), False, recorded) is True
    assert keeps_logs(spec(preserveLogs=False), False, recorded) is True
    plain = [d.name for d in steps_for("JobCancellation")]
    assert keeps_logs(spec(), True, plain) is False


@pytest.mark.parametrize("kind", ["JobCancellation", "TaskCancellation"])
@pytest.mark.parametrize("mode", ["Cancel", "Drain"])
def test_logs_are_kept_after_the_runners_are_told_and_before_any_is_deleted(kind: str, mode: str) -> None:
    without = [d.name for d in steps_for(kind, mode)]
    names = [d.name for d in steps_for(kind, mode, logs=True)]
    at = names.index("KeepLogs")
    assert names[at - 1] == "SignalRunners" and names[at + 1] == "TerminateRunners"
    assert [n for n in names if n != "KeepLogs"] == without
    assert "KeepLogs" not in without


def test_keeping_logs_adds_three_bounded_readings_to_the_bound() -> None:
    """The step's reading, the reading in the grace and the one before the runners are forced,
    each bounded as a whole by one read timeout and one write's retry budget, whatever the
    number of runners."""
    assert log_windows(False, 10, 270) == 0
    assert log_windows(True, 10, 270) == 3 * log_keeping_bound(10, 270) == 840
    base = cancellation_bound(30, 10, 30, 270, 9, True)
    assert cancellation_bound(30, 10, 30, 270, 9, True, windows=log_windows(True, 10, 270)) == base + 840


@pytest.mark.parametrize("body, error", [
    ("unable to retrieve container logs for containerd://b4d515d8670838135a50", True),
    ("failed to try resolving symlinks in path \"/var/log/pods/ns_p_uid/runner/0.log\": lstat: no such file", True),
    ("runner line 1\nunable to retrieve container logs for containerd://b4d5\n", False),  # a runner's own words
    ("all good\n", False),
    ("", False),
])
def test_a_kubelet_error_answered_as_a_log_is_not_kept_as_one(body: str, error: bool) -> None:
    """A kubelet whose container is removed answers 200 with its error as the body: that is no
    log, and must not replace one kept earlier (in the grace)."""
    assert (kubelet_error(KeptText(body, len(body.encode()), False)) is not None) is error
