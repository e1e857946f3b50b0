"""Test fixtures: a real control plane (local etcd + kube-apiserver + kwok, or $KUBECONFIG),
the CRDs from crds/ applied, a fresh namespace per test, and the operator run in-process.

Three kinds of tests, by directory, each marked by it:

- tests/unit: pure, fast, no server and no tool (`pytest -m "not cluster"`, `make unit`);
- tests/tools (marker `tools`): no server either, but they drive build and render tools for
  seconds (make dist and a clean venv, helm lint/template, hadolint);
- tests/cluster (marker `cluster`): the real control plane.

A `-m` expression that does not name `tools` leaves the tools tests out, so `-m "not cluster"`
stays the fast pure run; a plain `pytest` (`make test`) or `-m tools` runs them.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from necrocode.kube import Kube
from tests.support.kube import (
    SHARED_NS_PREFIX,
    ClusterInfo,
    Kubectl,
    api_client,
    create_unreachable_node,
    operator_env,
)

# This test run's id, inherited by every process it starts (control plane, real node, operators):
# hack/check-leftovers.sh reports only processes carrying it. `make test` sets it for both.
os.environ.setdefault("NECROCODE_TEST_RUN", f"pytest-{os.getpid()}-{uuid.uuid4().hex[:8]}")


# The tests that share the one real node a host can hold (by their files' names): under
# pytest-xdist they run one after another on one worker; the other workers start none.
REAL_NODE_FILES = "test_realnode"
REAL_NODE_GROUP = "real-node"


def _group(nodeid: str) -> str:
    """A test's unit of work for pytest-xdist: its file, or the real node's group."""
    path = nodeid.split("::", 1)[0]
    return REAL_NODE_GROUP if path.rsplit("/", 1)[-1].startswith(REAL_NODE_FILES) else path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """`make test` runs `-n 2 --dist loadfile`: each file goes whole to one worker (a module's
    fixtures start once), and so do the real-node files together. (pytest-xdist's own
    `loadgroup` does not work with pytest 9: it renames a test by `item._nodeid`, which pytest
    9 no longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByFileRealNodeTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

    return ByFileRealNodeTogether(config, log)


def pytest_configure(config: pytest.Config) -> None:
    """A pytest-xdist worker dies with the run's main process, as its control plane dies with it
    (PR_SET_PDEATHSIG): a `kill -9` of pytest leaves nothing behind, with workers or without."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        from hack.localcluster import die_with_parent

        die_with_parent()
        if os.getppid() == 1:  # the main process died before the call
            os._exit(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by its directory (cluster, tools); leave the tools tests out of a `-m`
    selection that does not name them. The real-node tests go first: under pytest-xdist theirs
    is the longest unit of work, which, started last, would finish alone."""
    for item in items:
        for kind in ("cluster", "tools"):
            if item.path.parent.name == kind:
                item.add_marker(kind)
    items.sort(key=lambda item: _group(item.nodeid) != REAL_NODE_GROUP)  # stable: the rest keep their order
    markexpr = config.getoption("markexpr")
    if markexpr and "tools" not in markexpr:
        left_out = [item for item in items if item.get_closest_marker("tools")]
        if left_out:
            config.hook.pytest_deselected(items=left_out)
            items[:] = [item for item in items if not item.get_closest_marker("tools")]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI (CI=true) the real-node tests must run: a skip (the host lacks what the node needs)
    is turned into a failure that says what is missing, so CI can never pass without them.
    NECROCODE_TEST_REQUIRE_REALNODE=1 does the same for the tests it selects (make kind-e2e: every
    real-node test that can run against kind, `-m "realnode and not localnode"`)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    required = os.environ.get("NECROCODE_TEST_REQUIRE_REALNODE", "").lower() in ("1", "true", "yes")
    if report.skipped and item.get_closest_marker("realnode") is not None and (ci or required):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        why = "CI=true" if ci else "NECROCODE_TEST_REQUIRE_REALNODE=1"
        report.longrepr = f"{why}: the real-node tests must run here, but: {reason}"


def _keep(session: pytest.Session) -> bool:
    """Keep a session's state (the control plane's data and logs, the operator's log) only for a
    look after a failure, or when asked (NECROCODE_KEEP_TEST_STATE=1): each session's etcd data
    alone is ~230 MB, and the machine is shared."""
    return bool(session.testsfailed) or os.environ.get("NECROCODE_KEEP_TEST_STATE") == "1"


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[ClusterInfo]:
    existing = os.environ.get("KUBECONFIG")
    if existing and os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.exit("pytest -n with $KUBECONFIG: every worker would serve the same nc-* namespaces of that "
                    "cluster with an operator of its own; run it serially (-n 0)", returncode=4)
    if existing:
        yield ClusterInfo(kubeconfig=Path(existing), local=False, bins=None)
        return
    from hack.localcluster import LocalCluster, bin_dir

    bins = bin_dir()
    state = Path(tempfile.mkdtemp(prefix="necrocode-test-cluster-"))
    lc = LocalCluster(dir=state, nodes=int(os.environ.get("NECROCODE_KWOK_NODES", "3")),
                      tie_to_parent=True, bins=bins)
    started = time.monotonic()
    kubeconfig = lc.up()
    print(f"\nlocal control plane up in {time.monotonic() - started:.1f}s ({state})", file=sys.stderr)
    try:
        yield ClusterInfo(kubeconfig=kubeconfig, local=True, bins=bins, state_dir=state)
    finally:
        lc.down()
        if not _keep(request.session):
            shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def kube(cluster: ClusterInfo) -> Kubectl:
    k = Kubectl(cluster.kubeconfig)
    k.install_crds()
    return k


@pytest.fixture
async def api(cluster: ClusterInfo) -> AsyncIterator[Kube]:
    """The operator's own client (necrocode.kube.Kube), with the test session's short retries."""
    k = api_client(cluster.kubeconfig)
    yield k
    await k.close()


@pytest.fixture
def namespace(kube: Kubectl) -> Iterator[str]:
    ns = f"{SHARED_NS_PREFIX}{uuid.uuid4().hex[:8]}"
    kube.create_namespace(ns)
    yield ns
    kube.delete_namespace(ns)


@pytest.fixture
def solo_namespace(kube: Kubectl) -> Iterator[str]:
    """A namespace the session's operator does not serve (for tests that run their own)."""
    ns = f"solo-{uuid.uuid4().hex[:8]}"
    kube.create_namespace(ns)
    yield ns
    kube.delete_namespace(ns)


@pytest.fixture(scope="session")
def metrics_port() -> int:
    from hack.localcluster import free_port

    return free_port()


@pytest.fixture(scope="session")
def operator_log(request: pytest.FixtureRequest) -> Iterator[Path]:
    """Where the in-process operator's JSON log goes (one file per test session; removed at the
    end unless a test failed)."""
    env = os.environ.get("NECROCODE_TEST_OPERATOR_LOG")
    if env:
        yield Path(env)
        return
    folder = Path(tempfile.mkdtemp(prefix="necrocode-operator-"))
    yield folder / "operator.log"
    if not _keep(request.session):
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def operator(kube: Kubectl, cluster: ClusterInfo, metrics_port: int, operator_log: Path) -> Iterator[None]:
    """The operator, in-process (what `necrocode-operator` runs: kopf with our settings and memo,
    in a thread with its own event loop), serving the nc-* namespaces, with its Prometheus
    endpoint on 127.0.0.1:<metrics_port>."""
    import asyncio
    import threading

    from necrocode.handlers import lifecycle
    from necrocode.settings import Settings

    if os.environ.get("NECROCODE_TEST_EXTERNAL_OPERATOR"):  # one already serving the nc-* namespaces (e.g. the chart)
        operator_log.write_text("")
        yield
        return
    os.environ.update(operator_env(cluster, metrics_port))
    stop, failure = threading.Event(), list[BaseException]()

    def run() -> None:
        try:
            asyncio.run(lifecycle.operate(Settings.from_env(), [f"{SHARED_NS_PREFIX}*"], liveness=None,
                                          stop_flag=stop))
        except BaseException as exc:  # reported when the session ends
            failure.append(exc)

    # the operator's own log, readable after a failure
    from necrocode.logs import JsonFormatter

    handler = logging.FileHandler(operator_log, mode="w")
    handler.setFormatter(JsonFormatter())
    ours = logging.getLogger("necrocode")
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)  # what necrocode-operator logs by default (logs.configure)
    print(f"\noperator log: {operator_log}", file=sys.stderr)
    thread = threading.Thread(target=run, name="operator", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)
        ours.removeHandler(handler)
        ours.setLevel(logging.NOTSET)
    assert not thread.is_alive(), "the operator did not stop within 60 s"
    if failure:
        raise failure[0]


@pytest.fixture
def unreachable_node(kube: Kubectl) -> Iterator[str]:
    """A Node whose kubelet nobody serves (a lost node, as the API server sees it), removed after the test."""
    name = f"lost-{uuid.uuid4().hex[:8]}"
    create_unreachable_node(kube, name)
    yield name
    kube.core.delete_node(name)


@pytest.fixture
def clean_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No NECROCODE_* variable for the test (restored after it): Settings.from_env() reads only
    what the test sets. The session's operator fixture puts its settings into this process's
    environment, which a test of the defaults must not see."""
    for key in [k for k in os.environ if k.startswith("NECROCODE_")]:
        monkeypatch.delenv(key)
