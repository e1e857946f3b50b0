"""Lists asked at once, made as one request: one job's objects together with other jobs', and
identical lists together.

Why: a budget cut stops hundreds of jobs of one namespace at once (issue 19). Each cancellation
lists its job's tasks, runners, slots and scratch objects by `necrocode.io/job=<name>`, the slots
it released by `necrocode.io/released-by=<uid>`, and the namespace's TaskCancellations; each such
list costs the API server a request, and a pass over every object of that kind in the namespace.
Here, a list asked while one of the same kind (path, batched label, the rest of the selector,
field selector, metadata only) is in flight waits for that one to end, then goes out with the
others that came meanwhile as one request, `necrocode.io/job in (a,b,...)`, each asker getting
its own set's items; identical lists with no batched label share one request, each asker getting
every item.

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

from necrocode.model import LABEL_JOB, LABEL_RELEASED_BY

Obj = dict[str, Any]
Lister = Callable[[str, "str | None", "str | None", bool, int], Awaitable[tuple[list[Obj], str]]]
"""(path, label selector, field selector, metadata only, page size) -> (items, the list's
resourceVersion)"""

BATCHED = (LABEL_JOB, LABEL_RELEASED_BY)
"""Labels whose single-value lists are batched: a job's objects, the slots one cancellation
released (necrocode.cleaner)."""
MAX_VALUES = 100
"""Values in one request: the selector stays a few KiB (values of at most 63 characters), and one
answer holds at most 100 jobs' (or cancellations') objects."""

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


def batchable_term(selector: str | None) -> tuple[str, str, str] | None:
    """(label, value, the selector's other terms) when the selector names one object set by
    equality on a label of BATCHED (`necrocode.io/job=<name>` or `==`) and says nothing else of
    that label; else None (the list can only be shared with identical ones)."""
    for label in BATCHED:
        found = _term_of(selector or "", label)
        if found is not None:
            return (label, *found)
    return None


def _term_of(selector: str, label: str) -> tuple[str, str] | None:
    value: str | None = None
    rest: list[str] = []
    for t in terms(selector):
        key, op, v = _split(t)
        if key != label:
            if label in t and key.lstrip("!").split(" ")[0].strip() == label:  # `!label`, `label in (...)`
                return None
            rest.append(t)
        elif op in ("=", "==") and value is None and _VALUE.match(v):
            value = v
        else:
            return None
    return (value, ",".join(rest)) if value is not None else None


def _split(term: str) -> tuple[str, str, str]:
    for op in ("==", "!=", "="):
        if op in term:
            key, value = term.split(op, 1)
            return key.strip(), op, value.strip()
    return term, "", ""


def joined(label: str, values: list[str], rest: str) -> str:
    """The selector of one request for `values` (sorted, distinct) of `label` and the other terms."""
    sel = f"{label}={values[0]}" if len(values) == 1 else f"{label} in ({','.join(values)})"
    return f"{sel},{rest}" if rest else sel


@dataclass
class _Ask:
    value: str
    answer: asyncio.Future[tuple[list[Obj], str]]


Key = tuple[str, str, str, "str | None", bool, int]
"""(path, the batched label or "" for a list shared only with identical ones, the selector's
other terms, the field selector, metadata only, page size)"""


class ListCoalescer:
    """The lists of one client (necrocode.kube.Kube.list_all, once coalesce_lists was called)."""

    def __init__(self, lister: Lister, max_values: int = MAX_VALUES):
        self._lister, self.max_values = lister, max_values
        self._queued: dict[Key, list[_Ask]] = {}
        self._busy: set[Key] = set()
        self._drains: set[asyncio.Task[None]] = set()
        self.asked = 0
        """lists asked (for the tests: asked - sent is what was saved)"""
        self.sent = 0
        """requests made for them"""

    async def fetch(self, path: str, selector: str | None, field_selector: str | None,
                    meta_only: bool, page: int) -> tuple[list[Obj], str]:
        term = batchable_term(selector)
        label, value, rest = term if term is not None else ("", "", selector or "")
        key: Key = (path, label, rest, field_selector, meta_only, page)
        ask = _Ask(value, asyncio.get_running_loop().create_future())
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
                values = sorted({a.value for a in asks})
                chunks = [values[i:i + self.max_values] for i in range(0, len(values), self.max_values)]
                await asyncio.gather(*(self._send(key, c, [a for a in asks if a.value in c]) for c in chunks))
        finally:
            self._busy.discard(key)
            for a in self._queued.pop(key, []):  # only when the drain itself was cancelled
                a.answer.cancel()

    async def _send(self, key: Key, values: list[str], asks: list[_Ask]) -> None:
        path, label, rest, field_selector, meta_only, page = key
        self.sent += 1
        try:
            items, rv = await self._lister(path, joined(label, values, rest) if label else (rest or None),
                                           field_selector, meta_only, page)
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
        by_value: dict[str, list[Obj]] = {}
        for o in items:
            labels = (o.get("metadata") or {}).get("labels") or {}
            by_value.setdefault(str(labels.get(label)) if label else "", []).append(o)
        answered: set[str] = set()
        for a in asks:
            if a.answer.done():
                continue
            mine = by_value.get(a.value, [])
            # two asks of one set get their own copies: a caller may change what it listed
            a.answer.set_result((copy.deepcopy(mine) if a.value in answered else list(mine), rv))
            answered.add(a.value)
