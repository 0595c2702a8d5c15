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


TASKS = Path(__file__).resolve().parents[1] / "examples" / "tasks.py"


def test_tasks_example(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BTB_", "XDG_STATE_HOME"))}
    result = subprocess.run(
        [sys.executable, str(TASKS)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "request: ALLOWED" in lines
    assert [line for line in lines if line.startswith("progress:")] == [
        "progress: export at 33%",
        "progress: export at 66%",
        "progress: export at 100%",
    ]
    assert [line for line in lines if line.startswith("export: wrote")] == [
        "export: wrote groceries.md",
        "export: wrote ideas.md",
        "export: wrote todo.md",
    ]
    assert "completed: export SUCCEEDED" in lines
    assert "completed: export FAILED: ValueError: nothing to export" in lines
    assert sum(line.startswith("sync: running at ") for line in lines) == 2
    assert "sync: next due at 09:15" in lines and "sync: next due at 09:45" in lines
    history = lines[lines.index("history of export:") :]
    assert history[1:3] == [
        "  09:00 application SUCCEEDED progress=100 message=None",
        "  09:00 application FAILED progress=0 message=ValueError: nothing to export",
    ]
    assert history[4:6] == [
        "  09:15 time SUCCEEDED progress=0 message=None",
        "  09:30 time SUCCEEDED progress=0 message=None",
    ]
    assert lines[-1] == "closed the system"
    # The failure is logged with its traceback on the "btb" logger (stderr, unconfigured logging).
    assert 'raise ValueError("nothing to export")' in result.stderr
    assert list(tmp_path.iterdir()) == []


CLIENTS = Path(__file__).resolve().parents[1] / "examples" / "clients.py"


def test_clients_example(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BTB_", "XDG_STATE_HOME"))}
    result = subprocess.run(
        [sys.executable, str(CLIENTS)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.splitlines()
    broker_pid = out[0].split()[2].rstrip(":")
    assert out[0] == f"broker pid {broker_pid}: is_broker=True"
    client = [line.split(": ", 1)[1] for line in out if line.startswith("client pid ")]
    # SPEC §10: a run ends before its completion reaches the handlers (one chain through the
    # broker), but nothing orders the answer to the request against the run it caused or that
    # run's notices (they come on other connections, to other threads): it may come anywhere.
    assert client[0] == f"is_broker=False, broker pid {broker_pid}"
    ran, completed = "running 'work'", "'work' completed SUCCEEDED"
    assert sorted(client[1:4]) == sorted(["request -> ALLOWED", ran, completed])
    assert client.index(ran) < client.index(completed)
    assert client[4:] == ["is_broker=True, tasks ['work']"]
    assert f"broker pid {broker_pid}: history of 'work': SUCCEEDED, progress 100" in out
    closed = out.index(f"broker pid {broker_pid}: closed")
    taken = next(i for i, line in enumerate(out) if line.endswith("is_broker=True, tasks ['work']"))
    assert closed < taken
