"""Alert rules (promtool) and the Grafana dashboard, checked against the metrics we export."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import necrocode
import necrocode.metrics
from necrocode.kube import resource_of

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "necrocode-alerts.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "necrocode-dashboard.json"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool not installed (Debian package prometheus); .ci/run installs it")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return path


def exported_metric_names() -> set[str]:
    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.name.startswith("necrocode_"):
            for sample in family.samples:
                names.add(sample.name)
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    # histograms export _bucket/_sum/_count only once observed; name them from the definitions
    for m in (necrocode.metrics.DURATION, necrocode.metrics.STEP_DURATION):
        base = m._name
        names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    return names


def metrics_in(text: str) -> set[str]:
    return set(re.findall(r"\bnecrocode_[a-z_]+", text))


def test_alert_rules_pass_promtool_check() -> None:
    out = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 7 rules found" in out.stdout


def test_alert_rules_unit_tests_pass() -> None:
    out = subprocess.run([promtool(), "test", "rules", "alerts_test.yaml"], cwd=REPO / "tests" / "promtool",
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_alert_rules_cover_failures_force_kills_cleanup_duration_and_the_operator_itself() -> None:
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == {
        "NecrocodeOperatorDown", "NecrocodeNoLeader", "NecrocodeCancellationFailures", "NecrocodeForceKillsHigh",
        "NecrocodeCleanupFailures", "NecrocodeRunnersStuck", "NecrocodeCancellationTooLong"}
    used = set().union(*(metrics_in(r["expr"]) for r in rules))
    assert used <= exported_metric_names(), used - exported_metric_names()
    # every promtool case names an alert of the rules, and every alert has a case that fires it
    cases = yaml.safe_load((REPO / "tests" / "promtool" / "alerts_test.yaml").read_text())["tests"]
    fired = {t["alertname"] for c in cases for t in c["alert_rule_test"] if t["exp_alerts"]}
    assert fired == {r["alert"] for r in rules}
    # TooLong is about one cancellation's age, not about a stream of them being in progress
    [too_long] = [r for r in rules if r["alert"] == "NecrocodeCancellationTooLong"]
    assert metrics_in(too_long["expr"]) == {"necrocode_oldest_running_cancellation_age_seconds"}


RUNBOOKS = REPO / "docs" / "runbooks.md"
RUNBOOK_BASE = "https://github.com/necrocode/necrocode-cancel/blob/main/docs/runbooks.md"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation out, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_links_its_runbook_section_which_says_what_to_check_and_do() -> None:
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    text = RUNBOOKS.read_text()
    sections = dict(re.findall(r"^## ([^\n]+)\n(.*?)(?=^## |\Z)", text, re.M | re.S))
    anchors = {github_anchor(h): body for h, body in sections.items()}
    assert set(sections) == {r["alert"] for r in rules}  # one section per alert, nothing else
    for rule in rules:
        url = rule["annotations"]["runbook_url"]
        base, _, anchor = url.partition("#")
        assert base == RUNBOOK_BASE, url
        assert anchor == rule["alert"].lower() and anchor in anchors, url
        body = anchors[anchor]
        for part in ("**Means.**", "**Check.**", "**Do.**"):
            assert part in body, (rule["alert"], part)
        assert "```sh\n" in body, rule["alert"]  # the commands to check with
    assert (REPO / "docs" / RUNBOOK_BASE.rsplit("/docs/", 1)[1]).exists()


def test_build_info_leader_and_the_oldest_running_age_are_exported() -> None:
    from necrocode import metrics

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in REGISTRY.collect()
               for s in f.samples if s.name.startswith("necrocode_")}
    [(labels, value)] = [(dict(k[1]), v) for k, v in samples.items() if k[0] == "necrocode_build_info"]
    assert value == 1 and labels["version"] == necrocode.__version__
    assert re.fullmatch(r"3\.\d+\.\d+", labels["python"]) and re.fullmatch(r"\d+\.\d+\.\d+", labels["kopf"])
    assert ("necrocode_leader", ()) in samples
    # nothing running here (a standby, or before startup): 0 for both kinds, never absent
    assert metrics.OLDEST_RUNNING.ages() == {"JobCancellation": 0.0, "TaskCancellation": 0.0}
    metrics.OLDEST_RUNNING.source = lambda: [("JobCancellation", 12.5), ("JobCancellation", 1900.0),
                                             ("TaskCancellation", 3.0)]
    try:
        got = {s.labels["kind"]: s.value for f in REGISTRY.collect() for s in f.samples
               if s.name == "necrocode_oldest_running_cancellation_age_seconds"}
        assert got == {"JobCancellation": 1900.0, "TaskCancellation": 3.0}
    finally:
        metrics.OLDEST_RUNNING.source = None


def test_json_log_timestamps_are_utc_whatever_the_machine_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging
    import time
    from datetime import UTC, datetime

    from necrocode.logs import JsonFormatter

    monkeypatch.setenv("TZ", "NCT-05:30")  # 5 h 30 min east of UTC (POSIX TZ, no tz database needed)
    time.tzset()
    try:
        assert time.strftime("%z", time.localtime(0)) == "+0530"
        record = logging.LogRecord("necrocode", logging.INFO, __file__, 1, "event", None, None)
        record.created, record.msecs = 1_700_000_000.25, 250.0
        ts = json.loads(JsonFormatter().format(record))["ts"]
    finally:
        monkeypatch.undo()
        time.tzset()
    assert ts == "2023-11-14T22:13:20.250Z"
    assert ts == datetime.fromtimestamp(1_700_000_000.25, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_json_logs_keep_their_fields_without_collecting_the_callers_frame(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """logs.configure turns off what neither format writes (the caller's file and line, the
    thread, the process): each line of a 5,000-runner cancellation's 20,000 costs less, and
    says what it said before."""
    import logging

    from necrocode import logs

    for flag in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, flag, getattr(logging, flag))  # put back after the test
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    records: list[logging.LogRecord] = []
    logs.configure("json", "INFO")
    root.handlers[0].addFilter(lambda r: records.append(r) or True)
    logs.Bound(cancellation="stop", kind="JobCancellation").info("runner deleted", runner="r-1", task="t-1")
    line = json.loads(capsys.readouterr().err.splitlines()[-1])
    assert (line["event"], line["level"], line["logger"]) == ("runner deleted", "info", "necrocode")
    assert (line["cancellation"], line["kind"], line["runner"], line["task"], line["job"]) == (
        "stop", "JobCancellation", "r-1", "t-1", None)
    assert line["ts"].endswith("Z")
    assert (records[0].lineno, records[0].thread, records[0].process) == (0, None, None)


def test_dashboard_queries_only_metrics_that_exist() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 9
    used = set().union(*(metrics_in(e) for e in exprs))
    assert used, "the dashboard queries no necrocode metric"
    missing = used - exported_metric_names()
    assert not missing, f"dashboard uses metrics the operator does not export: {missing}"
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for word in ("rate", "duration", "forced", "failures"):
        assert word in titles


@pytest.mark.parametrize(("path", "resource"), [
    ("/api/v1/namespaces/ns/pods", "pods"),
    ("/api/v1/namespaces/ns/pods/job-t1-runner", "pods"),
    ("/api/v1/namespaces/ns/pods/job-t1-runner/log", "pods/log"),
    ("/api/v1/namespaces/ns/events", "events"),
    ("/api/v1/namespaces/ns", "namespaces"),
    ("/api/v1/namespaces", "namespaces"),
    ("/apis/necrocode.io/v1alpha1/namespaces/ns/jobcancellations/stop/status", "jobcancellations/status"),
    ("/apis/coordination.k8s.io/v1/namespaces/ns/leases/slot-1", "leases"),
    ("/apis/necrocode.io/v1alpha1/jobcancellations", "jobcancellations"),
    ("/api/v1/namespaces/ns/pods?labelSelector=a%3Db", "pods"),
    ("/version", "-"),
])
def test_requests_are_counted_by_resource_whatever_the_names(path: str, resource: str) -> None:
    assert resource_of(path) == resource
