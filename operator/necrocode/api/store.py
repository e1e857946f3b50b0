"""What the REST API reads and writes in Kubernetes, with the server's own credentials.

The routes decide who may do what (auth.py) and how records are ordered and chosen
(necrocode.records); the store does the requests: it checks that a job or task exists,
creates a cancellation, lists and finds them, follows one until it finishes, escalates one.
It answers what the caller must hear (`ApiNotFound`, `ApiFinished`); any other error of the
Kubernetes API goes up as it is (errors.py maps it).
"""

from __future__ import annotations

import asyncio
from typing import Any

from necrocode import records
from necrocode.api.auth import Caller
from necrocode.api.errors import ApiFinished, ApiNotFound
from necrocode.kube import AlreadyExists, Invalid, Kube, NotFound, nc_path
from necrocode.model import (
    ANNOTATION_FORCE_REQUESTER,
    ANNOTATION_REQUESTER,
    ANNOTATION_REQUESTER_GROUPS,
    API_VERSION,
    JOB_CANCELLATION,
    PLURAL,
)
from necrocode.naming import cancellation_labels, generate_name

Obj = dict[str, Any]
CREATE_ATTEMPTS = 3


def requester_annotations(caller: Caller) -> dict[str, str]:
    """Who asked, for the API server's requester policy (deploy/requester-policy.yaml). The
    policy overwrites these with the creating identity, here this server's own, unless that
    identity may `vouch` for cancellations; the chart grants it, so the caller is recorded."""
    return {ANNOTATION_REQUESTER: caller.username, ANNOTATION_REQUESTER_GROUPS: ",".join(caller.groups)}


class Store:
    """The cancellations, jobs and tasks of the cluster `kube` talks to; `poll_seconds`: how
    often `follow` reads a cancellation."""

    def __init__(self, kube: Kube, poll_seconds: float):
        self.kube, self.poll_seconds = kube, poll_seconds

    async def find_job(self, ns: str, job_id: str) -> None:
        try:
            await self.kube.get(nc_path(ns, "agentjobs", job_id))
        except NotFound:
            raise ApiNotFound(f"job {job_id} not found in namespace {ns}") from None

    async def find_task(self, ns: str, job_id: str, task_id: str) -> None:
        tasks, _ = await self.kube.list_all(nc_path(ns, "agenttasks"),
                                            label_selector=records.task_selector(job_id, task_id))
        if not records.find_tasks(tasks, job_id, task_id):
            raise ApiNotFound(f"task {task_id} of job {job_id} not found in namespace {ns}")

    async def create(self, kind: str, ns: str, caller: Caller, job_id: str, task_id: str | None, spec: Obj) -> Obj:
        """A new cancellation of that kind, under a generated name, recording `caller`."""
        for attempt in range(CREATE_ATTEMPTS):
            body = {"apiVersion": API_VERSION, "kind": kind,
                    "metadata": {"name": generate_name(job_id, task_id), "labels": cancellation_labels(job_id, task_id),
                                 "annotations": requester_annotations(caller)},
                    "spec": spec}
            try:
                return await self.kube.create(nc_path(ns, PLURAL[kind]), body)
            except AlreadyExists:  # same second, same 4 hex digits: draw again
                if attempt == CREATE_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def list_cancellations(self, ns: str, job_id: str | None) -> list[Obj]:
        """Both kinds in `ns` (with `job_id`, those labelled with the job where it can be a
        label), unordered: `records` picks and orders."""
        selector = records.job_selector(job_id) if job_id else None
        found: list[Obj] = []
        for kind, plural in PLURAL.items():
            items, _ = await self.kube.list_all(nc_path(ns, plural), label_selector=selector)
            found += records.with_kind(items, kind)
        return found

    async def find_cancellation(self, ns: str, name: str) -> Obj:
        """A JobCancellation or, if there is none of that name, a TaskCancellation."""
        for kind, plural in PLURAL.items():
            try:
                obj = await self.kube.get(nc_path(ns, plural, name))
            except NotFound:
                continue
            return {**obj, "kind": kind}
        raise ApiNotFound(f"cancellation {name} not found in namespace {ns}")

    async def follow(self, obj: Obj, ns: str, seconds: float) -> Obj:
        """The cancellation once it has finished, or as it is after `seconds`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        path = nc_path(ns, PLURAL[str(obj.get("kind") or JOB_CANCELLATION)], obj["metadata"]["name"])
        while not records.is_finished(obj):
            left = deadline - loop.time()
            if left <= 0:
                break
            await asyncio.sleep(min(self.poll_seconds, left))
            obj = await self.kube.get(path)
        return obj

    async def escalate(self, obj: Obj, ns: str, username: str) -> Obj:
        """Turn spec.force on in the cancellation `obj` (found with `find_cancellation`),
        recording `username` as who escalated; `ApiFinished` when it has finished."""
        kind, name = str(obj["kind"]), obj["metadata"]["name"]
        finished = f"{kind.lower()}/{name} has finished; there is nothing left to escalate"
        if records.is_finished(obj):
            raise ApiFinished(finished)
        try:
            return await self.kube.merge_patch(nc_path(ns, PLURAL[kind], name), {
                "metadata": {"annotations": {ANNOTATION_FORCE_REQUESTER: username}},
                "spec": {"force": True}})
        except Invalid:  # the CRD refuses: it finished meanwhile
            raise ApiFinished(finished) from None
