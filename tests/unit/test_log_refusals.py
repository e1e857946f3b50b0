"""The tests' reading of an operator log for refused requests (tests.support.operators.refusals):
a line counts when one of its values tells of a 403 or Forbidden, not when a timestamp or a
duration happens to hold the digits 403 (a stop failed CI that way)."""

import json

import pytest

from tests.support.operators import refusals


def line(**rec: object) -> str:
    return json.dumps({"ts": "2026-12-04T19:14:51.403Z", "level": "info", "event": "step started", **rec})


@pytest.mark.parametrize("text, refused", [
    (line(), False),  # the timestamp's milliseconds
    (line(duration=0.403), False),
    (line(duration=1403), False),
    (line(cancellation="jc-4030"), False),
    (line(event="verify: runner delete failed", error="403 Forbidden: pods \"a\" is forbidden"), True),
    (line(error="pods is forbidden: User cannot list"), True),
    (line(status=403), True),
    (line(code=403), True),
    (line(details={"status": 403}), True),
    ("Traceback: kubernetes.client.exceptions.ApiException: (403)", True),
    ("plain text line at 12:00:00.403", False),
])
def test_a_refusal_is_read_from_the_values_not_the_timestamp(text: str, refused: bool) -> None:
    assert bool(refusals(text)) is refused


def test_each_refused_line_is_quoted_once() -> None:
    text = "\n".join([line(), line(error="403 Forbidden", reason="Forbidden"), line(duration=0.403)])
    assert refusals(text) == [text.splitlines()[1]]
