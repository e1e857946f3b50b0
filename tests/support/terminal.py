"""Children started as from a terminal, for the tests of what Ctrl-C does.

A test run started in the background by a non-interactive shell (`make test &`, a CI script's
`cmd &`) inherits SIGINT ignored, and exec keeps an ignored signal ignored: the child the test
sends SIGINT to would never hear it, and the test would fail for how it was started, not for
what it tests. A handler, unlike SIG_IGN, is reset to the default on exec, so a child started
while this process has one gets SIGINT as a terminal's foreground job does."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def sigint_as_from_a_terminal() -> Iterator[None]:
    """Within it, children start with SIGINT at its default (Python's KeyboardInterrupt). Main
    thread only (signal.signal's rule), where pytest runs tests."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
