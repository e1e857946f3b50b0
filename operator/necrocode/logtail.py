"""A runner's log tail as it is kept: the bounded buffer, the text, the artifact ConfigMap's body
and labels, and how a new reading merges with an earlier one (pure: no I/O; necrocode.logkeeper
reads the log through the pods/log subresource and writes the ConfigMap).

Why bounded: a runner's log may be gigabytes; what is kept is its last N KiB, and the operator
never holds more than N KiB plus one network chunk of it, whatever its size. Why the cut drops a
leading fragment: the cut is at a byte count, which can fall inside a multi-byte UTF-8 character;
its orphaned continuation bytes are not part of any character of the log, so they are dropped
rather than shown as a replacement character.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from necrocode.model import (
    ANNOTATION_LOG_OF,
    LABEL_ARTIFACT,
    LABEL_JOB,
    LABEL_JOB_UID,
    LABEL_KEPT_LOG,
    LABEL_TASK,
    KeptLog,
)
from necrocode.naming import label_ok

TAIL_KIB_MIN, TAIL_KIB_MAX = 1, 512
"""NECROCODE_LOG_TAIL_KIB's range: a ConfigMap holds at most 1 MiB, and a tail of invalid UTF-8
could double in size when decoded if it were not cut again (`tail_text`)."""
LOG_KEY = "log"
"""The ConfigMap's data key that holds the log text."""
ANNOTATION_LOG_CONTAINER = "necrocode.io/log-container"
ANNOTATION_LOG_TRUNCATED = "necrocode.io/log-truncated"


@dataclass(frozen=True)
class KeptText:
    text: str
    bytes: int
    """UTF-8 bytes of `text`: what the ConfigMap holds, at most the tail limit."""
    truncated: bool
    """The log was longer than what is kept."""


class TailBuffer:
    """The last `limit` bytes of everything fed to it, and how many bytes that was in all."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"a log tail must keep at least one byte, not {limit}")
        self.limit = limit
        self.seen = 0
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        if len(chunk) >= self.limit:
            self._buf[:] = chunk[-self.limit:]
            return
        self._buf += chunk
        if len(self._buf) > self.limit:
            del self._buf[:len(self._buf) - self.limit]

    def kept(self) -> KeptText:
        return tail_text(bytes(self._buf), self.limit, cut=self.seen > len(self._buf))


def tail_lines(limit: int) -> int:
    """The tailLines to ask the API server for, so that it sends at least the last `limit` bytes
    and no more lines than that: every line is at least one byte (its newline), so the last
    `limit + 1` lines hold the last `limit` bytes, and when lines were left out the answer is
    longer than `limit`, which is how a cut is told from a log of exactly `limit` bytes. (Not
    limitBytes: that keeps the beginning of the log, not its end.)"""
    return limit + 1


def _drop_fragment(data: bytes) -> bytes:
    """`data` without the continuation bytes (10xxxxxx) of a character cut at its start (at most 3)."""
    i = 0
    while i < min(3, len(data)) and data[i] & 0xC0 == 0x80:
        i += 1
    return data[i:]


def tail_text(data: bytes, limit: int, *, cut: bool) -> KeptText:
    """The last at most `limit` bytes of `data` as text: UTF-8 decoded, invalid bytes replaced;
    a character cut by the start of the tail left out; cut again when replacements made it
    longer than `limit` (an invalid byte is one byte, its replacement character three). `cut`:
    `data` is already the end of a longer log."""
    if len(data) > limit:
        data, cut = data[-limit:], True
    if cut:
        data = _drop_fragment(data)
    text = data.decode("utf-8", errors="replace")
    encoded = text.encode("utf-8")
    if len(encoded) > limit:
        text = _drop_fragment(encoded[-limit:]).decode("utf-8")  # valid now: whole characters only
        encoded, cut = text.encode("utf-8"), True
    return KeptText(text, len(encoded), cut)


KUBELET_LOG_ERROR = re.compile(r"(unable to retrieve container logs for \S+|failed to try resolving symlinks in path .*)")
"""A kubelet that cannot read a container's log (its container removed: the kubelet removes the
dead containers of a deleted pod at once) may answer 200 OK with its error as the body: it sent
the headers before it knew (kubelet server, GetKubeletContainerLogs)."""


def kubelet_error(kept: KeptText) -> str | None:
    """The kubelet's error when the whole answer is one (see KUBELET_LOG_ERROR), else None: such
    an answer is not the runner's log, and must never replace a log kept earlier."""
    text = kept.text.strip()
    if kept.truncated or "\n" in text or not KUBELET_LOG_ERROR.fullmatch(text):
        return None
    return text


def kept_log_labels(job: str, task: str | None, job_uid: str | None) -> dict[str, str]:
    """An artifact of the job (and task), marked as a kept log so that no cleanup deletes it:
    the values that may be label values (a task id or uid that may not is in no selector
    anyway)."""
    labels = {LABEL_ARTIFACT: "true", LABEL_KEPT_LOG: "true"}
    for key, value in ((LABEL_JOB, job), (LABEL_TASK, task), (LABEL_JOB_UID, job_uid)):
        if value and label_ok(value):
            labels[key] = value
    return labels


def is_kept_log(obj: Mapping[str, Any]) -> bool:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_KEPT_LOG) == "true"


def log_configmap(name: str, namespace: str, *, pod: str, container: str, kept: KeptText,
                  labels: Mapping[str, str], owner: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The whole ConfigMap, as one server-side apply writes it (creates or replaces the kept
    text; the same name for the same pod, so a second reading updates it)."""
    meta: dict[str, Any] = {
        "name": name, "namespace": namespace, "labels": dict(labels),
        "annotations": {ANNOTATION_LOG_OF: pod, ANNOTATION_LOG_CONTAINER: container,
                        ANNOTATION_LOG_TRUNCATED: "true" if kept.truncated else "false"},
    }
    if owner:
        meta["ownerReferences"] = [dict(owner)]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {LOG_KEY: kept.text}}


def merge_kept(earlier: Iterable[KeptLog], latest: Iterable[KeptLog]) -> list[KeptLog]:
    """One entry per pod, the latest reading's, except that a failed reading never replaces a
    kept one: the pod is gone or its node lost by the time of a second reading (during the grace,
    after an operator restart), and the ConfigMap still holds what the first reading kept."""
    out = {k.pod: k for k in earlier}
    for k in latest:
        before = out.get(k.pod)
        if k.error and before is not None and before.config_map and not before.error:
            continue
        out[k.pod] = k
    return list(out.values())
