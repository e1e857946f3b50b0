"""-o: the record(s) as kubectl's printers would show them (table, wide, name, json, yaml,
jsonpath=TEMPLATE). Every -o but table prints only the record(s) on stdout."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import yaml
from click.shell_completion import CompletionItem

from necrocode import records
from necrocode.cli import jsonpath
from necrocode.cli.errors import EXIT_ERROR, CliError
from necrocode.cli.terminal import coloured, safe_block, terminal_safe
from necrocode.cli.text import fmt_duration, record_ref, requester_text, runners_text, span, table

Obj = dict[str, Any]


def emit_document(doc: Any, output: str) -> None:
    if output == "json":
        click.echo(json.dumps(doc, indent=2, sort_keys=False))
    else:
        click.echo(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False).rstrip("\n"))


def as_list(items: list[Obj], cont: str | None = None) -> Obj:
    meta: Obj = {}
    if cont:
        meta["continue"] = cont
    return {"apiVersion": "v1", "kind": "List", "metadata": meta, "items": items}


def record_table(items: list[Obj], *, namespaces: bool, wide: bool = False) -> list[str]:
    """The records as `job cancellations` shows them; `wide` (-o wide) adds the progress counts,
    force, grace period, TTL and the status message."""
    rows = []
    for o in items:
        r, spec = records.result_of(o), o.get("spec") or {}
        st, p = r.status, r.status.progress
        row = [r.name, r.kind, r.job_name, r.task_id or "-", requester_text(o, short=True), st.phase.value,
               runners_text(st) if st.steps else "-", records.started_at(o) or "-",
               fmt_duration(span(records.started_at(o), st.completed_at))]
        if wide:
            row += [str(p.tasks_cancelled), str(p.tasks_blocked), str(p.leases_released), str(p.resources_deleted),
                    str(p.artifacts_preserved), "true" if spec.get("force") else "false",
                    str(spec.get("gracePeriodSeconds", "-")), str(spec.get("ttlSecondsAfterFinished", "-"))]
        row.append(str(spec.get("reason") or "")[:60])
        if wide:
            row.append((st.message or "")[:100])
        rows.append(([r.namespace] if namespaces else []) + row)
    headers = (["NAMESPACE"] if namespaces else []) + ["NAME", "KIND", "JOB", "TASK", "REQUESTER", "PHASE", "RUNNERS",
                                                       "STARTED", "DURATION"]
    if wide:
        headers += ["TASKS", "BLOCKED", "LEASES", "DELETED", "KEPT", "FORCE", "GRACE", "TTL"]
    headers += ["REASON"] + (["MESSAGE"] if wide else [])
    return table(headers, rows, phase_col=headers.index("PHASE"))


def records_only(output: str) -> bool:
    """Every -o but table prints only the record(s) on stdout (progress and notes go to stderr)."""
    return output != "table"


def print_records(items: list[Obj], output: str, *, one: bool = False, cont: str | None = None,
                  namespaces: bool = False) -> None:
    """The record(s) in the -o format: `one`, a single resource (what cancel created or followed),
    else a List (its metadata.continue: `cont`). jsonpath values are made terminal-safe like
    all human output (-o json/yaml keep the stored values, escaped by their own syntax)."""
    doc = items[0] if one and items else as_list(items, cont)
    if output in ("json", "yaml"):
        emit_document(doc, output)
    elif output == "name":
        if items:
            click.echo("\n".join(terminal_safe(record_ref(o)) for o in items))
    elif output.startswith("jsonpath="):
        try:
            text = jsonpath.render(jsonpath.parse(output.removeprefix("jsonpath=")), doc, terminal_safe)
        except jsonpath.JsonPathError as exc:
            raise CliError(f"error executing the jsonpath template: {exc}", EXIT_ERROR) from None
        click.echo(text, nl=False)
    elif items:  # table, wide
        click.echo(safe_block(record_table(items, namespaces=namespaces, wide=output == "wide"), coloured(sys.stdout)))


# ----------------------------------------------------------------------------- the -o flag
class OutputFormat(click.ParamType[str]):
    """-o table|wide|name|json|yaml|jsonpath=TEMPLATE (a template is checked when parsed)."""

    name = "format"
    CHOICES = ("table", "wide", "name", "json", "yaml")

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "[" + "|".join(self.CHOICES) + "|jsonpath=TEMPLATE]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).removeprefix("=")  # -o=json, as kubectl takes it
        if text in self.CHOICES:
            return text
        if text == "jsonpath" or text == "jsonpath=":
            self.fail("jsonpath needs a template, e.g. -o jsonpath='{.metadata.name}'", param, ctx)
        if text.startswith("jsonpath="):
            try:
                jsonpath.parse(text.removeprefix("jsonpath="))
            except jsonpath.JsonPathError as exc:
                self.fail(f"bad jsonpath template: {exc}", param, ctx)
            return text
        self.fail(f"{text!r} is not one of {', '.join(self.CHOICES)}, jsonpath=TEMPLATE", param, ctx)

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        return [CompletionItem(c) for c in (*self.CHOICES, "jsonpath=") if c.startswith(incomplete)]


