"""necrocode.listbatch: which selectors are coalesced, and what each asker gets when many ask at
once (the lister is a function that records what it was asked and answers from a list of objects:
the client under it, and the API server's label matching, are tested by the cluster suite)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from necrocode.budget import CURRENT, Budget
from necrocode.listbatch import ListCoalescer, batchable_term, joined, terms

Obj = dict[str, Any]


J, R = "necrocode.io/job", "necrocode.io/released-by"


@pytest.mark.parametrize(("selector", "expected"), [
    ("necrocode.io/job=a", (J, "a", "")),
    ("necrocode.io/job==a", (J, "a", "")),
    ("necrocode.io/job=a,necrocode.io/role=runner", (J, "a", "necrocode.io/role=runner")),
    ("necrocode.io/role=runner,necrocode.io/job=a", (J, "a", "necrocode.io/role=runner")),
    ("necrocode.io/job=a,necrocode.io/repo-pool", (J, "a", "necrocode.io/repo-pool")),
    ("necrocode.io/job=a, x in (1,2)", (J, "a", "x in (1,2)")),
    ("necrocode.io/job=a,necrocode.io/job-uid=u1", (J, "a", "necrocode.io/job-uid=u1")),  # another label
    ("necrocode.io/released-by=0b1e-77", (R, "0b1e-77", "")),
    ("necrocode.io/job=a,necrocode.io/released-by=u", (J, "a", "necrocode.io/released-by=u")),  # the first of BATCHED
    (None, None),
    ("", None),
    ("necrocode.io/role=runner", None),
    ("necrocode.io/job!=a", None),
    ("necrocode.io/job in (a,b)", None),
    ("necrocode.io/job notin (a)", None),
    ("!necrocode.io/job", None),
    ("necrocode.io/job", None),
    ("necrocode.io/job=", None),  # an empty value: shared only with identical lists
    ("necrocode.io/job=a,necrocode.io/job=b", None),  # two job terms: likewise
    ("necrocode.io/job=a,necrocode.io/job!=b", None),
    ("necrocode.io/job=-bad", None),
    ("necrocode.io/job=a b", None),
    ("necrocode.io/jobx=a", None),  # another key that starts like it
])
def test_which_selectors_are_batched(selector: str | None, expected: tuple[str, str, str] | None) -> None:
    assert batchable_term(selector) == expected


def test_terms_keep_set_based_terms_whole() -> None:
    assert terms("a=1, b in (x,y),c notin (z) ,!d") == ["a=1", "b in (x,y)", "c notin (z)", "!d"]


def test_joined() -> None:
    assert joined(J, ["a"], "") == "necrocode.io/job=a"
    assert joined(J, ["a", "b"], "r=1") == "necrocode.io/job in (a,b),r=1"


def obj(job: str, name: str) -> Obj:
    return {"metadata": {"name": name, "labels": {"necrocode.io/job": job}}}


class Lister:
    """Answers from `objs`, matching the job term as the API server would; each request waits
    until the test releases it (gate), so the test decides what is in flight."""

    def __init__(self, objs: list[Obj]) -> None:
        self.objs, self.asked = objs, []  # type: ignore[var-annotated]
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None
        self.budgets: list[Budget | None] = []
        self.pages: list[int] = []

    async def __call__(self, path: str, sel: str | None, fields: str | None, meta: bool,
                       page: int) -> tuple[list[Obj], str]:
        self.asked.append(sel)
        self.pages.append(page)
        self.budgets.append(CURRENT.get())
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        if sel is None:
            return list(self.objs), str(len(self.asked))
        first = sel.split(",necrocode.io/role")[0]
        if " in (" in first:
            jobs = set(first.split("(", 1)[1].rstrip(")").split(","))
        else:
            jobs = {first.split("=", 1)[1]}
        return [o for o in self.objs if o["metadata"]["labels"]["necrocode.io/job"] in jobs], str(len(self.asked))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


Asked = asyncio.Future[tuple[list[Obj], str]]


async def behind_one(lists: ListCoalescer, lister: Lister, first: str, *jobs: str) -> tuple[Asked, list[Asked]]:
    """A list of `first` in flight (held by the gate), then lists of `jobs` asked meanwhile."""
    lister.gate.clear()
    head = asyncio.ensure_future(lists.fetch("/p", f"necrocode.io/job={first}", None, False, 500))
    await settle()
    rest = [asyncio.ensure_future(lists.fetch("/p", f"necrocode.io/job={j}", None, False, 500)) for j in jobs]
    await settle()
    return head, rest


async def test_a_lone_list_goes_at_once_as_asked() -> None:
    lister = Lister([obj("a", "a1"), obj("b", "b1")])
    lists = ListCoalescer(lister)
    items, rv = await lists.fetch("/p", "necrocode.io/job=a,necrocode.io/role=runner", None, False, 500)
    assert [o["metadata"]["name"] for o in items] == ["a1"]
    assert lister.asked == ["necrocode.io/job=a,necrocode.io/role=runner"] and rv == "1"


async def test_lists_asked_during_one_go_out_together_and_each_gets_its_own() -> None:
    lister = Lister([obj(j, f"{j}{i}") for j in "abcd" for i in range(2)])
    lists = ListCoalescer(lister)
    first, others = await behind_one(lists, lister, "a", *"dbc")
    assert lister.asked == ["necrocode.io/job=a"]  # the others wait: the first is in flight
    lister.gate.set()
    got = [await f for f in (first, *others)]
    assert lister.asked == ["necrocode.io/job=a", "necrocode.io/job in (b,c,d)"]
    assert [sorted(o["metadata"]["name"] for o in items) for items, _ in got] == [
        ["a0", "a1"], ["d0", "d1"], ["b0", "b1"], ["c0", "c1"]]
    assert (lists.asked, lists.sent) == (4, 2)


async def test_an_answer_never_comes_from_a_request_older_than_the_ask() -> None:
    lister = Lister([obj("a", "a1")])
    lists = ListCoalescer(lister)
    lister.gate.clear()
    first = asyncio.ensure_future(lists.fetch("/p", "necrocode.io/job=a", None, False, 500))
    await settle()
    lister.objs.append(obj("a", "a2"))  # made after the first request went, before the second ask
    second = asyncio.ensure_future(lists.fetch("/p", "necrocode.io/job=a", None, False, 500))
    await settle()
    lister.gate.set()
    assert [o["metadata"]["name"] for o in (await first)[0]] == ["a1", "a2"]  # the fake answers late, as it is now
    assert [o["metadata"]["name"] for o in (await second)[0]] == ["a1", "a2"]
    assert len(lister.asked) == 2, "the second ask waited for a request of its own"


async def test_other_kinds_do_not_wait_for_each_other() -> None:
    lister = Lister([obj("a", "a1")])
    lists = ListCoalescer(lister)
    lister.gate.clear()
    kinds = [("/pods", "", False, 500), ("/leases", "", False, 500), ("/pods", "r=1", False, 500),
             ("/pods", "", True, 500), ("/pods", "", False, 5000)]  # the page size given is the one used
    tasks = [asyncio.ensure_future(lists.fetch(path, "necrocode.io/job=a" + (f",{rest}" if rest else ""), None, meta,
                                               page)) for path, rest, meta, page in kinds]
    await settle()
    assert len(lister.asked) == 5 and lister.pages == [500, 500, 500, 500, 5000]
    lister.gate.set()
    await asyncio.gather(*tasks)


async def test_a_failed_request_fails_each_of_its_askers_and_the_next_goes() -> None:
    lister = Lister([obj("a", "a1"), obj("b", "b1")])
    lists = ListCoalescer(lister)
    first, (b, c) = await behind_one(lists, lister, "a", "b", "c")
    lister.fail = RuntimeError("500 InternalError")
    lister.gate.set()
    for f in (first, b, c):
        with pytest.raises(RuntimeError, match="500"):
            await f
    lister.fail = None
    items, _ = await lists.fetch("/p", "necrocode.io/job=b", None, False, 500)
    assert [o["metadata"]["name"] for o in items] == ["b1"]


async def test_a_cancelled_asker_leaves_the_others_their_answer() -> None:
    lister = Lister([obj("a", "a1"), obj("b", "b1")])
    lists = ListCoalescer(lister)
    first, (gone, stays) = await behind_one(lists, lister, "a", "a", "b")
    gone.cancel()
    lister.gate.set()
    await first
    assert [o["metadata"]["name"] for o in (await stays)[0]] == ["b1"]
    assert lister.asked[-1] == "necrocode.io/job=b"  # the cancelled ask is not sent


async def test_at_most_max_jobs_per_request() -> None:
    lister = Lister([obj(f"j{i}", f"o{i}") for i in range(5)])
    lists = ListCoalescer(lister, max_values=2)
    first, rest = await behind_one(lists, lister, "j0", *(f"j{i}" for i in range(5)))
    lister.gate.set()
    await asyncio.gather(first, *rest)
    assert lister.asked[1:] == ["necrocode.io/job in (j0,j1)", "necrocode.io/job in (j2,j3)", "necrocode.io/job=j4"]


async def test_two_asks_of_one_job_get_their_own_objects() -> None:
    lister = Lister([obj("a", "a1")])
    lists = ListCoalescer(lister)
    first, (x, y) = await behind_one(lists, lister, "b", "a", "a")
    lister.gate.set()
    await first
    (xs, _), (ys, _) = await x, await y
    assert xs == ys and xs[0] is not ys[0]
    assert lister.asked[-1] == "necrocode.io/job=a"


async def test_the_shared_request_is_charged_to_no_cancellation() -> None:
    lister = Lister([obj("a", "a1")])
    lists = ListCoalescer(lister)
    token = CURRENT.set(Budget("cancellation", qps=0, burst=0, concurrency=1))
    try:
        await lists.fetch("/p", "necrocode.io/job=a", None, False, 500)
    finally:
        CURRENT.reset(token)
    assert lister.budgets == [None]


async def test_identical_lists_share_one_request_each_getting_every_item() -> None:
    lister = Lister([obj("a", "a1"), obj("b", "b1")])
    lists = ListCoalescer(lister)
    lister.gate.clear()
    head = asyncio.ensure_future(lists.fetch("/tc", None, None, False, 500))
    await settle()
    same = [asyncio.ensure_future(lists.fetch("/tc", None, None, False, 500)) for _ in range(3)]
    other = asyncio.ensure_future(lists.fetch("/tc", "x=1", None, False, 500))  # not identical: a request of its own
    await settle()
    lister.gate.set()
    got = [await f for f in (head, *same)]
    await other
    assert lister.asked == [None, "x=1", None]  # x=1 at once; the three identical ones together after the first
    assert all([o["metadata"]["name"] for o in items] == ["a1", "b1"] for items, _ in got)
    assert got[1][0][0] is not got[2][0][0], "each asker its own objects"


async def test_the_slots_each_cancellation_released_are_listed_together() -> None:
    released = [{"metadata": {"name": f"s{u}", "labels": {R: u}}} for u in ("u1", "u2")]

    async def lister(path: str, sel: str | None, fields: str | None, meta: bool, page: int) -> tuple[list[Obj], str]:
        asked.append(sel)
        return released, "7"

    asked: list[str | None] = []
    lists = ListCoalescer(lister)
    got = await asyncio.gather(*(lists.fetch("/leases", f"{R}={u}", None, True, 500) for u in ("u2", "u1", "u3")))
    assert asked == [f"{R} in (u1,u2,u3)"]
    assert [[o["metadata"]["name"] for o in items] for items, _ in got] == [["su2"], ["su1"], []]
