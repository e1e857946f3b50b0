"""Kept runner logs, the pure parts (necrocode.logtail, naming.kept_log_name): the tail a user
finds in the artifact ConfigMap is exactly the end of the log, at most the limit, valid text
whatever the bytes; memory stays bounded whatever the log's size; the name is valid and stable;
a failed second reading never loses the first; bad settings are refused with a clear error."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from necrocode.logtail import (
    LOG_KEY,
    KeptText,
    TailBuffer,
    is_kept_log,
    kept_log_labels,
    log_configmap,
    merge_kept,
    tail_lines,
)
from necrocode.model import KeptLog
from necrocode.naming import NAME_MAX, kept_log_name
from necrocode.policies.resume import cancellation_bound, log_keeping_bound
from necrocode.settings import Settings

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
CHECK = "✓".encode()  # three bytes: e2 9c 93


def keep(log: bytes, limit: int, chunk: int) -> KeptText:
    buf = TailBuffer(limit)
    for i in range(0, len(log), chunk):
        buf.feed(log[i:i + chunk])
    return buf.kept()


@pytest.mark.parametrize("chunk", [1, 3, 7, 4096])
@pytest.mark.parametrize(("log", "limit", "text", "truncated"), [
    (b"", 16, "", False),                                                      # empty log
    (b"hello\n", 16, "hello\n", False),                                        # shorter than the tail
    (b"0123456789abcde\n", 16, "0123456789abcde\n", False),                    # exactly the tail
    (b"line 1\nline 2\nline 3\n", 8, "\nline 3\n", True),                        # longer: its end
    (b"x" * 10 + CHECK * 2, 5, "✓", True),                                     # cut inside a character
    (b"x" * 10 + CHECK * 2, 6, "✓✓", True),                                    # cut between characters
    ("é".encode() * 8, 16, "é" * 8, False),                                    # two-byte characters, all kept
    ("é".encode() * 8, 15, "é" * 7, True),                                     # ...one cut in half
    (b"ok \xff\xfe end\n", 64, "ok \ufffd\ufffd end\n", False),                # invalid bytes replaced
    (b"\xff" * 10, 10, "\ufffd" * 3, True),                                    # ...and still within the limit
])
def test_the_kept_tail_is_the_end_of_the_log(log: bytes, limit: int, text: str, truncated: bool, chunk: int) -> None:
    kept = keep(log, limit, chunk)
    assert kept == KeptText(text, len(text.encode()), truncated)
    assert kept.bytes <= limit


@given(st.binary(max_size=600), st.integers(min_value=1, max_value=80), st.integers(min_value=1, max_value=50))
def test_any_log_keeps_valid_text_within_the_limit(log: bytes, limit: int, chunk: int) -> None:
    kept = keep(log, limit, chunk)
    assert kept.bytes == len(kept.text.encode()) <= limit
    whole = log.decode("utf-8", errors="replace")
    assert kept.truncated == (len(whole.encode()) > limit)
    if not kept.truncated:
        assert kept.text == whole


@given(st.text(max_size=300), st.integers(min_value=4, max_value=80))
def test_a_utf8_log_keeps_a_suffix_at_most_three_bytes_short_of_the_limit(text: str, limit: int) -> None:
    data = text.encode()
    kept = keep(data, limit, 13)
    assert data.endswith(kept.text.encode())
    assert kept.bytes >= min(len(data), limit - 3)  # only a cut character's bytes are left out


def test_the_buffer_never_holds_more_than_the_tail() -> None:
    buf = TailBuffer(1024)
    block = bytes(range(256)) * 64  # 16 KiB
    for _ in range(640):  # 10 MiB
        buf.feed(block)
        assert len(buf._buf) <= 1024
    assert buf.seen == 640 * len(block)


@given(st.lists(st.text(alphabet="ab✓é\n", max_size=12), max_size=60), st.integers(min_value=1, max_value=40))
def test_asking_for_tail_lines_gives_the_same_tail_as_reading_the_whole_log(lines: list[str], limit: int) -> None:
    """What the API server sends for tailLines=tail_lines(limit) is kept exactly as the whole log
    would be, truncation flag included (the kubelet's tail counts newline-terminated lines)."""
    log = "".join(line.rstrip("\n") + "\n" for line in lines).encode()
    served = b"".join(log.splitlines(keepends=True)[-tail_lines(limit):])
    assert keep(served, limit, 5) == keep(log, limit, 5)


def test_a_buffer_keeps_at_least_one_byte() -> None:
    with pytest.raises(ValueError, match="at least one byte"):
        TailBuffer(0)


@pytest.mark.parametrize("pod", ["job1-a-runner", "Runner_X", "a" * 253, "-.-", "x." * 120, "日本"])
def test_kept_log_names_are_valid_and_stable(pod: str) -> None:
    name = kept_log_name(pod, "uid-1")
    assert len(name) <= NAME_MAX and DNS1123_SUBDOMAIN.match(name), name
    assert name == kept_log_name(pod, "uid-1")  # a re-run writes the same ConfigMap
    assert name != kept_log_name(pod, "uid-2")  # a recreated job's runner never overwrites it
    assert name != kept_log_name(pod + "x", "uid-1")


def test_labels_mark_an_artifact_of_the_job_and_task_that_no_cleanup_deletes() -> None:
    labels = kept_log_labels("job1", "build-api", "0c0ffee")
    assert labels == {"necrocode.io/artifact": "true", "necrocode.io/kept-log": "true", "necrocode.io/job": "job1",
                      "necrocode.io/task": "build-api", "necrocode.io/job-uid": "0c0ffee"}
    assert "necrocode.io/task" not in kept_log_labels("job1", "not a label value!", "")
    body = log_configmap("r-log-1", "ns", pod="r", container="runner", kept=KeptText("end\n", 4, True),
                         labels=labels, owner={"kind": "JobCancellation", "name": "c", "uid": "u"})
    assert body["data"] == {LOG_KEY: "end\n"} and is_kept_log(body)
    assert body["metadata"]["annotations"] == {"necrocode.io/log-of": "r", "necrocode.io/log-container": "runner",
                                               "necrocode.io/log-truncated": "true"}
    assert body["metadata"]["ownerReferences"] == [{"kind": "JobCancellation", "name": "c", "uid": "u"}]
    assert not is_kept_log({"metadata": {"labels": {"necrocode.io/artifact": "true"}}})


def test_a_failed_second_reading_keeps_the_first() -> None:
    first = [KeptLog(pod="a", config_map="a-log-1", bytes=10), KeptLog(pod="b", error="node lost")]
    second = [KeptLog(pod="a", error="pod gone"), KeptLog(pod="b", config_map="b-log-1", bytes=5),
              KeptLog(pod="c", config_map="c-log-1", bytes=1)]
    assert merge_kept(first, second) == [first[0], second[1], second[2]]
    again = [KeptLog(pod="a", config_map="a-log-1", bytes=20)]
    assert merge_kept(first, again)[0].bytes == 20  # a later reading updates what was kept


def test_keeping_logs_is_part_of_the_cancellation_bound() -> None:
    base = cancellation_bound(30, 10, 30, 270, 8, True)
    assert log_keeping_bound(10, 270) == 280
    assert cancellation_bound(30, 10, 30, 270, 8, True, windows=2 * 280) == base + 560


@pytest.mark.parametrize(("env", "message"), [
    ({"NECROCODE_LOG_TAIL_KIB": "0"}, "NECROCODE_LOG_TAIL_KIB='0': expected 1 to 512 KiB"),
    ({"NECROCODE_LOG_TAIL_KIB": "513"}, "expected 1 to 512 KiB"),
    ({"NECROCODE_LOG_TAIL_KIB": "64k"}, "expected 1 to 512 KiB"),
    ({"NECROCODE_LOG_READ_TIMEOUT_SECONDS": "0"}, "expected seconds above 0, at most 300"),
    ({"NECROCODE_LOG_READ_TIMEOUT_SECONDS": "nan"}, "expected seconds above 0"),
])
def test_bad_log_settings_are_refused_with_a_clear_error(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                         message: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings.from_env()


@pytest.mark.usefixtures("clean_settings_env")
def test_log_settings_default_and_read(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings.from_env()
    assert (s.preserve_logs, s.log_tail_kib, s.log_read_timeout) == (False, 64, 10.0)
    monkeypatch.setenv("NECROCODE_PRESERVE_LOGS", "true")
    monkeypatch.setenv("NECROCODE_LOG_TAIL_KIB", "512")
    monkeypatch.setenv("NECROCODE_LOG_READ_TIMEOUT_SECONDS", "2.5")
    s = Settings.from_env()
    assert (s.preserve_logs, s.log_tail_kib, s.log_read_timeout) == (True, 512, 2.5)
