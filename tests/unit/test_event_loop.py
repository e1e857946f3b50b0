"""The operator runs on uvloop (a runtime dependency) unless NECROCODE_EVENT_LOOP=asyncio says
otherwise: the loop carries every request, watch event and timer of a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from necrocode.main import _run, main


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_uvloop_by_default() -> None:
    assert _run(_loop_module()).startswith("uvloop")


def test_asyncio_when_asked() -> None:
    assert _run(_loop_module(), "asyncio").startswith("asyncio")


def test_an_unknown_loop_is_refused_with_a_clear_message(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NECROCODE_EVENT_LOOP", "tokio")
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "NECROCODE_EVENT_LOOP='tokio': expected one of uvloop, asyncio" in capsys.readouterr().err
