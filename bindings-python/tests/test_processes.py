"""Real processes around a system: interpreter exit with a task that ignores cancellation, and a
forked child (Python multiprocessing's default on Linux before 3.14) that must not keep the store."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import btb


def run_script(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("attempt", range(3))
def test_exit_with_a_cpu_bound_task_that_ignores_cancellation_is_clean(tmp_path: Path, attempt: int) -> None:
    """Regression: the task is abandoned by close() after its grace; at interpreter exit Python
    < 3.14 ends its thread with pthread_exit, and the unwind through Rust frames aborted the
    process (exit status 134, 5 times out of 5). The thread is parked instead."""
    result = run_script(
        """
        import threading
        import btb
        manifest = btb.Manifest("org.example.spin", "1", [btb.TaskDeclaration("e.Run", ["general"])])
        system = btb.System(manifest, ":memory:", simulated=True, policy=btb.Policy(grace_seconds=0.1))
        started = threading.Event()

        def run(instance):
            started.set()
            n = 0
            while True:  # CPU-bound, never looks at cancellation
                n += 1

        system.register_entry_point("e.Run", run)
        builder = btb.BackgroundTaskBuilder()
        builder.name = "spin"
        builder.task_entry_point = "e.Run"
        builder.set_trigger(btb.ApplicationTrigger())
        builder.register(system).request()
        assert started.wait(30)
        print("exiting", flush=True)
        """,
        tmp_path,
    )
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert result.stdout.splitlines() == ["exiting"]


def test_a_forked_child_does_not_keep_the_store(tmp_path: Path) -> None:
    """Regression: the child of a fork inherited the store's lock; after the parent closed its
    system, opening the store again failed while the child lived, naming the parent's own pid."""
    manifest = btb.Manifest("org.example.fork", "1", [btb.TaskDeclaration("e.Run", ["general"])])
    store = tmp_path / "fork.sqlite3"
    system = btb.System(manifest, store, simulated=True)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: lives until the parent closes the pipe
        os.close(write_end)
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    try:
        system.close()
        with btb.System(manifest, store, simulated=True) as again:
            assert again.all_tasks == {}
    finally:
        os.close(write_end)
        os.waitpid(pid, 0)
