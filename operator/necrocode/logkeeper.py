"""Keep the end of each runner's log before its pod goes (spec.preserveLogs): read through the
pods/log subresource, saved into one artifact ConfigMap per runner.

Why through the API server: it is the one way to a pod's log that works on any node (the
operator never talks to kubelets, and needs no more RBAC than `get pods/log`). Why a bound on
every read: a runner on a lost node has a kubelet nobody can reach, and a cancellation must end
within a bound computable from its spec (policies.resume.log_keeping_bound); such a runner is reported
with an error, never waited for. The decisions (the tail, the body, the name, the merge with an
earlier reading) are pure, in necrocode.logtail and necrocode.naming.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from necrocode.concurrency import bounded
from necrocode.kube import ApiError, Kube, core_path
from necrocode.logs import Bound
from necrocode.logtail import kept_log_labels, kubelet_error, log_configmap, merge_kept, tail_lines
from necrocode.model import FIELD_MANAGER, LABEL_TASK, KeptLog, clip
from necrocode.naming import kept_log_name
from necrocode.policies.resume import log_keeping_bound

Obj = dict[str, Any]
APPLY = "application/apply-patch+yaml"


async def keep_logs(kube: Kube, namespace: str, pods: Iterable[Obj | str], *, job: str, job_uid: str = "",
                    tasks_by_pod: Mapping[str, str] | None = None, owner: Mapping[str, Any] | None = None,
                    tail_kib: int = 64, read_timeout: float = 10.0, concurrency: int = 10,
                    already_kept: Iterable[KeptLog] = (), log: Bound | None = None,
                    bound: float | None = None) -> list[KeptLog]:
    """Read the last `tail_kib` KiB of each pod's log and write it into the ConfigMap named by
    naming.kept_log_name (labelled necrocode.io/artifact, job, task, job-uid and kept-log; owned
    by `owner` if given, e.g. the cancellation record). One entry per pod, `already_kept` merged
    in (logtail.merge_kept: a failed re-reading keeps the earlier kept one). Never raises for one
    pod: a log that cannot be read or saved is an entry with `error`. An empty log (a container
    that wrote nothing, a pod never scheduled) is kept as empty text.

    `pods`: pod objects (their first container's log, or the one named by the
    kubectl.kubernetes.io/default-container annotation), or names of pods that may be gone.
    `tasks_by_pod`: the task of each pod, where its necrocode.io/task label does not say it.
    Each read is bounded by `read_timeout`, retries included; the whole call by `bound`
    (default policies.resume.log_keeping_bound)."""
    limit = tail_kib * 1024
    tasks = dict(tasks_by_pod or {})
    budget = bound if bound is not None else log_keeping_bound(read_timeout, kube.retry.budget(kube.timeout))
    deadline = asyncio.get_running_loop().time() + budget
    results: dict[str, KeptLog] = {}

    async def one(pod: Obj | str) -> None:
        name, container, task = _identify(pod, tasks)
        try:
            async with asyncio.timeout_at(deadline):
                results[name] = await _keep_one(kube, namespace, name, container, task, job=job, job_uid=job_uid,
                                                owner=owner, limit=limit, read_timeout=read_timeout)
        except TimeoutError:
            results[name] = KeptLog(pod=name, task=task,
                                    error=f"not kept: the keeping of the runners' logs took its bound ({budget:g}s)")
        entry = results[name]
        if log is not None:
            if entry.error:
                log.warning("runner log not kept", pod=name, error=entry.error)
            else:
                log.info("runner log kept", pod=name, configmap=entry.config_map, bytes=entry.bytes,
                         truncated=entry.truncated)

    items = list(pods)
    await bounded(items, one, max(1, concurrency))
    return merge_kept(already_kept, (results[_identify(p, tasks)[0]] for p in items))


async def _keep_one(kube: Kube, namespace: str, pod: str, container: str | None, task: str | None, *, job: str,
                    job_uid: str, owner: Mapping[str, Any] | None, limit: int, read_timeout: float) -> KeptLog:
    try:
        async with asyncio.timeout(read_timeout):
            tail = await kube.read_tail(core_path(namespace, "pods", pod, "log"), limit,
                                        params={"container": container, "tailLines": tail_lines(limit)})
    except TimeoutError:
        return KeptLog(pod=pod, task=task, error=f"log not read within {read_timeout:g}s: the API server did not "
                                                 "get it from the pod's node (a lost node, or its kubelet is down)")
    except ApiError as exc:
        return KeptLog(pod=pod, task=task, error=clip(f"log not read: {exc}"))
    kept = tail.kept()
    if (said := kubelet_error(kept)) is not None:
        return KeptLog(pod=pod, task=task, error=clip(f"log not read: the kubelet answered {said!r} (the container "
                                                      "is removed, with its log)"))
    name = kept_log_name(pod, job_uid)
    body = log_configmap(name, namespace, pod=pod, container=container or "", kept=kept,
                         labels=kept_log_labels(job, task, job_uid), owner=owner)
    try:
        # server-side apply: creates the ConfigMap or replaces what we wrote before, in one call
        await kube.request("PATCH", core_path(namespace, "configmaps", name), body=body, content_type=APPLY,
                           params={"fieldManager": FIELD_MANAGER, "force": True}, meta_only=True)
    except ApiError as exc:
        return KeptLog(pod=pod, task=task, error=clip(f"log read but not saved in configmap/{name}: {exc}"))
    return KeptLog(pod=pod, task=task, config_map=name, bytes=kept.bytes, truncated=kept.truncated)


class RunnerLogs:
    """The kept logs of one cancellation: the KeepLogs step's reading of every runner, and one
    reading again of a runner right before it is force-deleted (it may have printed its last
    words during its grace). Holds every entry, not only those the status lists, so the counts
    stay exact."""

    def __init__(self, kube: Kube, namespace: str, *, job: str, job_uid: str, owner: Mapping[str, Any] | None,
                 tail_kib: int, read_timeout: float, concurrency: int, log: Bound | None,
                 kept: Iterable[KeptLog] = ()):
        self.kube, self.namespace, self.log = kube, namespace, log
        self.job, self.job_uid, self.owner = job, job_uid, owner
        self.tail_kib, self.read_timeout, self.concurrency = tail_kib, read_timeout, max(1, concurrency)
        self.entries: list[KeptLog] = list(kept)
        self.bound = log_keeping_bound(read_timeout, kube.retry.budget(kube.timeout))
        self._pods: dict[str, Obj | str] = {}
        self._again: set[str] = set()
        self._again_deadline: float | None = None

    @property
    def kept(self) -> int:
        return sum(1 for k in self.entries if k.config_map and not k.error)

    @property
    def failed(self) -> int:
        return sum(1 for k in self.entries if k.error)

    async def _read(self, pods: Sequence[Obj | str], bound: float, already_kept: Iterable[KeptLog] = ()) -> list[KeptLog]:
        return await keep_logs(self.kube, self.namespace, pods, job=self.job, job_uid=self.job_uid,
                               tasks_by_pod={k.pod: k.task for k in self.entries if k.task}, owner=self.owner,
                               tail_kib=self.tail_kib, read_timeout=self.read_timeout, concurrency=1,
                               already_kept=already_kept, log=self.log, bound=bound)

    async def keep(self, pods: Iterable[Obj | str], stop: asyncio.Event | None = None) -> None:
        """Read every runner's log, `concurrency` at a time, all within one log_keeping_bound.
        `stop` (an escalation to force) ends the wait at once: a runner whose log was not read by
        then is an entry with an error, and the runners are forced without waiting for it."""
        items = list(pods)
        for pod in items:
            self._pods[_identify(pod, {})[0]] = pod
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.bound
        latest: list[KeptLog] = []

        async def one(pod: Obj | str) -> None:
            latest.extend(await self._read([pod], max(0.0, deadline - loop.time())))

        work = asyncio.ensure_future(bounded(items, one, self.concurrency))
        waiter = asyncio.ensure_future(stop.wait() if stop is not None else asyncio.Event().wait())
        try:
            await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (work, waiter):
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
        read = {k.pod for k in latest}
        tasks = {k.pod: k.task for k in self.entries if k.task}
        for pod in items:
            name, _, task = _identify(pod, tasks)
            if name not in read:
                latest.append(KeptLog(pod=name, task=task, error="not kept: the cancellation was escalated to "
                                                                  "force before this log was read"))
        self.entries = merge_kept(self.entries, latest)

    async def reread(self) -> None:
        """Read every kept runner's log again, within one log_keeping_bound, updating its
        ConfigMap (a runner gone meanwhile, or a failed reading, keeps the earlier one)."""
        pods = [self._pods.get(k.pod, k.pod) for k in self.entries if k.config_map]
        latest: list[KeptLog] = []

        async def one(pod: Obj | str) -> None:
            latest.extend(await self._read([pod], self.bound))

        with contextlib.suppress(TimeoutError):  # keep_logs bounds each; this, all of them
            async with asyncio.timeout(self.bound):
                await bounded(pods, one, self.concurrency)
        self.entries = merge_kept(self.entries, latest)

    async def again(self, pod: str) -> bool:
        """Read `pod`'s log once more and update its ConfigMap (a failed reading keeps the earlier
        one). Once per runner; all these readings together within one log_keeping_bound from the
        first, so forcing many runners is delayed by at most that. Returns whether it read."""
        loop = asyncio.get_running_loop()
        if self._again_deadline is None:
            self._again_deadline = loop.time() + self.bound
        left = self._again_deadline - loop.time()
        if pod in self._again or left <= 0:
            return False
        self._again.add(pod)
        earlier = [k for k in self.entries if k.pod == pod]
        latest = await self._read([self._pods.get(pod, pod)], left, already_kept=earlier)
        self.entries = merge_kept(self.entries, latest)
        return True


def _identify(pod: Obj | str, tasks: Mapping[str, str]) -> tuple[str, str | None, str | None]:
    """(name, container, task) of a pod object or name."""
    if isinstance(pod, str):
        return pod, None, tasks.get(pod)
    meta = pod.get("metadata") or {}
    name = str(meta.get("name"))
    task = tasks.get(name) or (meta.get("labels") or {}).get(LABEL_TASK)
    return name, _container(meta, (pod.get("spec") or {}).get("containers") or []), task


def _container(meta: Mapping[str, Any], containers: Sequence[Mapping[str, Any]]) -> str | None:
    """The container whose log is kept: the pod's default container (the annotation kubectl
    reads), else its first; None when the pod object does not say (the API server then picks
    the only one, or answers that a name is needed)."""
    default = (meta.get("annotations") or {}).get("kubectl.kubernetes.io/default-container")
    names = [str(c.get("name")) for c in containers if c.get("name")]
    if default in names:
        return str(default)
    return names[0] if names else None
