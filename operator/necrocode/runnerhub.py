"""RunnerHub: one watch of the runner pods per namespace, shared by every cancellation at work
there, in place of one watch connection per cancellation.

Why: every watch is a TLS connection of its own, and an open one costs the operator about
317 KiB of RSS (asyncio's SSL protocol allocates a 128 KiB read buffer per connection, OpenSSL
keeps its own buffers and state, aiohttp a parser and a stream): measured with 1,000 watches
opened through necrocode.kube.Kube, +309 MiB, not given back after they closed. 1,000
JobCancellations of 5 runners at once (issue 19) held 1,000 such watches, over half of the
operator's peak RSS. One metadata-only watch of `necrocode.io/role=runner` per namespace
carries the same events; the hub hands each one to the subscriptions whose label selector
matches it (indexed by their job, so an event is checked against its job's subscribers only).

The rules a subscriber relies on:
- it subscribes BEFORE it lists (`await subscription.renew()`, then the list): the hub's watch
  starts from a resourceVersion read before `renew` returns, so nothing that happens after the
  subscriber's list is missed. Events from before its list may come too (a duplicate or a stale
  state); the terminator is idempotent and takes the newest state as it comes;
- when the watch breaks it resumes from the last resourceVersion seen, and every subscriber
  gets {"type": "RESYNC"} (it lists again), as the per-cancellation watch did; after 410 Gone
  the hub reads a fresh resourceVersion first;
- no cache: the hub holds no pod, only its subscribers; an event goes into the queues of the
  subscribers it matches (each a cancellation's own, emptied by its terminator) and nowhere else;
- a namespace's watch starts when its first subscriber comes and stops when its last leaves.
The watch is the operator's, not a cancellation's: it passes no cancellation's API budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Generic, TypeVar

from necrocode.budget import CURRENT
from necrocode.clock import Clock
from necrocode.kube import ApiError, Gone, Kube, core_path
from necrocode.logs import log
from necrocode.model import LABEL_ROLE, ROLE_RUNNER

Obj = dict[str, Any]
S = TypeVar("S")
RUNNERS = f"{LABEL_ROLE}={ROLE_RUNNER}"
"""What the hub watches: every runner pod of the namespace (metadata only)."""
RESYNC: Obj = {"type": "RESYNC"}
Requirement = tuple[str, str, str]
"""(key, op, value): op "=" or "!=" (value compared), "exists" or "!exists" (value unused)."""


# ----------------------------------------------------------------------------- pure: routing
def parse_selector(text: str) -> tuple[Requirement, ...]:
    """An equality-based label selector ("a=b,c==d,e!=f,g,!h"), the kind the operator builds.
    A set-based one (in, notin) is refused rather than matched wrongly."""
    if "(" in text:
        raise ValueError(f"set-based label selector not supported here: {text!r}")
    out: list[Requirement] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if "!=" in part:
            key, value = part.split("!=", 1)
            out.append((key.strip(), "!=", value.strip()))
        elif "=" in part:
            key, value = part.split("==", 1) if "==" in part else part.split("=", 1)
            out.append((key.strip(), "=", value.strip()))
        elif part.startswith("!"):
            out.append((part[1:].strip(), "!exists", ""))
        elif " " in part:
            raise ValueError(f"label selector not understood: {text!r}")
        else:
            out.append((part, "exists", ""))
    return tuple(out)


def matches(requirements: Iterable[Requirement], labels: Mapping[str, str]) -> bool:
    for key, op, value in requirements:
        have = labels.get(key)
        if (op == "=" and have != value) or (op == "!=" and have == value) \
                or (op == "exists" and have is None) or (op == "!exists" and have is not None):
            return False
    return True


class Fanout(Generic[S]):
    """The subscribers of one watch with their selectors, indexed by their first equality
    requirement (a cancellation's necrocode.io/job=...): an event is checked against the
    subscribers of its own job, not against every subscriber."""

    def __init__(self) -> None:
        self._selectors: dict[S, tuple[Requirement, ...]] = {}
        self._index: dict[tuple[str, str], set[S]] = {}
        self._keys: dict[str, int] = {}
        """Index keys in use (label key -> subscribers indexed by it)."""
        self._rest: set[S] = set()
        """Subscribers without an equality requirement: checked for every event."""

    def __len__(self) -> int:
        return len(self._selectors)

    def __contains__(self, sub: object) -> bool:
        return sub in self._selectors

    def add(self, sub: S, requirements: tuple[Requirement, ...]) -> None:
        self.discard(sub)
        self._selectors[sub] = requirements
        key = _index_key(requirements)
        if key is None:
            self._rest.add(sub)
        else:
            self._index.setdefault(key, set()).add(sub)
            self._keys[key[0]] = self._keys.get(key[0], 0) + 1

    def discard(self, sub: S) -> None:
        requirements = self._selectors.pop(sub, None)
        if requirements is None:
            return
        key = _index_key(requirements)
        if key is None:
            self._rest.discard(sub)
            return
        subs = self._index.get(key, set())
        subs.discard(sub)
        if not subs:
            self._index.pop(key, None)
        self._keys[key[0]] -= 1
        if not self._keys[key[0]]:
            del self._keys[key[0]]

    def route(self, labels: Mapping[str, str]) -> list[S]:
        """The subscribers whose selector matches these labels."""
        candidates: list[S] = list(self._rest)
        for key in self._keys:
            value = labels.get(key)
            if value is not None:
                candidates.extend(self._index.get((key, value), ()))
        return [s for s in candidates if matches(self._selectors[s], labels)]

    def everyone(self) -> list[S]:
        return list(self._selectors)


def _index_key(requirements: tuple[Requirement, ...]) -> tuple[str, str] | None:
    return next(((k, v) for k, op, v in requirements if op == "="), None)


# ----------------------------------------------------------------------------- the hub
class Subscription:
    """One subscriber's events, in order: {type, object} as the watch sends them (pods'
    metadata), and {"type": "RESYNC"} when it must list again. Not subscribed until `renew`."""

    def __init__(self, hub: RunnerHub, namespace: str, selector: str):
        self.hub, self.namespace, self.selector = hub, namespace, selector
        self.requirements = parse_selector(selector)
        self.queue: asyncio.Queue[Obj] = asyncio.Queue()
        self.subscribed = False

    async def renew(self) -> None:
        """Call right before a list: from now on the queue holds what happens after it (a fresh
        queue: what came before that list is in the list)."""
        self.queue = asyncio.Queue()
        if not self.subscribed:
            await self.hub.join(self)

    def close(self) -> None:
        """Leave the hub (idempotent); the queue is dropped at the next renew."""
        if self.subscribed:
            self.hub.leave(self)


class RunnerHub:
    """The operator's runner watches, one per namespace with subscribers (one hub per operator:
    the CancellationService holds it)."""

    def __init__(self, kube: Kube, clock: Clock):
        self.kube, self.clock = kube, clock
        self._feeds: dict[str, _Feed] = {}

    def subscription(self, namespace: str, selector: str) -> Subscription:
        return Subscription(self, namespace, selector)

    @property
    def watching(self) -> list[str]:
        """The namespaces watched now."""
        return sorted(self._feeds)

    async def join(self, sub: Subscription) -> None:
        feed = self._feeds.get(sub.namespace)
        if feed is None:
            feed = self._feeds[sub.namespace] = _Feed(self.kube, sub.namespace, self.clock)
        feed.fanout.add(sub, sub.requirements)
        sub.subscribed = True
        try:
            await asyncio.shield(feed.armed)
        except BaseException:
            self.leave(sub)
            raise

    def leave(self, sub: Subscription) -> None:
        sub.subscribed = False
        feed = self._feeds.get(sub.namespace)
        if feed is None:
            return
        feed.fanout.discard(sub)
        if not feed.fanout:
            del self._feeds[sub.namespace]
            feed.stop()

    async def close(self) -> None:
        """Stop every watch (the operator stops)."""
        feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:
            feed.stop()
        for feed in feeds:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feed.task


class _Feed:
    """One namespace's watch and its subscribers."""

    def __init__(self, kube: Kube, namespace: str, clock: Clock):
        self.kube, self.namespace, self.clock = kube, namespace, clock
        self.path = core_path(namespace, "pods")
        self.fanout: Fanout[Subscription] = Fanout()
        self.armed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Done once the watch's start resourceVersion is read (or that read failed)."""
        self.rv: str | None = None
        self.task = asyncio.create_task(self._run(), name=f"runner watch {namespace}")

    def stop(self) -> None:
        self.task.cancel()
        if not self.armed.done():
            self.armed.cancel()

    def _deliver(self, event: Obj) -> None:
        labels = ((event.get("object") or {}).get("metadata") or {}).get("labels") or {}
        for sub in self.fanout.route(labels):
            sub.queue.put_nowait(event)

    def _resync(self) -> None:
        for sub in self.fanout.everyone():
            sub.queue.put_nowait(RESYNC)

    async def _start_rv(self) -> str:
        """The resourceVersion to watch from: a consistent list of one runner (its answer's
        resourceVersion is the store's now), not of all of them."""
        out = await self.kube.list_page(self.path, label_selector=RUNNERS, limit=1, meta_only=True)
        return str((out.get("metadata") or {}).get("resourceVersion") or "")

    async def _run(self) -> None:
        CURRENT.set(None)  # the operator's watch, not the first subscriber's: no cancellation's budget
        backoff = 0.2
        while True:
            if self.rv is None:  # the start, or after 410 Gone
                try:
                    self.rv = await self._start_rv()
                except ApiError as exc:
                    if not self.armed.done():
                        self.armed.set_exception(exc)  # the subscribers' lists would fail too: their step says so
                        return
                    log("runner watch: reading its start failed; trying again", logging.WARNING,
                        namespace=self.namespace, error=str(exc))
                    await self.clock.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                if self.armed.done():
                    self._resync()  # after 410 Gone: what happened meanwhile is in each subscriber's list
                else:
                    self.armed.set_result(None)
            try:
                async for event in self.kube.watch(self.path, label_selector=RUNNERS, resource_version=self.rv,
                                                   meta_only=True):
                    meta = (event.get("object") or {}).get("metadata") or {}
                    if meta.get("resourceVersion"):
                        self.rv = meta["resourceVersion"]
                    if event.get("type") != "BOOKMARK":
                        self._deliver(event)
                    backoff = 0.2
            except Gone:
                self.rv = None
            except ApiError as exc:
                log("runner watch broken, resuming", logging.WARNING, namespace=self.namespace, error=str(exc))
                await self.clock.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self._resync()
