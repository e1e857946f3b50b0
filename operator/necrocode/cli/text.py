"""Small pieces of human output shared by the views and the printers: durations, aligned
tables, who asked, kind/name references."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from necrocode.cli.terminal import Painted, terminal_safe
from necrocode.model import (
    ANNOTATION_REQUESTER,
    GROUP,
    JOB_CANCELLATION,
    CancellationResult,
    CancellationStatus,
    now_utc,
    parse_time,
)

Obj = dict[str, Any]


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s" if seconds % 1 else f"{int(seconds)}s"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def span(start: str | None, end: str | None) -> float | None:
    t0 = parse_time(start)
    if t0 is None:
        return None
    t1 = parse_time(end) or now_utc()
    return (t1 - t0).total_seconds()


def runners_text(st: CancellationStatus) -> str:
    p = st.progress
    text = f"{p.runners_terminated}/{p.runners_total}"
    return text + (f" ({p.runners_forced} forced)" if p.runners_forced else "")


def kind_ref(r: CancellationResult) -> str:
    return f"{r.kind.lower()}/{r.name}"


def requester_text(obj: Obj, short: bool = False) -> str:
    """Who asked: the user the API server recorded (annotation necrocode.io/requester), else
    the client's own claim (spec.requestedBy), marked as such; '-' when neither is there."""
    recorded = ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_REQUESTER)
    status, spec = obj.get("status") or {}, obj.get("spec") or {}
    verified = status.get("requesterVerified")
    if isinstance(recorded, str) and recorded and verified is not False:  # False: the operator trusts no annotation
        return recorded if short or verified is not True else f"{recorded} (recorded by the API server)"
    claimed = status.get("requestedBy") or spec.get("requestedBy")
    if not claimed:
        return "-"
    return f"{claimed}?" if short else f"{claimed} (unverified: the client's claim)"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "",
          phase_col: int | None = None) -> list[str]:
    """Aligned columns; the rows' cells in column `phase_col` are phases (Painted lines)."""
    rows = [[terminal_safe(c) for c in row] for row in rows]  # before measuring: an escape is wider
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines: list[str] = []
    for i, row in enumerate((headers, *rows)):
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        line = indent + "   ".join(cells).rstrip()
        if i and phase_col is not None:
            before = indent + "".join(c + "   " for c in cells[:phase_col])
            line = Painted(before, row[phase_col], line[len(before) + len(row[phase_col]):])
        lines.append(line)
    return lines


def capped(items: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def record_ref(obj: Obj) -> str:
    """kind.group/name, as `kubectl get -o name` prints it."""
    return f"{str(obj.get('kind') or JOB_CANCELLATION).lower()}.{GROUP}/{(obj.get('metadata') or {}).get('name')}"

