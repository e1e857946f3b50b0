#!/usr/bin/env python3
"""How NecroCode's dispatcher uses necrocode.integration: a queue of tasks waiting for a runner.

- Before each assignment it asks `is_job_cancelled` (the admission policy would refuse the runner
  pod of a cancelled job anyway; asking first avoids the refused create).
- It follows `cancellation_events` and drops a job's queued tasks as soon as a cancellation has
  blocked the job, instead of finding out task by task.
- `--pause JOB` calls `block_job_assignment`: no more of the job's tasks are assigned, without
  cancelling it (say its budget ran out and someone has to decide).

"Assign" only prints here; the real dispatcher creates the runner pod. Needs the package (the
wheel of `make dist`, or the repository's .venv) and a kubeconfig:

    python examples/dispatcher.py -n team-a job1/build-api job1/test-api job2/lint
    python examples/dispatcher.py -n team-a --once --pause job2 job1/build-api job2/lint

It assigns one queued task every --interval seconds (a stand-in for waiting for a free runner)
until SIGINT/SIGTERM; --once assigns or skips the whole queue at once and exits, without
following events. Each line it prints starts with what it did: paused, assign, skip, event, drop.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from necrocode.integration import CancellationClient

Queue = list[tuple[str, str]]  # (job, task id), first come first served


def say(line: str) -> None:
    print(line, flush=True)


async def assign_next(client: CancellationClient, namespace: str, queue: Queue) -> None:
    job, task = queue.pop(0)
    if await client.is_job_cancelled(namespace, job):
        say(f"skip {job}/{task}: job {job} is cancelled or its dispatch blocked")
    else:
        say(f"assign {job}/{task}")  # the real dispatcher creates the runner pod here


async def drop_cancelled(client: CancellationClient, namespace: str, queue: Queue) -> None:
    # JobCancellations; kind="TaskCancellation" follows those (then check the task's own state)
    async for ev in client.cancellation_events(namespace):
        say(f"event {ev.type} {ev.kind}/{ev.name} job={ev.job} phase={ev.phase}")
        # a rejected or duplicate request cancels nothing: ask the job, not the event
        if ev.type == "DELETED" or not await client.is_job_cancelled(namespace, ev.job):
            continue
        dropped = [f"{job}/{task}" for job, task in queue if job == ev.job]
        if dropped:
            queue[:] = [(job, task) for job, task in queue if job != ev.job]
            say(f"drop {' '.join(dropped)}: job {ev.job} is being cancelled ({ev.kind} {ev.name})")


async def run(args: argparse.Namespace) -> None:
    client = CancellationClient.from_kubeconfig(args.kubeconfig, args.context)
    queue: Queue = [(job, task) for job, _, task in (item.partition("/") for item in args.tasks)]
    try:
        for job in args.pause:
            await client.block_job_assignment(args.namespace, job)
            say(f"paused {job}: none of its tasks will be assigned")
        if args.once:
            while queue:
                await assign_next(client, args.namespace, queue)
            return
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        watcher = asyncio.create_task(drop_cancelled(client, args.namespace, queue))
        stopping = asyncio.create_task(stop.wait())
        say(f"following JobCancellations in {args.namespace}")
        try:
            while not stop.is_set():
                if queue:
                    await assign_next(client, args.namespace, queue)
                await asyncio.wait({watcher, stopping}, timeout=args.interval, return_when=asyncio.FIRST_COMPLETED)
                if watcher.done():
                    watcher.result()  # the watch failed: let the error out
        finally:
            watcher.cancel()
            stopping.cancel()
        say(f"stopped with {len(queue)} task(s) queued")
    finally:
        await client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tasks", nargs="*", metavar="JOB/TASK", help="the queue, first come first served")
    ap.add_argument("-n", "--namespace", required=True)
    ap.add_argument("--kubeconfig", help="default: $KUBECONFIG, ~/.kube/config, in-cluster")
    ap.add_argument("--context")
    ap.add_argument("--pause", action="append", default=[], metavar="JOB", help="block assignment of JOB's tasks")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between two assignments")
    ap.add_argument("--once", action="store_true", help="assign or skip the whole queue, then exit")
    args = ap.parse_args()
    bad = [item for item in args.tasks if item.count("/") != 1 or not all(item.split("/"))]
    if bad:
        ap.error(f"not JOB/TASK: {' '.join(bad)}")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
