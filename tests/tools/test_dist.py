"""`make dist` and the install it is for: the wheel holds the package and nothing else, the sdist
builds it, the chart archive is the chart at the same version, and the wheel installed into a clean
virtualenv (its dependencies from requirements.lock, nothing from the repository) gives working
`necrocode` and `kubectl necrocode` commands.

The clean virtualenv gets its dependencies from a wheelhouse of requirements.lock under
~/.cache/necrocode/wheelhouse, filled from PyPI once (about 3 s) and only when an entry is missing;
offline with an incomplete wheelhouse the install test is skipped, saying so.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from hack.localcluster import CACHE

REPO = Path(__file__).resolve().parents[2]

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
VERSION = PROJECT["version"]
WHEEL = f"necrocode_cancel-{VERSION}-py3-none-any.whl"
SDIST = f"necrocode_cancel-{VERSION}.tar.gz"
CHART = f"necrocode-cancel-{VERSION}.tgz"
WHEELHOUSE: Path = CACHE / "wheelhouse"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make dist` into a temporary directory (what `make dist` writes to dist/)."""
    if not (CACHE / "bin" / "helm").exists():
        pytest.skip("helm not built (make tools)")
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(["make", "-s", "-C", str(REPO), "dist", f"DIST={out}"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([WHEEL, SDIST, CHART])
    return out


def test_the_wheel_holds_the_package_and_its_metadata_only(dist: Path) -> None:
    with zipfile.ZipFile(dist / WHEEL) as whl:
        names = whl.namelist()
        meta = whl.read(f"necrocode_cancel-{VERSION}.dist-info/METADATA").decode()
        entry_points = whl.read(f"necrocode_cancel-{VERSION}.dist-info/entry_points.txt").decode()
    assert {n.split("/")[0] for n in names} == {"necrocode", f"necrocode_cancel-{VERSION}.dist-info"}
    source = {str(p.relative_to(REPO / "operator")) for p in (REPO / "operator" / "necrocode").rglob("*.py")}
    assert {n for n in names if n.startswith("necrocode/")} == source
    # the dependencies are pyproject's, pinned as there; every script is there
    requires = set(re.findall(r"^Requires-Dist: (\S+)$", meta, re.M))
    assert requires == set(PROJECT["dependencies"])
    assert all(f"{name} = {target}" in entry_points for name, target in PROJECT["scripts"].items())


def test_the_sdist_has_the_source_and_no_tests(dist: Path) -> None:
    with tarfile.open(dist / SDIST) as sd:
        names = [n.split("/", 1)[1] for n in sd.getnames() if "/" in n]
    assert {"pyproject.toml", "README.md", "operator/necrocode/cli/__init__.py"} <= set(names)
    assert not [n for n in names if n.startswith(("tests", "hack", "charts", "examples"))]


def test_the_chart_archive_is_the_chart_at_the_packages_version(dist: Path) -> None:
    with tarfile.open(dist / CHART) as chart:
        names = set(chart.getnames())
        meta = yaml.safe_load(chart.extractfile("necrocode-cancel/Chart.yaml").read())  # type: ignore[union-attr]
    assert (meta["version"], meta["appVersion"]) == (VERSION, VERSION)  # the image tag the chart defaults to
    crds = {f"necrocode-cancel/crds/{p.name}" for p in (REPO / "crds").glob("*.yaml")}
    assert crds and crds <= names
    assert {"necrocode-cancel/values.schema.json", "necrocode-cancel/README.md"} <= names


def _wheelhouse() -> Path:
    """WHEELHOUSE holding a wheel of every requirements.lock entry (downloaded when one is missing)."""
    lock = [line for line in (REPO / "requirements.lock").read_text().splitlines() if line and not line.startswith("#")]
    have = {"-".join(p.name.split("-")[:2]).lower() for p in WHEELHOUSE.glob("*.whl")}

    def wheel_prefix(pin: str) -> str:  # requests-oauthlib==2.0.0 -> requests_oauthlib-2.0.0
        name, version = pin.split("==")
        return f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}"

    missing = [pin for pin in lock if wheel_prefix(pin) not in have]
    if missing:
        WHEELHOUSE.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                               "--dest", str(WHEELHOUSE), *missing], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"wheelhouse {WHEELHOUSE} lacks {len(missing)} of requirements.lock and PyPI cannot be "
                        f"reached: {proc.stderr.strip().splitlines()[-1:]}")
    return WHEELHOUSE


def test_the_wheel_installs_into_a_clean_venv_and_both_commands_run(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # the README's install line, offline: the dependencies only from the wheelhouse of the lock
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                           "--no-compile", "--no-index", "--find-links", str(_wheelhouse()),
                           "-c", str(REPO / "requirements.lock"), str(dist / WHEEL)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # nothing of the repository on the path: the package is the installed wheel's
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "none")}
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import necrocode; print(necrocode.__file__)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(venv / "lib")), where
    for script in PROJECT["scripts"]:
        assert (venv / "bin" / script).exists(), script

    out = subprocess.run([str(venv / "bin" / "necrocode"), "--help"], env=env, cwd=tmp_path, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage: necrocode ") and "Cancel NecroCode jobs" in out.stdout

    kubectl = CACHE / "bin" / "kubectl"
    if not kubectl.exists():
        pytest.skip("kubectl not built (make tools)")
    # kubectl finds the plugin kubectl-necrocode on PATH, the venv's bin; no cluster is needed
    out = subprocess.run([str(kubectl), "necrocode", "--help"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage: kubectl necrocode ") and "job" in out.stdout
    plugins = subprocess.run([str(kubectl), "plugin", "list"], env=env, capture_output=True, text=True)
    assert str(venv / "bin" / "kubectl-necrocode") in plugins.stdout, plugins.stdout + plugins.stderr
    assert os.access(venv / "bin" / "kubectl-necrocode", os.X_OK)
