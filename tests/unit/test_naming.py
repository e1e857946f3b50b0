"""Generated cancellation names (necrocode.naming): a valid DNS-1123 subdomain for every job and
task id, since the API server refuses (422) any name that is not one; the REST API and the CLI
both create with these names."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from necrocode.naming import NAME_MAX, dns_part, generate_name

# k8s.io/apimachinery's IsDNS1123Subdomain: dot-separated labels, each [a-z0-9] at both ends
DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = re.compile(rf"^{DNS1123_LABEL}(\.{DNS1123_LABEL})*$")
WHEN = datetime(2026, 11, 25, 9, 30, 12, tzinfo=UTC)


def valid(name: str) -> bool:
    return len(name) <= NAME_MAX and bool(DNS1123_SUBDOMAIN.match(name))


@pytest.mark.parametrize(("task", "prefix"), [
    ("a._b", "job1-a.b"), ("a..b", "job1-a.b"), ("-x-", "job1-x"), (".", "job1"), ("a_-_b", "job1-a-b"),
    ("x.-y", "job1-x.y"), ("Build.API", "job1-build.api"), ("tâche-été", "job1-t-che-t"), ("日本", "job1"),
    ("a" * 300, "job1-" + "a" * 221), ("a." * 150, "job1-" + ".".join("a" * 111)), (None, "job1"),
])
def test_awkward_task_ids_give_valid_names(task: str | None, prefix: str) -> None:
    name = generate_name("job1", task, WHEN)
    assert valid(name), name
    assert name.startswith(prefix + "-cancel-20261125093012-"), name


@pytest.mark.parametrize("job", ["", ".", "-", "___", "日本", "A" * 400, "a.-b..c-", "x" * 224 + ".y"])
def test_awkward_job_names_give_valid_names(job: str) -> None:
    assert valid(generate_name(job, None, WHEN))
    assert valid(generate_name(job, ".-_", WHEN))


@given(job=st.text(max_size=300), task=st.none() | st.text(max_size=300))
def test_every_job_and_task_id_gives_a_valid_name(job: str, task: str | None) -> None:
    name = generate_name(job, task, WHEN)
    assert valid(name), (job, task, name)
    assert re.search(r"-cancel-20261125093012-[0-9a-f]{4}$", name)


@given(text=st.text(alphabet="aZ09._-/ é", max_size=80))
def test_dns_part_is_empty_or_a_valid_subdomain(text: str) -> None:
    part = dns_part(text)
    assert part == "" or DNS1123_SUBDOMAIN.match(part), (text, part)


def test_valid_names_are_kept_as_they_are() -> None:
    for job, task in (("job1", "t3"), ("my.job-2", "build-api"), ("job1", "a.b")):
        assert generate_name(job, task, WHEN).startswith(f"{job}-{task}-cancel-")
