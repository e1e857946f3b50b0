"""Names and label values of the cancellations the CLI and the REST API create (pure, no I/O).

A generated name is `<job>[-<task>]-cancel-<UTC yyyymmddhhmmss>-<4 hex>`: lowercase, a valid
DNS-1123 subdomain of at most 253 characters for any job and task id, sortable by time within a job.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime

from necrocode.model import LABEL_JOB, LABEL_TASK

NAME_MAX = 253
LABEL_MAX = 63
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def dns_part(text: str) -> str:
    """`text` as a DNS-1123 subdomain fragment: lowercase; every run of characters a name may not
    hold turned into one '-'; dot-separated labels that each start and end alphanumeric, none
    empty. Task ids may be any label value (`a._b`, `x-.y`), and a label such as `-b` or an
    empty one between two dots would make the API server refuse the whole name (422)."""
    dashed = re.sub(r"-+", "-", re.sub(r"[^a-z0-9.-]", "-", text.lower()))
    return ".".join(label for part in dashed.split(".") if (label := part.strip("-")))


def generate_name(job: str, task: str | None = None, when: datetime | None = None) -> str:
    """<job>[-<task>]-cancel-<yyyymmddhhmmss>-<4 hex>: a valid DNS-1123 subdomain of at most
    253 characters for any job and task id (cut from the end of the prefix when too long)."""
    stamp = (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d%H%M%S")
    suffix = f"-cancel-{stamp}-{secrets.token_hex(2)}"
    prefix = dns_part(job + (f"-{task}" if task else "")) or "job"
    # a cut can end a label with '-' or leave a trailing '.': strip both, the suffix starts a new run
    return (prefix[:NAME_MAX - len(suffix)].rstrip("-.") or "job") + suffix


def label_ok(value: str) -> bool:
    """Whether `value` may be a label value (and so be used in a label selector)."""
    return len(value) <= LABEL_MAX and bool(LABEL_VALUE.match(value))


def cancellation_labels(job: str, task: str | None = None) -> dict[str, str]:
    """necrocode.io/job (and necrocode.io/task), for the values that may be label values."""
    pairs = ((LABEL_JOB, job), (LABEL_TASK, task))
    return {k: v for k, v in pairs if v and label_ok(v)}


def kept_log_name(pod: str, job_uid: str = "") -> str:
    """The artifact ConfigMap that keeps `pod`'s log: `<pod>-log-<8 hex>`, the same for the same
    pod of the same job instance (a re-run, an operator restart, a second read during the grace
    update it, never add another), a valid DNS-1123 subdomain for any pod name. The hash is of
    the job's uid and the pod's name, so a job recreated under its old name with the same pod
    names never overwrites the older job's kept logs, and two names cut alike stay apart."""
    digest = hashlib.sha256(f"{job_uid}/{pod}".encode()).hexdigest()[:8]
    suffix = f"-log-{digest}"
    return (dns_part(pod)[:NAME_MAX - len(suffix)].rstrip("-.") or "runner") + suffix
