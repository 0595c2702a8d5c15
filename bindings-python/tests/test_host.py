"""Out-of-process hosts from Python (SPEC §5), with real processes: a manifest entry point
declared with ``exec`` runs this venv's Python on a script that calls ``btb.host.connect()``."""

from __future__ import annotations

import sys
import textwrap
import threading
from pathlib import Path

import pytest

import btb

HOST = textwrap.dedent(
    """
    import sys
    import btb, btb.host

    instance = btb.host.connect()
    assert isinstance(instance, btb.BackgroundTaskInstance), type(instance)
    name = instance.task.name
    print("host", name, instance.trigger_details, instance.task.system.app_id)
    if name == "progress":
        deferral = instance.get_deferral()
        instance.progress = 25
        instance.progress = 75
        deferral.complete()
    elif name == "fail":
        instance.report_failure("nothing to do")
    elif name == "cancel":
        heard = []
        instance.add_canceled(lambda inst, reason: heard.append(reason))
        instance.progress = 1  # ready
        reason = instance.wait_canceled(30)
        assert reason == btb.BackgroundTaskCancellationReason.ABORT, reason
        assert instance.canceled and heard == [reason], heard
    elif name == "raise":
        raise RuntimeError("the host broke")
    elif name == "describe":
        task = instance.task
        print("task", task.task_entry_point, type(task.trigger).__name__, task.task_id)
        try:
            task.unregister(False)
        except btb.UnsupportedError as e:
            print("unregister:", e)
    """
)


@pytest.fixture
def system(tmp_path: Path) -> btb.System:
    script = tmp_path / "host.py"
    script.write_text(HOST)
    manifest = btb.Manifest(
        app_id="org.example.pyhost",
        version="1",
        tasks=[btb.TaskDeclaration("app.Host", ["general"], exec=[sys.executable, str(script)])],
    )
    with btb.System(manifest, tmp_path / "btb.sqlite3", simulated=True) as system:
        yield system


def register(system: btb.System, name: str) -> tuple[btb.BackgroundTaskRegistration, list, threading.Event]:
    builder = btb.BackgroundTaskBuilder()
    builder.name = name
    builder.task_entry_point = "app.Host"
    builder.set_trigger(btb.ApplicationTrigger())
    registration = builder.register(system)
    events: list = []
    done = threading.Event()
    registration.add_progress(lambda r, args: events.append(args.progress))

    def completed(r: btb.BackgroundTaskRegistration, args: btb.BackgroundTaskCompletedEventArgs) -> None:
        events.append(args.status)
        done.set()

    registration.add_completed(completed)
    return registration, events, done


def test_a_host_reports_progress_and_its_output_is_kept(system: btb.System) -> None:
    registration, events, done = register(system, "progress")
    assert registration.request({"n": 1}) == btb.ApplicationTriggerResult.ALLOWED
    assert done.wait(30)
    assert events == [25, 75, btb.TaskOutcome.SUCCEEDED]
    (run,) = registration.history
    assert run.stdout == "host progress {'n': 1} org.example.pyhost\n"
    assert run.stderr is None
    assert run.last_progress == 75


def test_a_reported_failure_and_an_exception_fail_the_run(system: btb.System) -> None:
    registration, events, done = register(system, "fail")
    registration.request()
    assert done.wait(30)
    assert events == [btb.TaskOutcome.FAILED]
    assert registration.history[0].message == "nothing to do"

    registration, events, done = register(system, "raise")
    registration.request()
    assert done.wait(30)
    run = registration.history[0]
    assert run.status == btb.TaskOutcome.FAILED
    assert run.message.startswith("the host process exited with status 1; stderr ends with:")
    assert run.message.endswith("RuntimeError: the host broke")
    assert "Traceback" in run.stderr


def test_cancellation_reaches_the_host(system: btb.System) -> None:
    registration, events, done = register(system, "cancel")
    ready = threading.Event()
    registration.add_progress(lambda r, args: ready.set())
    registration.request()
    assert ready.wait(30)
    registration.unregister(True)
    assert done.wait(30)
    assert events[-1] == btb.TaskOutcome.CANCELED


def test_a_host_gets_its_task_and_registration_calls_are_unsupported(system: btb.System) -> None:
    """The same instance type as in-process: its task (from the broker's welcome), on which what
    needs the app's system raises ``UnsupportedError`` naming why."""
    registration, events, done = register(system, "describe")
    registration.request()
    assert done.wait(30)
    assert events == [btb.TaskOutcome.SUCCEEDED]
    lines = registration.history[0].stdout.splitlines()
    assert lines[1] == f"task app.Host ApplicationTrigger {registration.task_id}", lines
    assert lines[2].startswith("unregister: ") and "an exec host cannot unregister a task" in lines[2], lines
    assert "the app's process does" in lines[2], lines


def test_connect_outside_a_host_says_why() -> None:
    import btb.host

    with pytest.raises(btb.StateError, match="BTB_HOST_FD"):
        btb.host.connect()


def test_import_btb_makes_btb_host_available() -> None:
    import subprocess
    import sys

    # A fresh interpreter: `import btb` alone, then `btb.host` (no `import btb.host`).
    out = subprocess.run(
        [sys.executable, "-c", "import btb; print(btb.host.connect.__name__, btb.host.__all__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["_host_connect", "['connect']"]
