"""Client mode with real processes (SPEC §10): a second process that opens a store whose broker
runs elsewhere is that broker's client, and when the broker process is SIGKILLed a client takes
the store over. The other process is a fresh Python interpreter; it talks through its stdout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import APP_ID, MakeBuilder

import btb

MANIFEST = f"""
btb.Manifest(app_id={APP_ID!r}, version="1.0", tasks=[
    btb.TaskDeclaration("notes.Sync", ["timer", "systemEvent"]),
    btb.TaskDeclaration("notes.Index", ["timer"]),
    btb.TaskDeclaration("notes.General", ["general"]),
])
"""


def python(code: str, store: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "import btb, os, sys, threading\nmanifest = (" + MANIFEST + ")\n" + textwrap.dedent(code)],
        env={**os.environ, "BTB_TEST_STORE": str(store)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_client_process_registers_requests_and_hears_its_runs(
    open_system: Callable[..., btb.System], store_path: Path
) -> None:
    broker = open_system()
    ran: list[str] = []

    def run(instance: btb.BackgroundTaskInstance) -> None:
        instance.progress = 30
        ran.append(instance.task.name)

    broker.register_entry_point("notes.General", run)
    bad = btb.BackgroundTaskBuilder()
    bad.name = "bad"
    bad.task_entry_point = "notes.Sync"
    bad.set_trigger(btb.TimeTrigger(5, one_shot=False))
    with pytest.raises(btb.InvalidArgumentError) as here:
        bad.register(broker)

    child = python(
        """
        with btb.System(manifest, os.environ["BTB_TEST_STORE"]) as s:
            print("BROKER", s.is_broker, s.broker_pid, flush=True)
            bad = btb.BackgroundTaskBuilder()
            bad.name = "bad"
            bad.task_entry_point = "notes.Sync"
            bad.set_trigger(btb.TimeTrigger(5, one_shot=False))
            try:
                bad.register(s)
            except btb.InvalidArgumentError as e:
                print("INVALID", e, flush=True)
            trigger = btb.ApplicationTrigger()
            b = btb.BackgroundTaskBuilder()
            b.name = "remote"
            b.task_entry_point = "notes.General"
            b.set_trigger(trigger)
            r = b.register(s)
            done = threading.Event()
            seen = []
            r.add_progress(lambda reg, args: seen.append(f"progress {reg.name} {args.progress}"))
            def completed(reg, args):
                seen.append(f"completed {reg.name} {args.status.name}")
                done.set()
            r.add_completed(completed)
            print("REQUEST", trigger.request().name, flush=True)
            assert done.wait(30)
            print("SEEN", "; ".join(seen), flush=True)
            print("HISTORY", len(r.history), r.history[0].status.name, flush=True)
        """,
        store_path,
    )
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert out.splitlines() == [
        f"BROKER False {os.getpid()}",
        f"INVALID {here.value}",
        "REQUEST ALLOWED",
        "SEEN progress remote 30; completed remote SUCCEEDED",
        "HISTORY 1 SUCCEEDED",
    ]
    assert ran == ["remote"]
    assert [r.name for r in broker.all_tasks.values()] == ["remote"]


def test_a_run_function_registered_in_a_client_runs_in_that_client(
    open_system: Callable[..., btb.System], store_path: Path
) -> None:
    broker = open_system()  # no handler for notes.Sync in this process
    child = python(
        """
        with btb.System(manifest, os.environ["BTB_TEST_STORE"]) as s:
            ran_in = []
            def sync(instance):
                ran_in.append(os.getpid())
                instance.progress = 40
                deferral = instance.get_deferral()
                threading.Thread(target=deferral.complete).start()
            s.register_entry_point("notes.Sync", sync)
            b = btb.BackgroundTaskBuilder()
            b.name = "child-sync"
            b.task_entry_point = "notes.Sync"
            b.set_trigger(btb.CustomSystemEventTrigger("child-event", btb.CustomSystemEventTriggerRecurrence.ALWAYS))
            r = b.register(s)
            done = threading.Event()
            seen = []
            def completed(reg, args):
                seen.append(f"{args.status.name} {args.message}")
                done.set()
            r.add_completed(completed)
            print("FIRED", s.signal_event("child-event"), flush=True)
            assert done.wait(30)
            print("RAN", ran_in == [os.getpid()], seen[0], flush=True)
        """,
        store_path,
    )
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert out.splitlines() == ["FIRED 1", "RAN True SUCCEEDED None"]
    (task,) = broker.all_tasks.values()
    (run,) = task.history
    assert run.status == btb.TaskOutcome.SUCCEEDED
    assert run.last_progress == 40


def test_a_client_takes_the_store_over_when_the_broker_is_killed(
    open_system: Callable[..., btb.System], store_path: Path, make_builder: MakeBuilder
) -> None:
    child = python(
        """
        s = btb.System(manifest, os.environ["BTB_TEST_STORE"], simulated=True)
        b = btb.BackgroundTaskBuilder()
        b.name = "kept"
        b.task_entry_point = "notes.Sync"
        b.set_trigger(btb.TimeTrigger(15, one_shot=False))
        b.register(s)
        print("READY", s.is_broker, flush=True)
        sys.stdin.readline()
        """,
        store_path,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "READY True\n"
        system = open_system()
        assert not system.is_broker
        assert system.broker_pid == child.pid
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        # The next call finds this process the broker, with the registration the dead one made.
        assert [r.name for r in system.all_tasks.values()] == ["kept"]
        assert system.is_broker
        assert system.broker_pid == os.getpid()
        make_builder("after").register(system)
        assert sorted(r.name for r in system.all_tasks.values()) == ["after", "kept"]
    finally:
        child.kill()
        child.communicate(timeout=30)
