"""How `make test` shares the tests among its pytest-xdist workers (tests/conftest.py): a host
holds one real node, so two workers must never run real-node tests at once."""

from __future__ import annotations

import pytest

from tests.conftest import REAL_NODE_GROUP, _group


@pytest.mark.parametrize(("nodeid", "group"), [
    ("tests/cluster/test_realnode.py::test_jobcancellation_stops_real_runners", REAL_NODE_GROUP),
    ("tests/cluster/test_realnode_helm.py::test_rollback_completes", REAL_NODE_GROUP),
    ("tests/cluster/test_realnode_reclaim.py::test_x[a::b]", REAL_NODE_GROUP),
    ("tests/cluster/test_api.py::test_x", "tests/cluster/test_api.py"),
    ("tests/cluster/test_api.py::TestA::test_x[p]", "tests/cluster/test_api.py"),
    ("tests/unit/test_api_bodies.py::test_x", "tests/unit/test_api_bodies.py"),
    ("tests/test_realnode_dir/test_x.py::t", "tests/test_realnode_dir/test_x.py"),  # by the file, not its folder
])
def test_each_file_is_one_unit_and_the_real_node_files_one_together(nodeid: str, group: str) -> None:
    assert _group(nodeid) == group


def test_every_file_that_starts_the_real_node_is_in_its_group() -> None:
    """The group goes by file name: a test asking for a real-node fixture in a file of another
    name would start a second real node on another worker."""
    import ast
    from pathlib import Path

    from tests.support.realnode import __all__ as real_node_fixtures

    tests = Path(__file__).resolve().parents[1]
    users = []
    for path in tests.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
                if {a.arg for a in node.args.args} & set(real_node_fixtures):
                    users.append(path)
                    break
    assert users and all(_group(f"{p.relative_to(tests.parent)}::t") == REAL_NODE_GROUP for p in users), users
