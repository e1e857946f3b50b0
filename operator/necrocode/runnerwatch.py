"""RunnerWatches: one watch of the runner pods per namespace, shared by every cancellation at
work there, instead of one watch per cancellation.

Why: a budget cut stops a thousand jobs of one team at once, and each cancellation follows its
runners until they are gone. With a watch each, the operator held a thousand open streams (each
a TLS connection and its buffers in the operator) and the API server sent every pod event of the
namespace through a thousand label filters. One watch of the namespace's runners (label
`necrocode.io/role=runner`, so still no cache of all pods) carries the same events once; each
cancellation is handed those of its own runners (its equality selector, matched here).

How a subscriber misses nothing: it subscribes with the resourceVersion of its own list. The
shared watch keeps its most recent events (RECENT_EVENTS); a subscriber is first given those
newer than its list, then every new one, and none older than its list (an event it already
saw in the list). When what it needs is not kept any more (its list is older than the oldest
kept event), when the shared watch had to start over (410 Gone) or broke, the subscriber is
told to list again (a RESYNC event), as it was when its own watch broke.

A resourceVersion is compared as a number: etcd's are, and the API server's watch cache relies
on it too. One that is not a number (another storage) makes every new subscriber list again
and lets every event through: nothing is missed, an old event may come twice.

The shared watch starts with its first subscriber and stops with its last (nothing is kept
between two cancellations). It runs outside any cancellation's API budget: it is the
process's, like kopf's watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from necrocode.budget import CURRENT
from necrocode.clock import Clock
from necrocode.kube import ApiError, Gone, Kube, core_path
from necrocode.logs import Bound
from necrocode.model import LABEL_JOB, LABEL_ROLE, ROLE_RUNNER

Obj = dict[str, Any]
RUNNERS = f"{LABEL_ROLE}={ROLE_RUNNER}"
"""What the shared watch follows; a subscriber's selector must include it."""
RECENT_EVENTS = 2048
"""Events kept for subscribers that listed before they subscribed (a cancellation lists its
runners, signals them, then follows them): a pod's metadata without its managedFields, 1-2 KiB
each, a few MiB at most, held only while some cancellation follows runners in the namespace.
When they do not reach back to a subscriber's list, that subscriber lists once more."""
RESYNC: Obj = {"type": "RESYNC"}


def equality_selector(selector: str) -> dict[str, str] | None:
    """'a=b,c=d' -> {'a': 'b', 'c': 'd'}; None for anything else (sets, !=, existence): such a
    selector is not matched here, its user keeps a watch of its own."""
    out: dict[str, str] = {}
    for part in selector.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or key.endswith("!") or value.startswith("=") or " " in key + value:
            return None
        out[key] = value
    return out or None


def _number(rv: str) -> int | None:
    return int(rv) if rv.isdigit() else None


def _rv(ev: Obj) -> int | None:
    raw = ((ev.get("object") or {}).get("metadata") or {}).get("resourceVersion")
    return _number(raw) if isinstance(raw, str) else None


class Subscription:
    """One cancellation's share of its namespace's watch: an async iterator of the watch events
    of its runners (and RESYNC when it must list again)."""

    def __init__(self, labels: dict[str, str], since: str):
        self.labels = labels
        self.job = labels.get(LABEL_JOB)
        """The runners' job, by which the shared watch finds a pod's subscribers (None: any job)."""
        self.since = _number(since)
        self.queue: asyncio.Queue[Obj] = asyncio.Queue()

    def wants(self, ev: Obj) -> bool:
        obj_labels = ((ev.get("object") or {}).get("metadata") or {}).get("labels") or {}
        if any(obj_labels.get(k) != v for k, v in self.labels.items()):
            return False
        rv = _rv(ev)
        return self.since is None or rv is None or rv > self.since

    def give(self, ev: Obj) -> None:
        # each subscriber gets its own copy: an executor may change what it holds
        self.queue.put_nowait(orjson.loads(orjson.dumps(ev)))

    def __aiter__(self) -> AsyncIterator[Obj]:
        return self._events()

    async def _events(self) -> AsyncIterator[Obj]:
        while True:
            yield await self.queue.get()


class NamespaceWatch:
    """The shared watch of one namespace's runners, while it has subscribers."""

    def __init__(self, kube: Kube, namespace: str, since: str, clock: Clock, log: Bound,
                 on_idle: Callable[[NamespaceWatch], None]):
        self.kube, self.namespace, self.clock, self.log = kube, namespace, clock, log
        self.rv = since
        self.subscribers: set[Subscription] = set()
        self.by_job: dict[str | None, set[Subscription]] = {}
        """The subscribers by their runners' job: a pod event is matched against its job's only
        (a thousand subscribers would otherwise each test every event)."""
        self.recent: deque[tuple[int | None, str | None, Obj]] = deque(maxlen=RECENT_EVENTS)
        self.covers_from = _number(since)
        """Every event newer than this resourceVersion is in `recent` (None: not known)."""
        self._on_idle = on_idle
        self.task: asyncio.Task[None] | None = None

    def start(self) -> NamespaceWatch:
        context = contextvars.copy_context()
        context.run(CURRENT.set, None)  # the process's watch: no cancellation's budget
        self.task = asyncio.create_task(self._run(), context=context)
        return self

    def add(self, sub: Subscription) -> None:
        if sub.since is None or self.covers_from is None or sub.since < self.covers_from:
            sub.queue.put_nowait(RESYNC)  # what happened since its list is not all kept here
        else:
            for _, job, ev in self.recent:
                if (sub.job is None or job == sub.job) and sub.wants(ev):
                    sub.give(ev)
        self.subscribers.add(sub)
        self.by_job.setdefault(sub.job, set()).add(sub)

    def remove(self, sub: Subscription) -> None:
        self.subscribers.discard(sub)
        same_job = self.by_job.get(sub.job)
        if same_job is not None:
            same_job.discard(sub)
            if not same_job:
                del self.by_job[sub.job]
        if not self.subscribers:
            if self.task is not None:
                self.task.cancel()
            self._on_idle(self)

    def _keep(self, ev: Obj) -> None:
        meta = (ev.get("object") or {}).get("metadata")
        job = None
        if isinstance(meta, dict):
            meta.pop("managedFields", None)  # read by no subscriber; most of what a kept event holds
            labels = meta.get("labels")
            job = labels.get(LABEL_JOB) if isinstance(labels, dict) else None
        if len(self.recent) == self.recent.maxlen:
            self.covers_from = self.recent[0][0]
        self.recent.append((_rv(ev), job, ev))
        for group in {job, None}:
            for sub in self.by_job.get(group, ()):
                if sub.wants(ev):
                    sub.give(ev)

    def _restart(self, rv: str) -> None:
        """The watch goes on from `rv` with what happened before it unknown: every subscriber
        lists again."""
        self.rv = rv
        self.recent.clear()
        self.covers_from = _number(rv)
        for sub in self.subscribers:
            sub.queue.put_nowait(RESYNC)

    async def _run(self) -> None:
        path = core_path(self.namespace, "pods")
        breaks = 0  # in a row
        while True:
            try:
                if not self.rv:
                    page = await self.kube.list_page(path, label_selector=RUNNERS, limit=1, meta_only=True)
                    self._restart(str((page.get("metadata") or {}).get("resourceVersion") or ""))
                async for ev in self.kube.watch(path, label_selector=RUNNERS, resource_version=self.rv,
                                                meta_only=True):
                    rv = ((ev.get("object") or {}).get("metadata") or {}).get("resourceVersion")
                    if rv:
                        self.rv = rv
                    if ev.get("type") != "BOOKMARK":
                        self._keep(ev)
                    breaks = 0
            except Gone:
                self.log.info("runner watch expired, starting over", namespace=self.namespace)
                self.rv = ""
            except ApiError as exc:
                self.log.warning("runner watch broken, resuming", namespace=self.namespace, error=str(exc))
                breaks += 1
                await self.clock.sleep(self.kube.reconnect_pause(breaks, exc))
                for sub in self.subscribers:
                    sub.queue.put_nowait(RESYNC)
            except Exception as exc:  # a bug must not leave the subscribers without news for good
                self.log.error("runner watch failed, starting over", namespace=self.namespace, error=repr(exc))
                breaks += 1
                await self.clock.sleep(self.kube.reconnect_pause(breaks, exc))
                self.rv = ""


class RunnerWatches:
    """The process's shared runner watches, by namespace."""

    def __init__(self, kube: Kube, clock: Clock, log: Bound | None = None):
        self.kube, self.clock = kube, clock
        self.log = log or Bound()
        self.watches: dict[str, NamespaceWatch] = {}

    @contextlib.asynccontextmanager
    async def subscribe(self, namespace: str, selector: str, since: str) -> AsyncIterator[Subscription | None]:
        """The events of the runners `selector` picks in `namespace` that are newer than `since`
        (the resourceVersion of the subscriber's list); None when the selector is not one this
        shares (not equality-only, or without the runner label): the caller watches itself."""
        labels = equality_selector(selector)
        if labels is None or labels.get(LABEL_ROLE) != ROLE_RUNNER:
            yield None
            return
        sub = Subscription(labels, since)
        shared = self.watches.get(namespace)
        if shared is None:
            shared = self.watches[namespace] = NamespaceWatch(self.kube, namespace, since, self.clock,
                                                              self.log, self._idle).start()
        shared.add(sub)
        try:
            yield sub
        finally:
            shared.remove(sub)

    def _idle(self, shared: NamespaceWatch) -> None:
        if self.watches.get(shared.namespace) is shared:
            del self.watches[shared.namespace]
