"""Human output that cannot rewrite a terminal: text from the cluster with its control
characters escaped, and colour (the phase only) on a terminal that takes it."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from necrocode.model import Phase

# C0 and C1 controls, DEL, and the invisible characters that reorder or break lines (bidi
# overrides and isolates, line and paragraph separators)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    c = match.group()
    return _NAMED_ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def terminal_safe(text: str) -> str:
    """`text` with its control characters written as escapes (\\x1b, \\n, \\u202e). Reasons,
    messages, names, requesters and errors come from the cluster, where anyone who may create a
    cancellation chose them: written raw, an ESC sequence or a carriage return could clear the
    screen or rewrite the lines above. Applied where human output is printed (never to -o
    json/yaml, which print the stored values, escaped by their own syntax)."""
    return _CONTROL.sub(_escape, text)


# Colour, on a terminal only: the phase, wherever a view shows it
PHASE_COLOUR: dict[str, str] = {Phase.COMPLETED: "32", Phase.PARTIALLY_COMPLETED: "33", Phase.FAILED: "31",
                                 Phase.REJECTED: "31", Phase.RUNNING: "36"}  # green, yellow, red, red, cyan


def interactive(stream: Any) -> bool:
    """Whether `stream` is a terminal that takes ANSI sequences: a TTY whose TERM is not 'dumb'.
    Anything else (a pipe, a file, CI) gets plain text without a single control sequence."""
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return tty and os.environ.get("TERM") != "dumb"


def coloured(stream: Any) -> bool:
    """Colour as well: on a terminal, unless NO_COLOR is set to anything (no-color.org)."""
    return interactive(stream) and not os.environ.get("NO_COLOR")


class Painted(str):
    """A line of human output that shows a phase: `before`, the phase, `after`. It reads as
    the plain line; `paint` colours the phase on a terminal."""

    before: str
    phase: str
    after: str

    def __new__(cls, before: str, phase: str, after: str = "") -> Painted:
        line = super().__new__(cls, before + phase + after)
        line.before, line.phase, line.after = before, phase, after
        return line


def paint(line: str, colour: bool, width: int | None = None) -> str:
    """A line as printed: terminal-safe, cut to `width`, and with `colour` its phase coloured
    (the only escape sequence the CLI adds to a line, never written to anything but a terminal)."""
    if not (colour and isinstance(line, Painted) and line.phase in PHASE_COLOUR):
        text = terminal_safe(line)
        return text if width is None else text[:width]
    before, after = terminal_safe(line.before), terminal_safe(line.after)
    if width is not None:
        if len(before) + len(line.phase) > width:
            return (before + line.phase + after)[:width]
        after = after[:width - len(before) - len(line.phase)]
    return f"{before}\x1b[{PHASE_COLOUR[line.phase]}m{line.phase}\x1b[0m{after}"


def safe_block(lines: Sequence[str], colour: bool = False) -> str:
    """Lines of human output, each made terminal-safe (and with `colour`, its phase coloured), joined."""
    return "\n".join(paint(ln, colour) for ln in lines)

