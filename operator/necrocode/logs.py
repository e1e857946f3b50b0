"""Structured logs: one JSON object a line with cancellation, job, task, runner, step and
duration on every line (null where it does not apply), or readable text for local runs."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

CONTEXT_FIELDS = ("cancellation", "kind", "namespace", "job", "task", "runner", "step", "duration")
_LOGGER = logging.getLogger("necrocode")


class JsonFormatter(logging.Formatter):
    converter = staticmethod(time.gmtime)
    """`ts` is UTC (the Z it ends with says so), whatever the machine's time zone."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        ctx = getattr(record, "ctx", {}) or {}
        for key in CONTEXT_FIELDS:
            out[key] = ctx.get(key)
        for key, value in ctx.items():
            if key not in out:
                out[key] = value
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ctx = getattr(record, "ctx", {}) or {}
        fields = " ".join(f"{k}={v}" for k, v in ctx.items() if v is not None)
        base = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname[:4]} {record.getMessage()}"
        return f"{base}  {fields}" if fields else base


def configure(fmt: str = "json", level: str = "INFO") -> None:
    """Route our logs and kopf's through one handler in the chosen format.

    Neither format writes where a call was made from, nor its thread or process, so the records
    do not collect them (the logging HOWTO's "Optimization"): a cancellation of 5,000 runners
    logs 20,000 lines, and finding each one's caller in the stack cost about a fifth of the
    operator's time in logging (docs/benchmarks.md, session 22)."""
    logging._srcfile = None  # no caller's file and line
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def log(event: str, level: int = logging.INFO, **ctx: Any) -> None:
    """Log one structured event; `ctx` holds cancellation/job/task/runner/step/duration and more."""
    _LOGGER.log(level, event, extra={"ctx": ctx})


class Bound:
    """A logger with some context fixed (the cancellation, its job, the current step)."""

    def __init__(self, **ctx: Any):
        self.ctx = ctx

    def bind(self, **more: Any) -> Bound:
        return Bound(**{**self.ctx, **more})

    def info(self, event: str, **ctx: Any) -> None:
        log(event, logging.INFO, **{**self.ctx, **ctx})

    def warning(self, event: str, **ctx: Any) -> None:
        log(event, logging.WARNING, **{**self.ctx, **ctx})

    def error(self, event: str, **ctx: Any) -> None:
        log(event, logging.ERROR, **{**self.ctx, **ctx})
