"""The approaches compared at each size N, in the order of the table and the plot. Each one's
`run(h, n)` builds its world in a fresh namespace (not timed), times one cancellation of n
runner pods from the request to the moment the work is observably done, deletes the namespace
and returns the run's figures ("seconds" and what else it measured)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from benchmarks.approaches import floor, jobcontroller, kubectl, ours, raw
from benchmarks.common import Obj
from benchmarks.harness import Harness


@dataclass(frozen=True)
class Approach:
    label: str  # in the table and the plot's legend
    run: Callable[[Harness, int], Awaitable[Obj]]


APPROACHES: dict[str, Approach] = {
    "ours": Approach("necrocode-cancel (JobCancellation)", ours.run),
    "floor": Approach("floor: the promised writes, bare client", floor.run),
    "floor-budgeted": Approach("floor under the operator's API budget", floor.run_budgeted),
    "raw-delete": Approach("raw: concurrent DELETEs", raw.delete_each),
    "raw-collection": Approach("raw: DELETE collection", raw.delete_collection),
    "kubectl": Approach("kubectl delete -l --wait", kubectl.run),
    "job-controller": Approach("Job controller (suspend)", jobcontroller.run),
}
