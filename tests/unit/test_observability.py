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

import necrocode.metrics

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
    assert "SUCCESS: 5 rules found" in out.stdout


def test_alert_rules_unit_tests_pass() -> None:
    out = subprocess.run([promtool(), "test", "rules", "alerts_test.yaml"], cwd=REPO / "tests" / "promtool",
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_alert_rules_cover_failures_force_kills_cleanup_and_duration() -> None:
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == {
        "NecrocodeCancellationFailures", "NecrocodeForceKillsHigh", "NecrocodeCleanupFailures",
        "NecrocodeRunnersStuck", "NecrocodeCancellationTooLong"}
    used = set().union(*(metrics_in(r["expr"]) for r in rules))
    assert used <= exported_metric_names(), used - exported_metric_names()


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
