"""The operator runs on asyncio's loop unless NECROCODE_EVENT_LOOP=uvloop asks for uvloop (a
runtime dependency; not the default because of MagicStack/uvloop#653, which can kill the
operator under connection resets): the loop carries every request, watch event and timer."""

from __future__ import annotations

import asyncio

import pytest

from necrocode.main import _run, main


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_asyncio_by_default() -> None:
    assert _run(_loop_module()).startswith("asyncio")


def test_uvloop_when_asked() -> None:
    assert _run(_loop_module(), "uvloop").startswith("uvloop")


def test_an_unknown_loop_is_refused_with_a_clear_message(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NECROCODE_EVENT_LOOP", "tokio")
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "NECROCODE_EVENT_LOOP='tokio': expected one of asyncio, uvloop" in capsys.readouterr().err
