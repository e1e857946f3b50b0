"""One job's label-selector lists, made together for the jobs that ask at once.

Why: a budget cut stops hundreds of jobs of one namespace at once (issue 19). Each cancellation
lists its job's tasks, runners, slots and scratch objects by `necrocode.io/job=<name>`; each such
list costs the API server a request, and a pass over every object of that kind in the namespace.
Here, a list asked while one of the same kind (path, the rest of the selector, field selector,
metadata only) is in flight waits for that one to end, then goes out with the others that came
meanwhile as one request, `necrocode.io/job in (a,b,...)`; each asker gets its own job's items.

What it keeps:
  - freshness: an ask is never answered by a request that started before it was asked, so each
    answer is as recent as a list of its own would have been;
  - a lone list goes at once, as before (one cancellation pays nothing for this);
  - failures: every asker of a request that failed gets its error, as from its own list;
  - budgets: the shared request is charged to the client's budget only, not to the budget of
    the cancellation that happened to ask first (necrocode.budget.CURRENT is unset in it).
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
Lister = Callable[[str, str, "str | None", bool], Awaitable[tuple[list[Obj], str]]]
"""(path, label selector, field selector, metadata only) -> (items, the list's resourceVersion)"""

JOB_LABEL = "necrocode.io/job"
MAX_JOBS = 100
"""Jobs in one request: the selector stays a few KiB (names of at most 63 characters), and one
answer at most 100 jobs' objects."""

_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
"""A label value that needs no quoting in a set-based term."""


def terms(selector: str) -> list[str]:
    """The comma-separated terms of a label selector; commas inside `in (...)` do not split."""
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur).strip())
    return [t for t in out if t]


def job_term(selector: str | None) -> tuple[str, str] | None:
    """(job, the selector's other terms) when the selector names one job by equality
    (`necrocode.io/job=<name>` or `==`) and says nothing else of that label; else None (the
    list is made as asked)."""
    if not selector:
        return None
    job: str | None = None
    rest: list[str] = []
    for t in terms(selector):
        key, op, value = _split(t)
        if key != JOB_LABEL:
            if JOB_LABEL in t:  # `!necrocode.io/job`, `necrocode.io/job in (...)`, `!=`
                return None
            rest.append(t)
        elif op in ("=", "==") and job is None and _VALUE.match(value):
            job = value
        else:
            return None
    return (job, ",".join(rest)) if job is not None else None


def _split(term: str) -> tuple[str, str, str]:
    for op in ("==", "!=", "="):
        if op in term:
            key, value = term.split(op, 1)
            return key.strip(), op, value.strip()
    return term, "", ""


def joined(jobs: list[str], rest: str) -> str:
    """The selector of one request for `jobs` (sorted, distinct) and the other terms."""
    sel = f"{JOB_LABEL}={jobs[0]}" if len(jobs) == 1 else f"{JOB_LABEL} in ({','.join(jobs)})"
    return f"{sel},{rest}" if rest else sel


@dataclass
class _Ask:
    job: str
    answer: asyncio.Future[tuple[list[Obj], str]]


Key = tuple[str, str, "str | None", bool]


class JobLists:
    """The lists of one client (necrocode.kube.Kube.list_all sends those `job_term` accepts here)."""

    def __init__(self, lister: Lister, max_jobs: int = MAX_JOBS):
        self._lister, self.max_jobs = lister, max_jobs
        self._queued: dict[Key, list[_Ask]] = {}
        self._busy: set[Key] = set()
        self._drains: set[asyncio.Task[None]] = set()
        self.asked = 0
        """lists asked (for the tests and the benchmarks: asked - sent is what was saved)"""
        self.sent = 0
        """requests made for them"""

    async def list_job(self, path: str, job: str, rest: str, field_selector: str | None,
                   meta_only: bool) -> tuple[list[Obj], str]:
        key: Key = (path, rest, field_selector, meta_only)
        ask = _Ask(job, asyncio.get_running_loop().create_future())
        self.asked += 1
        self._queued.setdefault(key, []).append(ask)
        if key not in self._busy:
            self._busy.add(key)
            # no cancellation's budget in the shared request: a fresh context leaves CURRENT unset
            drain = asyncio.get_running_loop().create_task(self._drain(key), context=contextvars.Context())
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        return await ask.answer  # a cancelled asker cancels its future; the request goes on for the others

    async def _drain(self, key: Key) -> None:
        """Send what is queued for `key`, again while more came during the last request."""
        try:
            while asks := [a for a in self._queued.pop(key, []) if not a.answer.done()]:
                jobs = sorted({a.job for a in asks})
                chunks = [jobs[i:i + self.max_jobs] for i in range(0, len(jobs), self.max_jobs)]
                await asyncio.gather(*(self._send(key, set(c), [a for a in asks if a.job in c]) for c in chunks))
        finally:
            self._busy.discard(key)
            for a in self._queued.pop(key, []):  # only when the drain itself was cancelled
                a.answer.cancel()

    async def _send(self, key: Key, jobs: set[str], asks: list[_Ask]) -> None:
        path, rest, field_selector, meta_only = key
        self.sent += 1
        try:
            items, rv = await self._lister(path, joined(sorted(jobs), rest), field_selector, meta_only)
        except BaseException as exc:
            for a in asks:
                if not a.answer.done():
                    if isinstance(exc, asyncio.CancelledError):
                        a.answer.cancel()
                    else:
                        a.answer.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        by_job: dict[str, list[Obj]] = {}
        for o in items:
            labels = (o.get("metadata") or {}).get("labels") or {}
            by_job.setdefault(str(labels.get(JOB_LABEL)), []).append(o)
        answered: set[str] = set()
        for a in asks:
            if a.answer.done():
                continue
            mine = by_job.get(a.job, [])
            # two asks of one job get their own copies: a caller may change what it listed
            a.answer.set_result((copy.deepcopy(mine) if a.job in answered else list(mine), rv))
            answered.add(a.job)
