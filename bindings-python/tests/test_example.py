"""The example runs from a fresh checkout with nothing set up by hand."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "register.py"


@pytest.mark.parametrize("arguments", [[], ["--memory"]], ids=["file store", "memory store"])
def test_register_example(tmp_path: Path, arguments: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BTB_", "XDG_STATE_HOME"))}
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), *arguments],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert sum(line.startswith("registered '") for line in out.splitlines()) == 3
    assert "registration failed as expected: InvalidArgumentError (status 3)" in out
    assert "freshness 5 minutes" in out
    assert "group 'indexing' (Search indexing):" in out
    assert "unregistered 'too-eager'; 2 ungrouped tasks remain:" in out
    assert list(tmp_path.iterdir()) == []  # nothing left behind
