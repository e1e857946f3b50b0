"""The CLI's human output cannot be used to rewrite a terminal: control characters in text that
came from the cluster (reasons, messages, names, requesters, errors) are printed as escapes,
while -o json/yaml keep the stored values. No server: the connection is an in-memory stand-in."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from necrocode import cli, records
from necrocode.cli import connection, errors, live, options, terminal, text, views
from necrocode.model import PLURAL

EVIL = "\x1b[2J\x1b[H\x1b]0;pwned\x07line1\nline2\rover\ttab\x9b31m\u202egnp.exe\u2028end"
ESCAPED = "\\x1b[2J\\x1b[H\\x1b]0;pwned\\x07line1\\nline2\\rover\\ttab\\x9b31m\\u202egnp.exe\\u2028end"
# what must never reach the terminal from cluster text: C0 (but the lines' own \n), DEL, C1, bidi, separators
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def cancellation(phase: str = "Failed") -> dict[str, Any]:
    """A finished JobCancellation whose every free text holds control characters."""
    step = {"name": "Validate", "state": "Failed", "startedAt": "2026-11-25T09:30:12Z",
            "finishedAt": "2026-11-25T09:30:13Z", "message": EVIL}
    return {
        "apiVersion": "necrocode.io/v1alpha1", "kind": "JobCancellation",
        "metadata": {"name": "job1-cancel-20261125093012-abcd", "namespace": "team-a",
                     "creationTimestamp": "2026-11-25T09:30:12Z", "labels": {"necrocode.io/job": "job1"},
                     "annotations": {"necrocode.io/requester": EVIL}},
        "spec": {"jobName": "job1", "reason": EVIL, "requestedBy": EVIL},
        "status": {"phase": phase, "message": EVIL, "requestedBy": EVIL, "steps": [step],
                   "startedAt": "2026-11-25T09:30:12Z", "completedAt": "2026-11-25T09:30:14Z",
                   "progress": {"runnersTotal": 1, "runnersTerminated": 1, "tasksCancelled": 1},
                   "affectedTasks": [{"taskId": "a", "name": "job1-a", "before": "Running", "after": "Cancelled",
                                      "reason": EVIL, "runner": "job1-a-runner"}],
                   "runnerOutcomes": [{"pod": "job1-a-runner", "outcome": "Terminated"}],
                   "cleanup": {"failed": [EVIL]}, "cascadeWarnings": [EVIL],
                   "errors": [{"step": "Validate", "object": EVIL, "message": EVIL, "attempts": 2}]},
    }


class FakeConn(connection.Conn):
    """The calls the commands make, answered from memory."""

    def __init__(self, objs: list[dict[str, Any]]):
        super().__init__(api=None, custom=None, namespace="team-a", server="https://test", kubeconfig=None,
                         context=None)
        self.objs = objs

    def get(self, plural: str, ns: str, name: str) -> dict[str, Any]:
        if plural == "agentjobs":
            return {"metadata": {"name": name}}
        return next(o for o in self.objs if o["metadata"]["name"] == name)

    def list_objs(self, plural: str, ns: str | None, *, selector: str | None = None, limit: int | None = None,
                  cont: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        return [o for o in self.objs if PLURAL[o["kind"]] == plural], None

    def create(self, plural: str, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.objs[0]

    def whoami(self) -> str | None:
        return None


@pytest.fixture
def conn(monkeypatch: pytest.MonkeyPatch) -> FakeConn:
    fake = FakeConn([cancellation()])
    monkeypatch.setattr(options, "open_conn", lambda *a, **kw: fake)
    return fake


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli.cli, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stdout, result.stderr


def test_terminal_safe_escapes_every_control_character_and_keeps_the_rest() -> None:
    assert terminal.terminal_safe(EVIL) == ESCAPED
    assert terminal.terminal_safe("plain text, été, 日本, \\n literal") == "plain text, été, 日本, \\n literal"
    assert terminal.terminal_safe("\x00\x7f\x85") == "\\x00\\x7f\\x85"
    assert terminal.terminal_safe(terminal.terminal_safe(EVIL)) == ESCAPED  # printable output stays as it is
    assert text.table(["A", "B"], [[EVIL, "x"]]) == [f"{'A':<{len(ESCAPED)}}   B", f"{ESCAPED}   x"]


@pytest.mark.usefixtures("conn")
@pytest.mark.parametrize("args", [["job", "cancel-status", "job1"], ["job", "cancel", "job1"],
                                  ["job", "cancellations"]], ids=["cancel-status", "cancel", "cancellations"])
def test_human_output_shows_escapes_instead_of_control_characters(args: list[str]) -> None:
    code, out, err = run(*args)
    assert code in (0, errors.EXIT_FAILED), (out, err)
    assert not RAW.search(out) and not RAW.search(err), repr(out + err)
    assert "\\x1b[2J" in out  # shown, so a reader sees what was written
    if args[1] != "cancellations":
        assert ESCAPED in out and "line1\\nline2" in out


@pytest.mark.usefixtures("conn")
@pytest.mark.parametrize("output", ["json", "yaml"])
def test_json_and_yaml_keep_the_stored_values(output: str) -> None:
    code, out, _ = run("job", "cancel-status", "job1", "-o", output)
    assert code == 0
    doc = json.loads(out) if output == "json" else yaml.safe_load(out)
    [item] = doc["items"]
    assert item["spec"]["reason"] == EVIL and item["status"]["errors"][0]["message"] == EVIL


def test_an_error_from_the_server_is_one_escaped_line() -> None:
    err = errors.CliError(f"the API server refused the request: {EVIL}", errors.EXIT_USAGE)
    runner = CliRunner()
    with runner.isolation() as (_, stderr, _):
        err.show()
        shown = stderr.getvalue().decode()
    assert shown == f"error: the API server refused the request: {ESCAPED}\n"


def test_the_live_display_escapes_too() -> None:
    for tty in (False, True):
        stream = io.StringIO()
        live.Display(stream, tty, views.live_block).update([cancellation("Running")])
        text = stream.getvalue().replace("\x1b[J", "")  # the display's own redraw
        assert not RAW.search(text), repr(text)
        assert "\\x1b[2J" in text


# ----------------------------------------------------------------------------- -o name | wide | jsonpath=
NAME = "jobcancellation.necrocode.io/job1-cancel-20261125093012-abcd"


@pytest.mark.usefixtures("conn")
def test_name_wide_and_jsonpath_print_only_the_records() -> None:
    assert run("job", "cancel-status", "job1", "-o", "name") == (0, NAME + "\n", "")
    assert run("job", "cancel-status", "job1", "-o=name") == (0, NAME + "\n", "")  # kubectl's spelling too
    code, out, err = run("job", "cancel", "job1", "-o", "name")  # follows it (stand-in: Failed), then the name
    assert (code, out) == (errors.EXIT_FAILED, NAME + "\n")
    assert err.startswith(f"{NAME} created\n")  # notes and progress on stderr
    code, out, _ = run("job", "cancellations", "-o", "wide")
    header, row = out.splitlines()
    assert header.split() == ["NAME", "KIND", "JOB", "TASK", "REQUESTER", "PHASE", "RUNNERS", "STARTED", "DURATION",
                              "TASKS", "BLOCKED", "LEASES", "DELETED", "KEPT", "FORCE", "GRACE", "TTL", "REASON",
                              "MESSAGE"]
    assert row.split()[5:17] == ["Failed", "1/1", "2026-11-25T09:30:12Z", "2s", "1", "0", "0", "0", "0", "false",
                                 "-", "-"]
    assert not RAW.search(out) and ESCAPED[:40] in out
    # -o wide of the other commands: the same table of the record(s) they show
    assert run("job", "cancel-status", "job1", "-o", "wide")[1].splitlines()[0] == header
    code, out, _ = run("job", "cancellations", "-o", 'jsonpath={range .items[*]}{.metadata.name}{"\\t"}'
                                                     '{.status.phase}{"\\n"}{end}')
    assert (code, out) == (0, "job1-cancel-20261125093012-abcd\tFailed\n")
    # a value from the cluster is made terminal-safe; the template's own text is not
    assert run("job", "cancel-status", "job1", "-o", "jsonpath={.items[0].spec.reason}{'\\n'}")[1] == ESCAPED + "\n"
    # one record (cancel): the object itself, as kubectl create -o jsonpath
    assert run("job", "cancel", "job1", "-o", "jsonpath={.metadata.name}")[1] == NAME.split("/")[1]
    # a template that does not fit the data: kubectl's error, one line
    code, out, err = run("job", "cancel-status", "job1", "-o", "jsonpath={.items[3].metadata.name}")
    assert (code, out, err) == (1, "", "error: error executing the jsonpath template: array index out of bounds: "
                                       "index 3, length 1\n")


# ----------------------------------------------------------------------------- terminals, colour, NO_COLOR
class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_only_a_terminal_is_interactive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    assert terminal.interactive(Tty()) and not terminal.interactive(io.StringIO())
    class Closed:
        def isatty(self) -> bool:
            raise ValueError("I/O operation on closed file")

    assert not terminal.interactive(Closed()) and not terminal.interactive(object())
    monkeypatch.setenv("NO_COLOR", "1")
    assert terminal.interactive(Tty()) and not terminal.coloured(Tty())  # NO_COLOR: no colour, the live view stays
    monkeypatch.setenv("NO_COLOR", "")
    assert terminal.coloured(Tty())  # set but empty does not count (no-color.org)
    monkeypatch.setenv("TERM", "dumb")
    assert not terminal.interactive(Tty()) and not terminal.coloured(Tty())


ALL = [["job", "cancel-status", "job1"], ["job", "cancel-status", "job1", "-o", "wide"], ["job", "cancel", "job1"],
       ["job", "cancel", "job1", "--no-wait"], ["job", "cancellations"], ["job", "cancellations", "-o", "wide"],
       ["job", "cancel-status", "job1", "-o", "jsonpath={.items[0].status.message}"]]


@pytest.mark.usefixtures("conn")
@pytest.mark.parametrize("args", ALL, ids=[" ".join(a[1:]) for a in ALL])
def test_without_a_terminal_there_is_no_control_sequence_at_all(args: list[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")  # a colour terminal type, but stdout is not a terminal
    monkeypatch.delenv("NO_COLOR", raising=False)
    result = CliRunner().invoke(cli.cli, args, color=True)  # color=True: click strips nothing we write
    text = result.stdout + result.stderr
    assert result.exit_code in (0, errors.EXIT_FAILED), text
    assert re.fullmatch(r"[^\x00-\x09\x0b-\x1f\x7f-\x9f]*", text), repr(text)  # only \n: no ESC, CR, BEL ...


@pytest.mark.usefixtures("conn")
def test_on_a_terminal_the_phase_is_coloured_unless_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(terminal, "interactive", lambda stream: True)
    monkeypatch.delenv("NO_COLOR", raising=False)
    red = "\x1b[31mFailed\x1b[0m"
    out = CliRunner().invoke(cli.cli, ["job", "cancel-status", "job1"], color=True).stdout
    assert f"  phase:      {red} - {ESCAPED}" in out  # the cluster's text beside it is still escaped
    assert out.count("\x1b[") == 2  # the colour and its reset, nothing else
    out = CliRunner().invoke(cli.cli, ["job", "cancellations"], color=True).stdout
    header, row = out.splitlines()
    assert red in row and row.index(red) == header.index("PHASE")  # columns stay aligned
    monkeypatch.setenv("NO_COLOR", "1")
    for args in (["job", "cancel-status", "job1"], ["job", "cancellations"], ["job", "cancel", "job1"]):
        out = CliRunner().invoke(cli.cli, args, color=True).stdout
        assert not re.search(r"\x1b\[[\d;]*m", out), repr(out)  # no colour (cancel still redraws its live view)


def test_the_live_view_colours_only_when_asked() -> None:
    running = cancellation("Running")
    for colour in (True, False):
        stream = Tty()
        display = live.Display(stream, True, views.live_block, colour)
        display.update([running])
        display.update([running])
        text = stream.getvalue()
        assert ("\x1b[36mRunning\x1b[0m" in text) is colour
        assert re.sub(r"\x1b\[(\d+F|J|36m|0m)", "", text).count("\x1b") == 0  # redraw (and colour) only
    plain = io.StringIO()
    live.Display(plain, False, views.live_block, colour=True).update([running])  # not a terminal: never
    assert "\x1b" not in plain.getvalue()
    many = Tty()  # several jobs at once: a line each
    live.Display(many, True, views.brief_block, colour=True).update([running, cancellation("Completed")])
    lines = many.getvalue().replace("\x1b[J", "").splitlines()
    assert len(lines) == 2 and all(ln.startswith("job1  jobcancellation/job1-cancel-") for ln in lines)
    assert "  \x1b[36mRunning\x1b[0m  " in lines[0] and "  \x1b[32mCompleted\x1b[0m  " in lines[1]


# ----------------------------------------------------------------------------- issue 18: modes, windows, kept logs
def drained(**status: Any) -> dict[str, Any]:
    """A JobCancellation in mode Drain with a cooperative window and kept logs: what the
    operator writes as it runs (status crafted here; the views only render it)."""
    base = cancellation("Completed")
    base["spec"] = {"jobName": "job1", "mode": "Drain", "drainDeadlineSeconds": 600, "cooperativeSeconds": 30,
                    "preserveLogs": True}
    base["status"] = {"phase": "Completed", "startedAt": "2026-11-25T09:30:12Z",
                      "completedAt": "2026-11-25T09:41:00Z",
                      "steps": [{"name": "Validate", "state": "Succeeded", "startedAt": "2026-11-25T09:30:12Z",
                                 "finishedAt": "2026-11-25T09:30:13Z"}],
                      "progress": {"runnersTotal": 3, "runnersTerminated": 3, "runnersCooperative": 1,
                                   "tasksFinishedInDrain": 2, "finishedDuringCancel": 1, "logsKept": 25,
                                   "logsFailed": 1, "tasksCancelled": 2},
                      "drain": {"startedAt": "2026-11-25T09:30:13Z", "deadline": "2026-11-25T09:40:13Z",
                                "finishedAt": "2026-11-25T09:40:13Z", "runningAtStart": 3, "finishedInWindow": 2,
                                "stillRunning": 1, "endedBy": "Deadline"},
                      "cooperative": {"startedAt": "2026-11-25T09:40:13Z", "deadline": "2026-11-25T09:40:43Z",
                                      "finishedAt": "2026-11-25T09:40:20Z", "stopped": 1},
                      "runnerOutcomes": [{"pod": "job1-c-runner", "outcome": "Cooperative"},
                                         {"pod": "job1-a-runner", "outcome": "TaskFinished"},
                                         {"pod": "job1-b-runner", "outcome": "Terminated"}],
                      # the status lists the first logs only (capped by the operator); progress counts all
                      "logs": [{"pod": f"job1-t{i}-runner", "task": f"t{i}", "configMap": f"job1-t{i}-log",
                                "bytes": 100} for i in range(22)] + [{"pod": "job1-x-runner", "error": "node lost"}],
                      **status}
    return base


def rendered(view: Any, obj: dict[str, Any]) -> str:
    return terminal.safe_block(view(records.result_of(obj), obj), False)


def test_cancel_status_shows_the_mode_the_windows_and_the_kept_logs() -> None:
    out = rendered(views.status_view, drained())
    assert "  mode:       Drain, running tasks may finish for up to 10m00s, cooperative stop up to 30s, logs kept" in out
    assert ("  drain:      2/3 running tasks finished inside the window (10m00s); 1 still running at the deadline, "
            "cancelled") in out
    assert "  cooperative: 1 runner stopped by itself inside the window (7s)" in out
    assert "  finished:   1 task finished by itself during the cancellation (Done or Failed, kept as they ended)" in out
    assert "  logs kept:  25 (1 could not be read)" in out
    assert "    stopped by themselves: job1-c-runner" in out and "    task finished, not forced: job1-a-runner" in out
    # the ConfigMaps named, capped at 20; "more" counts every kept log, not only the listed ones
    kept = re.search(r"    logs kept in: (.*)", out)
    assert kept and kept.group(1).startswith("configmap/job1-t0-log, configmap/job1-t1-log")
    assert kept.group(1).count("configmap/") == 20 and kept.group(1).endswith(", ... and 5 more")
    assert "    logs not kept: job1-x-runner: node lost" in out


def test_an_open_drain_window_shows_its_deadline_and_what_still_runs() -> None:
    obj = drained(phase="Running", completedAt=None, cooperative=None, logs=[],
                  progress={"runnersTotal": 1, "tasksCancelled": 1},
                  drain={"startedAt": "2026-11-25T09:30:13Z", "deadline": "2999-01-01T00:00:00Z",
                         "runningAtStart": 3, "finishedInWindow": 1, "stillRunning": 2})
    block = rendered(views.live_block, obj)
    assert re.search(r"\n  drain {15}1/3 running tasks finished, 2 still running; window ends 2999-01-01T00:00:00Z "
                     r"\(\d+h\d\dm left\)", block), block
    assert "\n  mode                Drain, running tasks may finish for up to 10m00s" in block
    assert not [ln for ln in block.splitlines() if ln.startswith(("  cooperative", "  logs kept"))], block
    # the plain lines: no time left (a line is printed when its text changes, not every poll)
    facts = dict(views.progress_facts(records.result_of(obj)))
    assert facts["drain"] == "drain 1/3 running tasks finished, 2 still running; window ends 2999-01-01T00:00:00Z"
    # ended because all finished, or cut short by force
    for ended_by, said in (("AllFinished", "3/3 running tasks finished inside the window (5s)"),
                           ("Forced", "1/3 running tasks finished inside the window (5s); 2 still running when "
                                      "force cut the window short, cancelled")):
        done = {"startedAt": "2026-11-25T09:30:13Z", "finishedAt": "2026-11-25T09:30:18Z", "runningAtStart": 3,
                "finishedInWindow": 3 if ended_by == "AllFinished" else 1,
                "stillRunning": 0 if ended_by == "AllFinished" else 2, "endedBy": ended_by}
        assert f"  drain:      {said}\n" in rendered(views.status_view, drained(drain=done))


def test_the_summary_and_plain_lines_say_what_the_mode_did() -> None:
    out = rendered(views.summary, drained())
    assert "\n  mode: Drain, running tasks may finish for up to 10m00s" in out
    assert re.search(r"\n  job1-c-runner\s+Cooperative\n", out) and re.search(r"\n  job1-a-runner\s+TaskFinished", out)
    assert "\ndrain: 2/3 running tasks finished inside the window" in out
    assert "\ncooperative: 1 runner stopped by itself" in out and "\nlogs kept: 25 (1 could not be read)" in out
    assert "\n  logs kept in: configmap/job1-t0-log" in out
    facts = dict(views.progress_facts(records.result_of(drained())))
    assert facts["cooperative"] == "cooperative 1 runner stopped by itself inside the window (7s)"
    assert facts["finished"].startswith("finished 1 task finished by itself")
    assert facts["logs"] == "logs kept 25 (1 could not be read)"


def test_without_a_mode_the_views_are_as_before() -> None:
    obj = cancellation("Completed")
    for view in (views.status_view, views.summary, views.live_block):
        out = rendered(view, obj)
        assert "mode" not in out and "drain" not in out and "cooperative" not in out and "logs" not in out
    assert not {"drain", "cooperative", "finished", "logs"} & {k for k, _ in views.progress_facts(records.result_of(obj))}
    # Cancel with only a cooperative window, or logs refused: said so
    obj["spec"] = {"jobName": "job1", "cooperativeSeconds": 90, "preserveLogs": False}
    assert "  mode:       Cancel, cooperative stop up to 1m30s, logs not kept" in rendered(views.status_view, obj)


def test_a_dry_run_shows_what_each_mode_would_do() -> None:
    plan = {"runnerPods": ["job1-a-runner", "job1-b-runner"], "leases": ["lease/job1-slot-a"],
            "drainTasks": ["a", "b"], "cancelledAtOnce": ["c"], "logs": ["job1-a-runner", "job1-b-runner"]}
    obj = drained(plan=plan, drain=None, cooperative=None, logs=[], progress={}, runnerOutcomes=[])
    obj["spec"]["dryRun"] = True
    out = rendered(views.summary, obj)
    assert ("dry run: nothing was changed; it would act on\n"
            "  runner pods   job1-a-runner, job1-b-runner\n"
            "  leases        lease/job1-slot-a\n"
            "  delete        -\n"
            "  keep          -\n"
            "  let finish    a, b\n"
            "  cancel now    c\n"
            "  keep logs of  job1-a-runner, job1-b-runner") in out
    status = rendered(views.status_view, obj)
    assert "  dry run:    nothing was changed; it would act on\n    runner pods   job1-a-runner" in status
    assert "\n    let finish    a, b\n    cancel now    c\n" in status
    # mode Cancel, logs left to the operator: the plan reads as before, plus what the operator listed
    obj["spec"] = {"jobName": "job1", "dryRun": True}
    obj["status"]["plan"] = {"runnerPods": ["job1-a-runner"], "cancelledAtOnce": ["a", "c"]}
    out = rendered(views.summary, obj)
    assert "  cancel now    a, c" in out and "let finish" not in out and "keep logs of" not in out


class Recording(FakeConn):
    """Keeps the bodies `cancel` creates; knows job1's task t3."""

    def __init__(self, objs: list[dict[str, Any]]):
        super().__init__(objs)
        self.created: list[tuple[str, dict[str, Any]]] = []

    def list_objs(self, plural: str, ns: str | None, *, selector: str | None = None, limit: int | None = None,
                  cont: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        if plural == "agenttasks":
            return [{"metadata": {"name": "job1-t3", "labels": {"necrocode.io/job": "job1", "necrocode.io/task": "t3"}},
                     "spec": {"taskId": "t3"}}], None
        return super().list_objs(plural, ns, selector=selector, limit=limit, cont=cont)

    def create(self, plural: str, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        self.created.append((plural, body))
        return super().create(plural, ns, body)


@pytest.mark.parametrize(("args", "plural"), [([], "jobcancellations"), (["--task", "t3"], "taskcancellations")],
                         ids=["job", "task"])
def test_cancel_flags_become_the_spec_of_jobs_and_tasks_alike(args: list[str], plural: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    fake = Recording([cancellation()])
    monkeypatch.setattr(options, "open_conn", lambda *a, **kw: fake)
    code, _, _ = run("job", "cancel", "job1", *args, "--drain", "1h30m", "--cooperative", "5s", "--keep-logs",
                     "--no-wait")
    assert code == 0
    [(created, body)] = fake.created
    assert created == plural
    spec = body["spec"]
    assert (spec["mode"], spec["drainDeadlineSeconds"], spec["cooperativeSeconds"], spec["preserveLogs"]) == (
        "Drain", 5400, 5, True)
    fake.created.clear()
    assert run("job", "cancel", "job1", *args, "--no-keep-logs", "--cooperative", "0", "--no-wait")[0] == 0
    [(_, body)] = fake.created
    assert body["spec"]["preserveLogs"] is False and body["spec"]["cooperativeSeconds"] == 0
    assert not {"mode", "drainDeadlineSeconds"} & set(body["spec"])
    fake.created.clear()
    assert run("job", "cancel", "job1", *args, "--no-wait")[0] == 0  # none given: the CRD's and operator's defaults
    [(_, body)] = fake.created
    assert not {"mode", "drainDeadlineSeconds", "cooperativeSeconds", "preserveLogs"} & set(body["spec"])
