"""`-o jsonpath=` prints what `kubectl get -o jsonpath=` prints for the same template and object
(the expected strings are kubectl's output for these templates)."""

from __future__ import annotations

from typing import Any

import pytest

from necrocode.cli import jsonpath

LIST: dict[str, Any] = {
    "apiVersion": "v1", "kind": "List", "metadata": {},
    "items": [
        {"kind": "JobCancellation", "metadata": {"name": "a", "labels": {"necrocode.io/job": "j1"},
                                                 "annotations": {"necrocode.io/requester": "alice"}},
         "spec": {"jobName": "j1", "force": True, "gracePeriodSeconds": 0},
         "status": {"phase": "Completed", "progress": {"runnersTotal": 2, "runnersTerminated": 2},
                    "steps": [{"name": "Validate", "state": "Succeeded"}, {"name": "Verify", "state": "Failed"}]}},
        {"kind": "TaskCancellation", "metadata": {"name": "b"}, "spec": {"jobName": "j2", "taskId": "t1"},
         "status": {"phase": "Running", "ratio": 1.5, "whole": 3.0}},
    ],
}


def render(template: str, data: Any = LIST) -> str:
    return jsonpath.render(jsonpath.parse(template), data)


@pytest.mark.parametrize(("template", "expected"), [
    ("{.items[0].metadata.name}", "a"),
    ("{.items[*].metadata.name}", "a b"),
    ('{range .items[*]}{.metadata.name}{"\\n"}{end}', "a\nb\n"),
    ('{range .items[*]}{.metadata.name}{"\\t"}{.status.phase}{"\\n"}{end}', "a\tCompleted\nb\tRunning\n"),
    ("{range .items[*]}[{.spec.taskId}]{end}", "[][t1]"),  # a missing key prints nothing
    ("names: {.items[*].metadata.name}.", "names: a b."),
    ("{.items[-1].metadata.name}", "b"),
    ("{.items[0:1].metadata.name}", "a"),
    ("{.items[::1].metadata.name}", "a b"),
    ("{.items[1:].spec.jobName}", "j2"),
    ("{.items[*]['metadata.name']}", "a b"),  # kubectl reads ['a.b'] as .a.b
    ("{.items[0].metadata.annotations.necrocode\\.io/requester}", "alice"),
    ("{.items[0].metadata.labels}", '{"necrocode.io/job":"j1"}'),  # maps and lists as compact JSON
    ("{.items[0].status.steps[*].name}", "Validate Verify"),
    ('{.items[0].status.steps[?(@.state=="Failed")].name}', "Verify"),
    ("{.items[0].status.steps[?(@.state!='Failed')].name}", "Validate"),
    ("{.items[?(@.spec.taskId)].metadata.name}", "b"),
    ("{.items[?(@.status.progress.runnersTotal>1)].metadata.name}", "a"),
    ('{.items[?(@.metadata.name=~"^b")].kind}', "TaskCancellation"),
    ("{.items[0].spec.force} {.items[0].spec.gracePeriodSeconds}", "true 0"),
    ("{.items[1].status.ratio} {.items[1].status.whole}", "1.5 3"),
    ("{..phase}", "Completed Running"),
    ("{.items[0].metadata['name','labels']}", 'a {"necrocode.io/job":"j1"}'),
    ("{.items[0].status.progress.*}", "2 2"),
    ("{.kind}", "List"),
    ("{$.kind} {@.kind}", "List List"),
    ("plain text", "plain text"),
    ('{"}"}', "}"),
    ("{.nothing.here}", ""),
])
def test_kubectl_templates(template: str, expected: str) -> None:
    assert render(template) == expected


def test_a_single_object_and_escaping_only_the_values() -> None:
    obj = LIST["items"][0] | {"spec": {"reason": "a\x1b[2Jb"}}
    tpl = jsonpath.parse('{.metadata.name}{"\\n"}{.spec.reason}{"\\n"}')
    assert jsonpath.render(tpl, obj) == "a\na\x1b[2Jb\n"
    assert jsonpath.render(tpl, obj, lambda v: v.replace("\x1b", "\\x1b")) == "a\na\\x1b[2Jb\n"  # the template's "\n" stays


@pytest.mark.parametrize(("template", "fragment"), [
    ("{.items[0]", "unclosed action"),
    ("{.items[}", "unterminated array"),
    ("{.items[x]}", "invalid array index"),
    ('{"abc}', "unterminated quoted string"),
    ("{end}", "not in range"),
    ("{foo}", "unrecognized identifier 'foo'"),
    ("{.items[?(@.a==1}", "unterminated filter"),
    ("{.items[::0]}", "step must be > 0"),
    ("{....a}", "invalid multiple recursive descent"),
])
def test_bad_templates_are_refused_when_parsed(template: str, fragment: str) -> None:
    with pytest.raises(jsonpath.JsonPathError, match=None) as err:
        jsonpath.parse(template)
    assert fragment in str(err.value)


@pytest.mark.parametrize(("template", "fragment"), [
    ("{.items[5].metadata.name}", "array index out of bounds"),
    ("{.metadata[0]}", "not an array"),
    ("{.metadata[?(@.x)]}", "cannot be filtered"),
])
def test_templates_that_do_not_fit_the_data_fail_like_kubectl(template: str, fragment: str) -> None:
    with pytest.raises(jsonpath.JsonPathError) as err:
        render(template)
    assert fragment in str(err.value)
