"""The CLI's bash completion, run by bash: each completion starts the installed `necrocode`
console script, as a shell would (seconds, hence not a unit test)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from necrocode import cli


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completes_subcommands_flags_and_formats(tmp_path: Path) -> None:
    script = tmp_path / "necrocode.bash"
    script.write_text(CliRunner().invoke(cli.cli, ["completion", "bash"]).stdout)
    bindir = Path(sys.executable).parent
    assert (bindir / "necrocode").exists(), "the console script (pip install -e .)"

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        proc = subprocess.run(["bash", "--norc", "--noprofile", "-c",
                               f'source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; '
                               f'_necrocode_completion necrocode; printf "%s\\n" "${{COMPREPLY[@]}}"'],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
                                   "KUBECONFIG": str(tmp_path / "none.yaml")})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    assert complete("necrocode", "jo") == ["job"]
    assert complete("necrocode", "") == ["completion", "job"]
    assert complete("necrocode", "job", "cancel-s") == ["cancel-status"]
    assert complete("necrocode", "job", "cancel", "j1", "--gr") == ["--grace-period"]
    assert complete("necrocode", "job", "cancellations", "-o", "j") == ["json", "jsonpath="]
    assert complete("necrocode", "job", "cancel", "") == []  # job names: no cluster here, so none (and no error)
