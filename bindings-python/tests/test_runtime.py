"""Running tasks from Python (SPEC §3, §4, §9): triggers fire, conditions gate, instances live and
die as on Windows. Deterministic: a manual clock, the simulated source and ``wait_idle``; threads
meet on ``threading.Event``s, never on sleeps."""

from __future__ import annotations

import asyncio
import datetime
import gc
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import btb

APP_ID = "org.example.runtime"
START = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
WAIT = 10.0  # generous bound for events crossing threads; tests never wait for it to pass

Outcome = btb.TaskOutcome
Reason = btb.BackgroundTaskCancellationReason


def manifest(*extra: btb.TaskDeclaration) -> btb.Manifest:
    return btb.Manifest(
        app_id=APP_ID,
        version="1",
        tasks=[
            btb.TaskDeclaration("app.Run", ["general"]),
            btb.TaskDeclaration("app.Timer", ["timer"]),
            btb.TaskDeclaration("app.Event", ["systemEvent"]),
            *extra,
        ],
    )


@pytest.fixture
def clock() -> btb.ManualClock:
    return btb.ManualClock(START)


@pytest.fixture
def open_system(clock: btb.ManualClock) -> Iterator[Callable[..., btb.System]]:
    opened: list[btb.System] = []

    def open_(*extra: btb.TaskDeclaration, store: object = ":memory:", **policy: Any) -> btb.System:
        options = {"min_freshness_minutes": 1, "timer_window_seconds": 0}
        options.update(policy)
        system = btb.System(
            manifest(*extra), store, clock=clock, simulated=True, policy=btb.Policy(**options)  # type: ignore[arg-type]
        )
        opened.append(system)
        return system

    yield open_
    for system in opened:
        system.close()


@pytest.fixture
def system(open_system: Callable[..., btb.System]) -> btb.System:
    return open_system()


def register(
    system: btb.System,
    trigger: btb.IBackgroundTrigger,
    entry_point: str | None = "app.Run",
    name: str = "task",
    conditions: tuple[btb.SystemConditionType, ...] = (),
    group: btb.BackgroundTaskRegistrationGroup | None = None,
) -> btb.BackgroundTaskRegistration:
    builder = btb.BackgroundTaskBuilder()
    builder.name = name
    builder.task_entry_point = entry_point
    builder.set_trigger(trigger)
    builder.task_group = group
    for condition in conditions:
        builder.add_condition(btb.SystemCondition(condition))
    return builder.register(system)


def completions(registration: btb.BackgroundTaskRegistration) -> list[btb.BackgroundTaskCompletedEventArgs]:
    done: list[btb.BackgroundTaskCompletedEventArgs] = []
    registration.add_completed(lambda reg, args: done.append(args))
    return done


def idle(system: btb.System) -> None:
    assert system.wait_idle(WAIT), "the system did not become idle"


# --- triggers ------------------------------------------------------------------------------------


def test_time_trigger_fires_when_the_manual_clock_passes_its_due_time(
    system: btb.System, clock: btb.ManualClock
) -> None:
    runs: list[uuid.UUID] = []
    system.register_entry_point("app.Timer", lambda instance: runs.append(instance.instance_id))
    registration = register(system, btb.TimeTrigger(5, one_shot=False), "app.Timer")
    assert registration.next_due == START + datetime.timedelta(minutes=5)

    clock.advance(datetime.timedelta(minutes=4))
    idle(system)
    assert runs == []
    clock.advance(60)
    idle(system)
    assert len(runs) == 1
    # Drift-free: the next due time stays on the grid of the registration.
    assert registration.next_due == START + datetime.timedelta(minutes=10)
    assert registration.history[0].trigger_kind == "time"
    assert registration.history[0].trigger_details is None


def test_one_shot_time_trigger_runs_once_and_is_spent(system: btb.System, clock: btb.ManualClock) -> None:
    runs: list[int] = []
    system.register_entry_point("app.Timer", lambda instance: runs.append(1))
    registration = register(system, btb.TimeTrigger(1, one_shot=True), "app.Timer")
    clock.advance(datetime.timedelta(minutes=3))
    idle(system)
    clock.advance(datetime.timedelta(minutes=3))
    idle(system)
    assert runs == [1]
    assert registration.spent
    assert registration.next_due is None


def test_application_trigger_arguments_reach_trigger_details(system: btb.System) -> None:
    seen: list[Any] = []
    system.register_entry_point("app.Run", lambda instance: seen.append(instance.trigger_details))
    trigger = btb.ApplicationTrigger()
    registration = register(system, trigger)
    arguments = {"user": "ada", "count": 3, "big": 2**63, "ratio": 0.5, "flags": [True, None, "x"], "nested": {"k": (1, 2)}}

    assert trigger.request(arguments, system) is btb.ApplicationTriggerResult.ALLOWED
    idle(system)
    assert registration.request() is btb.ApplicationTriggerResult.ALLOWED
    idle(system)
    expected = dict(arguments, nested={"k": [1, 2]})
    assert seen == [expected, None]
    assert [run.trigger_details for run in registration.history] == [expected, None]


def test_request_uses_the_default_system(system: btb.System) -> None:
    ran = threading.Event()
    system.register_entry_point("app.Run", lambda instance: ran.set())
    trigger = btb.ApplicationTrigger()
    register(system, trigger)
    btb.set_default_system(system)
    try:
        assert trigger.request() is btb.ApplicationTriggerResult.ALLOWED
        idle(system)
        assert ran.is_set()
    finally:
        btb.set_default_system(None)


def test_request_arguments_must_be_a_dict_of_json_values(system: btb.System) -> None:
    system.register_entry_point("app.Run", lambda instance: None)
    trigger = btb.ApplicationTrigger()
    registration = register(system, trigger)
    with pytest.raises(TypeError, match="must be a dict"):
        trigger.request([1, 2], system)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not JSON"):
        trigger.request({"when": datetime.datetime.now()}, system)
    with pytest.raises(TypeError, match="keys"):
        registration.request({1: "one"})  # type: ignore[dict-item]
    with pytest.raises(btb.InvalidArgumentError, match="NaN"):
        registration.request({"x": math.nan})
    with pytest.raises(btb.InvalidArgumentError, match="64 bits"):
        registration.request({"x": 2**64})
    with pytest.raises(ValueError):  # InvalidArgumentError is a ValueError
        registration.request({"x": [math.inf]})
    # Nothing was requested by the failed calls.
    idle(system)
    assert registration.history == []


def test_request_results(system: btb.System) -> None:
    unregistered = btb.ApplicationTrigger()
    assert unregistered.request(None, system) is btb.ApplicationTriggerResult.UNKNOWN_ERROR
    timer = register(system, btb.TimeTrigger(15), "app.Timer")
    with pytest.raises(btb.InvalidArgumentError, match="not an application trigger"):
        timer.request()


def test_request_while_running_is_currently_running(system: btb.System) -> None:
    started, release = threading.Event(), threading.Event()

    def run(instance: btb.BackgroundTaskInstance) -> None:
        started.set()
        assert release.wait(WAIT)

    system.register_entry_point("app.Run", run)
    registration = register(system, btb.ApplicationTrigger())
    done = completions(registration)
    assert registration.request() is btb.ApplicationTriggerResult.ALLOWED
    assert started.wait(WAIT)
    assert registration.request({"again": True}) is btb.ApplicationTriggerResult.CURRENTLY_RUNNING
    assert not system.wait_idle(0.05)
    release.set()
    idle(system)
    assert len(done) == 1  # the refused request was not queued
    assert len(registration.history) == 1


def test_request_async(system: btb.System) -> None:
    seen: list[Any] = []
    system.register_entry_point("app.Run", lambda instance: seen.append(instance.trigger_details))
    trigger = btb.ApplicationTrigger()
    registration = register(system, trigger)

    async def main() -> list[btb.ApplicationTriggerResult]:
        first = await trigger.request_async({"n": 1}, system)
        await asyncio.get_running_loop().run_in_executor(None, system.wait_idle, WAIT)
        second = await registration.request_async({"n": 2})
        with pytest.raises(TypeError):  # checked at the call, before anything is scheduled
            trigger.request_async("no", system)  # type: ignore[arg-type]
        return [first, second]

    assert asyncio.run(main()) == [btb.ApplicationTriggerResult.ALLOWED] * 2
    idle(system)
    assert seen == [{"n": 1}, {"n": 2}]


def test_system_and_custom_events(system: btb.System) -> None:
    runs: list[str] = []
    system.register_entry_point("app.Event", lambda instance: runs.append(instance.task.name))
    register(system, btb.SystemTrigger(btb.SystemTriggerType.USER_PRESENT), "app.Event", name="present")
    register(
        system,
        btb.CustomSystemEventTrigger("sync-now", btb.CustomSystemEventTriggerRecurrence.ONCE),
        "app.Event",
        name="custom",
    )
    assert system.raise_event(btb.SystemTriggerType.USER_AWAY) == 0
    assert system.raise_event(btb.SystemTriggerType.USER_PRESENT) == 1
    idle(system)
    assert system.signal_event("sync-now") == 1
    idle(system)
    assert system.signal_event("sync-now") == 0  # ONCE: once per broker run
    with pytest.raises(btb.InvalidArgumentError):
        system.raise_event(99)
    assert sorted(runs) == ["custom", "present"]


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private XDG_RUNTIME_DIR short enough for a Unix socket path."""
    with tempfile.TemporaryDirectory(prefix="btb-rt-") as directory:
        monkeypatch.setenv("XDG_RUNTIME_DIR", directory)
        yield Path(directory)


def test_signal_event_from_another_process(
    open_system: Callable[..., btb.System], tmp_path: Path, runtime_dir: Path
) -> None:
    system = open_system(store=tmp_path / "btb.sqlite3")
    ran = threading.Event()
    system.register_entry_point("app.Event", lambda instance: ran.set())
    registration = register(
        system, btb.CustomSystemEventTrigger("sync-now", btb.CustomSystemEventTriggerRecurrence.ALWAYS), "app.Event"
    )
    code = "import sys, btb; btb.signal_event(sys.argv[1], sys.argv[2]); print('signalled')"
    result = subprocess.run(
        [sys.executable, "-c", code, APP_ID, "sync-now"],
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "signalled"
    idle(system)
    assert ran.is_set()
    assert [run.trigger_kind for run in registration.history] == ["custom_event"]
    # No broker for that app: NotFoundError, from this process too.
    with pytest.raises(btb.NotFoundError, match="no running btb broker"):
        btb.signal_event("org.example.nobody", "sync-now")


# --- conditions ----------------------------------------------------------------------------------


def test_conditions_latch_a_fire_until_set_state(system: btb.System, clock: btb.ManualClock) -> None:
    runs: list[Any] = []
    system.register_entry_point("app.Run", lambda instance: runs.append(instance.trigger_details))
    system.register_entry_point("app.Timer", lambda instance: runs.append("timer"))
    internet = btb.SystemConditionType.INTERNET_AVAILABLE
    app = register(system, btb.ApplicationTrigger(), conditions=(internet,))
    register(system, btb.TimeTrigger(1), "app.Timer", conditions=(internet,))

    assert system.state(internet) is None  # unknown: does not hold
    assert app.request({"n": 1}) is btb.ApplicationTriggerResult.ALLOWED
    # A latched request counts as running: a second one is refused, not queued (one run each).
    assert app.request({"n": 2}) is btb.ApplicationTriggerResult.CURRENTLY_RUNNING
    clock.advance(datetime.timedelta(minutes=1))
    idle(system)
    clock.advance(datetime.timedelta(minutes=1))  # a second timer fire coalesces with the first
    idle(system)
    assert runs == []
    system.set_state(internet, False)
    idle(system)
    assert runs == [] and system.state(internet) is False
    assert system.state(btb.SystemConditionType.INTERNET_NOT_AVAILABLE) is True
    system.set_state(internet, True)
    idle(system)
    assert sorted(runs, key=str) == ["timer", {"n": 1}]  # one run each: latched fires coalesce


def test_background_work_cost_and_state_errors(system: btb.System) -> None:
    assert system.background_work_cost is None
    system.set_state(btb.SystemConditionType.ON_AC_POWER, True)
    system.set_state(btb.SystemConditionType.FREE_NETWORK_AVAILABLE, True)
    assert system.background_work_cost is btb.BackgroundWorkCostValue.LOW
    system.set_state(btb.SystemConditionType.BATTERY_NOT_LOW, False)
    assert system.background_work_cost is btb.BackgroundWorkCostValue.HIGH
    with pytest.raises(btb.InvalidArgumentError):
        system.set_state(42, True)
    with btb.System(manifest(), ":memory:") as real:  # not simulated
        with pytest.raises(btb.StateError, match="simulated"):
            real.set_state(btb.SystemConditionType.ON_AC_POWER, True)


# --- instances, handlers, outcomes ---------------------------------------------------------------


def test_state_and_its_source(tmp_path: Path) -> None:
    """SPEC §6: a simulated system answers from what the app set; a real one reads the machine —
    STORAGE_NOT_LOW from the store's file system (statvfs), power from the sysfs tree that
    ``power_supply_root`` names (a missing tree: unknown, and the source says so)."""
    storage = btb.SystemConditionType.STORAGE_NOT_LOW
    ac = btb.SystemConditionType.ON_AC_POWER
    with btb.System(manifest(), ":memory:", simulated=True) as simulated:
        assert simulated.state_source(storage) == "simulated"
        assert simulated.state(storage) is None
    battery = tmp_path / "power_supply" / "BAT0"
    battery.mkdir(parents=True)
    for name, value in (("type", "Battery"), ("status", "Discharging"), ("capacity", "9")):
        (battery / name).write_text(value + "\n")
    for percent, expected in ((0, True), (100, False)):
        policy = btb.Policy(storage_low_percent=percent)
        assert policy.storage_low_percent == percent
        with btb.System(
            manifest(), tmp_path / f"real{percent}.sqlite3", policy=policy, power_supply_root=tmp_path / "power_supply"
        ) as real:
            assert real.state_source(storage) == "statvfs"
            assert real.state(storage) is expected
            assert (real.state(ac), real.state_source(ac)) == (False, "sysfs")
            assert real.state(btb.SystemConditionType.BATTERY_NOT_LOW) is False
            assert real.background_work_cost == btb.BackgroundWorkCostValue.HIGH
            with pytest.raises(btb.StateError):
                real.set_state(ac, True)
    with btb.System(manifest(), ":memory:", power_supply_root=tmp_path / "missing") as real:
        assert (real.state(ac), real.state_source(ac)) == (None, "unknown")
    with pytest.raises(btb.InvalidArgumentError):
        btb.Policy(storage_low_percent=101)


def test_a_missing_system_bus_is_logged_once_and_its_states_read_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """SPEC §6: the bus is the one DBUS_SYSTEM_BUS_ADDRESS names at open; a missing one is logged
    (through Rust's `log`, on the "btb" logger) and the states only D-Bus daemons know read unknown."""
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path / 'no-bus'}")
    with caplog.at_level(logging.INFO, logger="btb"):
        with btb.System(manifest(), ":memory:", power_supply_root=tmp_path / "none") as system:
            for condition in (
                btb.SystemConditionType.FREE_NETWORK_AVAILABLE,
                btb.SystemConditionType.SESSION_CONNECTED,
                btb.SystemConditionType.USER_PRESENT,
                btb.SystemConditionType.DEVICE_IDLE,
            ):
                assert (system.state(condition), system.state_source(condition)) == (None, "unknown")
    messages = [r.getMessage() for r in caplog.records if r.name == "btb" and "system bus" in r.getMessage()]
    assert len(messages) == 1, messages
    assert "no-bus" in messages[0] and "read unknown" in messages[0], messages


def test_a_time_zone_change_fires_its_trigger(tmp_path: Path) -> None:
    """TIME_ZONE_CHANGE from a real inotify event: the localtime link replaced as timedated does."""
    link = tmp_path / "localtime"
    link.symlink_to("/usr/share/zoneinfo/Etc/UTC")
    fired = threading.Event()
    with btb.System(manifest(), ":memory:", localtime=link) as system:

        @system.entry_point("app.Event")
        def on_change(instance: btb.BackgroundTaskInstance) -> None:
            fired.set()

        builder = btb.BackgroundTaskBuilder()
        builder.name = "tz"
        builder.task_entry_point = "app.Event"
        builder.set_trigger(btb.SystemTrigger(btb.SystemTriggerType.TIME_ZONE_CHANGE))
        builder.register(system)
        (tmp_path / "unrelated").write_text("no news\n")
        new = tmp_path / "localtime.new"
        new.symlink_to("/usr/share/zoneinfo/Europe/Berlin")
        new.replace(link)
        assert fired.wait(10)


def test_progress_and_completed_handlers_in_order(system: btb.System) -> None:
    events: list[tuple[str, Any]] = []

    @system.entry_point("app.Run")
    def run(instance: btb.BackgroundTaskInstance) -> None:
        assert instance.progress == 0
        for value in (10, 10, 50, 100):  # setting the same value again is no change
            instance.progress = value
        assert instance.progress == 100
        assert instance.suspended_count == 0
        assert instance.is_network_granted is False
        assert instance.canceled is False and instance.cancellation_reason is None

    registration = register(system, btb.ApplicationTrigger())
    registration.add_progress(lambda reg, args: events.append(("progress", args.progress)))

    def completed(reg: btb.BackgroundTaskRegistration, args: btb.BackgroundTaskCompletedEventArgs) -> None:
        assert reg == registration
        args.check_result()  # returns None: no exception
        events.append(("completed", (args.status, args.message, args.reason, args.last_progress)))

    registration.add_completed(completed)
    registration.request()
    idle(system)
    assert events == [
        ("progress", 10),
        ("progress", 50),
        ("progress", 100),
        ("completed", (Outcome.SUCCEEDED, None, None, 100)),
    ]


def test_progress_must_fit_u32(system: btb.System) -> None:
    errors: list[BaseException] = []

    def run(instance: btb.BackgroundTaskInstance) -> None:
        try:
            instance.progress = -1
        except btb.InvalidArgumentError as error:
            errors.append(error)

    system.register_entry_point("app.Run", run)
    register(system, btb.ApplicationTrigger()).request()
    idle(system)
    assert len(errors) == 1


def test_removed_handlers_are_not_called(system: btb.System) -> None:
    system.register_entry_point("app.Run", lambda instance: setattr(instance, "progress", 5))
    registration = register(system, btb.ApplicationTrigger())
    calls: list[str] = []
    progress = registration.add_progress(lambda reg, args: calls.append("progress"))
    completed = registration.add_completed(lambda reg, args: calls.append("completed"))
    kept = registration.add_completed(lambda reg, args: calls.append("kept"))
    registration.remove_completed(progress)  # a progress token: not a completed handler
    registration.remove_progress(progress)
    registration.remove_completed(completed)
    registration.remove_completed(completed)  # unknown now: ignored
    registration.remove_progress(123456)
    registration.request()
    idle(system)
    assert calls == ["kept"]
    assert kept != completed


def test_exception_in_run_function_fails_the_run_and_is_logged(
    system: btb.System, caplog: pytest.LogCaptureFixture
) -> None:
    def run(instance: btb.BackgroundTaskInstance) -> None:
        instance.progress = 7
        raise ValueError("boom")

    system.register_entry_point("app.Run", run)
    registration = register(system, btb.ApplicationTrigger())
    done = completions(registration)
    with caplog.at_level(logging.ERROR, logger="btb"):
        registration.request()
        idle(system)
    (args,) = done
    assert args.status is Outcome.FAILED
    assert args.message == "ValueError: boom"
    assert args.last_progress == 7
    with pytest.raises(btb.TaskFailedError, match="ValueError: boom") as raised:
        args.check_result()
    assert raised.value.instance_id == args.instance_id
    assert not isinstance(raised.value, btb.BtbError)
    (record,) = [r for r in caplog.records if r.name == "btb"]
    assert record.levelno == logging.ERROR
    assert record.getMessage().startswith('task "task" (instance ')
    assert record.getMessage().endswith("failed: ValueError: boom")
    assert record.exc_info is not None and record.exc_info[0] is ValueError
    assert 'raise ValueError("boom")' in caplog.text  # the traceback
    (run_record,) = registration.history
    assert (run_record.status, run_record.message) == (Outcome.FAILED, "ValueError: boom")


def test_report_failure(system: btb.System) -> None:
    system.register_entry_point("app.Run", lambda instance: instance.report_failure("disk full"))
    registration = register(system, btb.ApplicationTrigger())
    done = completions(registration)
    registration.request()
    idle(system)
    assert (done[0].status, done[0].message) == (Outcome.FAILED, "disk full")


def test_exception_in_a_handler_is_logged(system: btb.System, caplog: pytest.LogCaptureFixture) -> None:
    system.register_entry_point("app.Run", lambda instance: setattr(instance, "progress", 1))
    registration = register(system, btb.ApplicationTrigger())

    def bad(reg: object, args: object) -> None:
        raise KeyError("handler bug")

    registration.add_progress(bad)
    registration.add_completed(bad)
    done = completions(registration)  # later handlers still run
    with caplog.at_level(logging.ERROR, logger="btb"):
        registration.request()
        idle(system)
    assert done[0].status is Outcome.SUCCEEDED  # a handler's exception is not the task's
    messages = [r.getMessage() for r in caplog.records if r.name == "btb"]
    assert len(messages) == 2
    assert any("progress handler" in m and "KeyError: 'handler bug'" in m for m in messages)
    assert any("completed handler" in m for m in messages)


def test_async_run_function_is_run_to_completion(system: btb.System) -> None:
    steps: list[str] = []

    async def run(instance: btb.BackgroundTaskInstance) -> None:
        steps.append("start")
        await asyncio.sleep(0)
        instance.progress = 1
        steps.append("end")

    system.register_entry_point("app.Run", run)
    registration = register(system, btb.ApplicationTrigger())
    done = completions(registration)
    registration.request()
    idle(system)
    assert steps == ["start", "end"]
    assert done[0].status is Outcome.SUCCEEDED and done[0].last_progress == 1


def test_deferral_completed_from_another_python_thread(system: btb.System) -> None:
    go = threading.Event()
    threads: list[threading.Thread] = []

    def run(instance: btb.BackgroundTaskInstance) -> None:
        deferral = instance.get_deferral()
        assert deferral.instance is instance

        def finish() -> None:
            assert go.wait(WAIT)
            instance.progress = 42
            deferral.complete()

        thread = threading.Thread(target=finish)
        threads.append(thread)
        thread.start()

    system.register_entry_point("app.Run", run)
    registration = register(system, btb.ApplicationTrigger())
    done = completions(registration)
    registration.request()
    assert not system.wait_idle(0.05)  # the run function returned; the deferral holds the run
    assert done == []
    go.set()
    idle(system)
    threads[0].join(WAIT)
    assert (done[0].status, done[0].last_progress) == (Outcome.SUCCEEDED, 42)


def test_deferral_completed_twice_is_a_state_error(system: btb.System) -> None:
    errors: list[BaseException] = []

    def run(instance: btb.BackgroundTaskInstance) -> None:
        deferral = instance.get_deferral()
        deferral.complete()
        try:
            deferral.complete()
        except btb.StateError as error:
            errors.append(error)

    system.register_entry_point("app.Run", run)
    register(system, btb.ApplicationTrigger()).request()
    idle(system)
    assert len(errors) == 1


# --- entry points: handlers, classes, import paths ------------------------------------------------


class CountingTask:
    """A Windows-style task class: instantiated per run, ``run(self, instance)``."""

    created: list[CountingTask] = []

    def __init__(self) -> None:
        CountingTask.created.append(self)

    def run(self, instance: btb.BackgroundTaskInstance) -> None:
        instance.progress = len(CountingTask.created)


def test_class_entry_point_is_instantiated_per_run(system: btb.System) -> None:
    CountingTask.created = []
    system.register_entry_point("app.Run", CountingTask)
    registration = register(system, btb.ApplicationTrigger())
    done = completions(registration)
    for _ in range(2):
        registration.request()
        idle(system)
    assert len(CountingTask.created) == 2
    assert CountingTask.created[0] is not CountingTask.created[1]
    assert [d.last_progress for d in done] == [1, 2]


def test_entry_point_arguments_are_checked(system: btb.System) -> None:
    with pytest.raises(btb.NotDeclaredError):
        system.register_entry_point("app.Undeclared", print)
    with pytest.raises(btb.NotDeclaredError):
        system.entry_point("app.Undeclared")
    with pytest.raises(TypeError, match="callable"):
        system.register_entry_point("app.Run", 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="run"):
        system.register_entry_point("app.Run", int)
    with pytest.raises(TypeError, match="callable"):
        system.set_background_activated("no")  # type: ignore[arg-type]


def test_entry_point_decorator_returns_the_function_and_can_be_replaced(system: btb.System) -> None:
    calls: list[str] = []

    @system.entry_point("app.Run")
    def first(instance: btb.BackgroundTaskInstance) -> None:
        calls.append("first")

    assert callable(first) and first.__name__ == "first"
    registration = register(system, btb.ApplicationTrigger())
    registration.request()
    idle(system)
    system.register_entry_point("app.Run", lambda instance: calls.append("second"))
    registration.request()
    idle(system)
    system.register_entry_point("app.Run", None)  # removed: the import path is tried, and fails
    done = completions(registration)
    registration.request()
    idle(system)
    assert calls == ["first", "second"]
    assert done[0].status is Outcome.FAILED and "app.Run" in (done[0].message or "")


@pytest.fixture
def task_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An importable module of task code with a unique name."""
    name = f"btb_test_tasks_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import threading

            created = []
            runs = []

            class Sync:
                def __init__(self):
                    created.append(self)
                    self.thread = threading.current_thread().name

                def run(self, instance):
                    runs.append(("Sync", instance.trigger_details, self.thread))

            def run_function(instance):
                runs.append(("run_function", instance.trigger_details, threading.current_thread().name))

            class Nested:
                @staticmethod
                def go(instance):
                    runs.append(("Nested.go", instance.trigger_details, None))

            not_callable = 42
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_import_path_class_and_function(open_system: Callable[..., btb.System], task_module: str) -> None:
    declarations = [
        btb.TaskDeclaration(f"{task_module}.Sync", ["general"]),
        btb.TaskDeclaration(f"{task_module}:run_function", ["general"]),
        btb.TaskDeclaration(f"{task_module}:Nested.go", ["general"]),
    ]
    system = open_system(*declarations)
    registrations = [
        register(system, btb.ApplicationTrigger(), d.entry_point, name=d.entry_point) for d in declarations
    ]
    assert task_module not in sys.modules  # imported when a task needs it, not before
    for n, registration in enumerate(registrations):
        registration.request({"n": n})
        idle(system)
    registrations[0].request({"n": 3})
    idle(system)
    module = sys.modules[task_module]
    assert [(kind, details) for kind, details, _ in module.runs] == [
        ("Sync", {"n": 0}),
        ("run_function", {"n": 1}),
        ("Nested.go", {"n": 2}),
        ("Sync", {"n": 3}),
    ]
    assert len(module.created) == 2 and module.created[0] is not module.created[1]
    main = threading.main_thread().name
    assert all(thread != main for _, _, thread in module.runs if thread)  # run on btb's workers
    assert all(run.status is Outcome.SUCCEEDED for r in registrations for run in r.history)


def test_failed_import_fails_the_run_with_what_was_looked_for(
    open_system: Callable[..., btb.System], task_module: str, caplog: pytest.LogCaptureFixture
) -> None:
    cases = {
        "nowhere_at_all.Missing": ["nowhere_at_all", "No module named 'nowhere_at_all'"],
        f"{task_module}.Absent": [task_module, "'Absent'"],
        f"{task_module}:not_callable": ["not_callable", "TypeError"],
        "plainname": ["not a Python import path"],
    }
    system = open_system(*(btb.TaskDeclaration(ep, ["general"]) for ep in cases))
    registrations = {ep: register(system, btb.ApplicationTrigger(), ep, name=ep) for ep in cases}
    with caplog.at_level(logging.ERROR, logger="btb"):
        for registration in registrations.values():
            registration.request()
        idle(system)
    for entry_point, fragments in cases.items():
        (run,) = registrations[entry_point].history
        assert run.status is Outcome.FAILED
        message = run.message or ""
        assert f'no handler for entry point "{entry_point}"' in message
        assert "in-process handler registered under that name" in message
        for fragment in fragments:
            assert fragment in message, (fragment, message)
    assert len([r for r in caplog.records if r.name == "btb"]) == len(cases)
    assert all(registration.task_id in system.all_tasks for registration in registrations.values())


def test_activation_handlers_run_tasks_without_an_entry_point(system: btb.System) -> None:
    calls: list[tuple[str, str]] = []
    system.set_background_activated(lambda instance: calls.append(("system", instance.task.name)))
    grouped = register(
        system, btb.ApplicationTrigger(), None, name="grouped", group=btb.BackgroundTaskRegistrationGroup("lib")
    )
    plain = register(system, btb.ApplicationTrigger(), None, name="plain")
    group = system.all_task_groups["lib"]
    first = group.add_background_activated(lambda g, args: calls.append(("group 1", args.task_instance.task.name)))
    second = group.add_background_activated(lambda g, args: calls.append(("group 2", args.task_instance.task.name)))
    grouped.request()
    idle(system)
    plain.request()
    idle(system)
    assert calls == [("group 1", "grouped"), ("group 2", "grouped"), ("system", "plain")]
    calls.clear()
    group.remove_background_activated(first)
    grouped.request()
    idle(system)
    assert calls == [("group 2", "grouped")]
    group.remove_background_activated(second)


def test_a_class_as_activation_handler(system: btb.System) -> None:
    CountingTask.created = []
    system.set_background_activated(CountingTask)
    registration = register(system, btb.ApplicationTrigger(), None)
    registration.request()
    idle(system)
    registration.request()
    idle(system)
    assert len(CountingTask.created) == 2


# --- cancellation --------------------------------------------------------------------------------


def blocking_run(
    canceled: threading.Event, started: threading.Event, seen: list[Any]
) -> Callable[[btb.BackgroundTaskInstance], None]:
    """A run function that waits until its canceled handler is called."""

    def on_canceled(instance: btb.BackgroundTaskInstance, reason: btb.BackgroundTaskCancellationReason) -> None:
        seen.append(("handler", instance.instance_id, reason, instance.canceled))
        canceled.set()

    def run(instance: btb.BackgroundTaskInstance) -> None:
        instance.add_canceled(on_canceled)
        removed = instance.add_canceled(lambda i, r: seen.append("removed handler called"))
        instance.remove_canceled(removed)
        seen.append(("started", instance.instance_id))
        started.set()
        assert canceled.wait(WAIT)
        seen.append(("reason", instance.cancellation_reason))

    return run


def test_unregister_with_cancel_task_aborts_the_running_instance(system: btb.System) -> None:
    canceled, started = threading.Event(), threading.Event()
    seen: list[Any] = []
    system.register_entry_point("app.Run", blocking_run(canceled, started, seen))
    registration = register(system, btb.ApplicationTrigger())
    done = completions(registration)
    registration.request()
    assert started.wait(WAIT)
    registration.unregister(cancel_task=True)
    idle(system)
    instance_id = seen[0][1]
    assert seen == [
        ("started", instance_id),
        ("handler", instance_id, Reason.ABORT, True),
        ("reason", Reason.ABORT),
    ]
    assert system.all_tasks == {}
    # The canceled run still reports its end to the registration's completed handlers.
    assert [(d.instance_id, d.status, d.reason) for d in done] == [(instance_id, Outcome.CANCELED, Reason.ABORT)]


def test_time_limit_cancels_with_execution_time_exceeded(
    open_system: Callable[..., btb.System], clock: btb.ManualClock
) -> None:
    system = open_system(time_limits={"application": 2})
    canceled, started = threading.Event(), threading.Event()
    seen: list[Any] = []
    system.register_entry_point("app.Run", blocking_run(canceled, started, seen))
    registration = register(system, btb.ApplicationTrigger())
    done = completions(registration)
    registration.request()
    assert started.wait(WAIT)
    clock.advance(1)
    assert not canceled.wait(0.05)  # within the limit
    clock.advance(1)
    idle(system)
    assert done[0].status is Outcome.CANCELED
    assert done[0].reason is Reason.EXECUTION_TIME_EXCEEDED
    with pytest.raises(btb.TaskCanceledError) as raised:
        done[0].check_result()
    assert raised.value.reason is Reason.EXECUTION_TIME_EXCEEDED
    assert not isinstance(raised.value, btb.BtbError)
    (run,) = registration.history
    assert (run.status, run.reason) == (Outcome.CANCELED, Reason.EXECUTION_TIME_EXCEEDED)


def test_close_cancels_running_tasks_with_terminating(open_system: Callable[..., btb.System]) -> None:
    system = open_system()
    canceled, started = threading.Event(), threading.Event()
    seen: list[Any] = []
    system.register_entry_point("app.Run", blocking_run(canceled, started, seen))
    registration = register(system, btb.ApplicationTrigger())
    done = completions(registration)
    registration.request()
    assert started.wait(WAIT)
    system.close()
    assert system.closed
    assert seen[-1] == ("reason", Reason.TERMINATING)
    assert (done[0].status, done[0].reason) == (Outcome.CANCELED, Reason.TERMINATING)
    with pytest.raises(btb.StateError):
        registration.request()


def test_canceled_handler_added_after_cancellation_is_called_at_once(system: btb.System) -> None:
    started, release = threading.Event(), threading.Event()
    late: list[Any] = []

    def run(instance: btb.BackgroundTaskInstance) -> None:
        started.set()
        assert release.wait(WAIT)
        assert instance.canceled
        instance.add_canceled(lambda i, reason: late.append((i is instance, reason)))

    system.register_entry_point("app.Run", run)
    registration = register(system, btb.ApplicationTrigger())
    registration.request()
    assert started.wait(WAIT)
    registration.unregister(cancel_task=True)
    release.set()
    idle(system)
    assert late == [(True, Reason.ABORT)]


# --- history, re-entrancy, lifetime --------------------------------------------------------------


def test_history_contents(system: btb.System, clock: btb.ManualClock) -> None:
    def run(instance: btb.BackgroundTaskInstance) -> None:
        instance.progress = 3
        if instance.trigger_details and instance.trigger_details.get("fail"):
            raise RuntimeError("bad input")

    system.register_entry_point("app.Run", run)
    registration = register(system, btb.ApplicationTrigger())
    done = completions(registration)
    registration.request({"fail": False})
    idle(system)
    clock.advance(90)
    registration.request({"fail": True})
    idle(system)
    first, second = registration.history
    assert [first.instance_id, second.instance_id] == [d.instance_id for d in done]
    assert first.task_id == second.task_id == registration.task_id
    assert (first.trigger_kind, first.trigger_details) == ("application", {"fail": False})
    assert (first.status, first.reason, first.message, first.last_progress) == (Outcome.SUCCEEDED, None, None, 3)
    assert first.started == first.ended == START
    assert second.started == START + datetime.timedelta(seconds=90)
    assert second.started.tzinfo is not None
    assert (second.status, second.message) == (Outcome.FAILED, "RuntimeError: bad input")
    assert "FAILED" in repr(second)


def test_completed_handler_may_unregister_its_own_registration(system: btb.System) -> None:
    system.register_entry_point("app.Run", lambda instance: None)
    registration = register(system, btb.ApplicationTrigger())
    seen: list[Any] = []

    def completed(reg: btb.BackgroundTaskRegistration, args: btb.BackgroundTaskCompletedEventArgs) -> None:
        reg.unregister(cancel_task=False)
        seen.append(reg.task_id in reg.system.all_tasks)
        try:
            reg.system.wait_idle(1.0)  # would wait for itself
        except btb.StateError as error:
            seen.append(type(error).__name__)

    registration.add_completed(completed)
    registration.request()
    idle(system)
    assert seen == [False, "StateError"]
    assert system.all_tasks == {}
    assert registration.request() is btb.ApplicationTriggerResult.UNKNOWN_ERROR


def test_run_function_may_call_back_into_btb(system: btb.System) -> None:
    seen: list[Any] = []

    def run(instance: btb.BackgroundTaskInstance) -> None:
        if instance.task.name == "spawned":
            return
        other = register(instance.task.system, btb.ApplicationTrigger(), name="spawned")
        seen.append(other.request())  # runs after this one: one worker each
        seen.append(len(instance.task.history))

    system.register_entry_point("app.Run", run)
    registration = register(system, btb.ApplicationTrigger())
    registration.request()
    idle(system)
    assert seen[:2] == [btb.ApplicationTriggerResult.ALLOWED, 0]
    assert len(system.all_tasks) == 2


def test_wait_idle_times_out_and_checks_its_argument(system: btb.System) -> None:
    started, release = threading.Event(), threading.Event()
    def run(instance: btb.BackgroundTaskInstance) -> None:
        started.set()
        release.wait(WAIT)

    system.register_entry_point("app.Run", run)
    register(system, btb.ApplicationTrigger()).request()
    assert started.wait(WAIT)
    assert system.wait_idle(0) is False
    assert system.wait_idle(0.12) is False
    release.set()
    assert system.wait_idle(WAIT) is True
    with pytest.raises(btb.InvalidArgumentError):
        system.wait_idle(-1)
    with pytest.raises(btb.InvalidArgumentError):
        system.wait_idle(math.nan)


def test_handlers_referring_to_their_system_are_collected(tmp_path: Path) -> None:
    """Run functions, completed/progress handlers and canceled handlers that refer back to their
    system or instance form cycles through Rust; the garbage collector still frees them."""
    path = tmp_path / "gc.sqlite3"
    system = btb.System(manifest(), path, simulated=True)
    # Default arguments, not closures: `del` below must not break the cycles by emptying cells.
    system.register_entry_point(
        "app.Run", lambda instance, s=system: instance.add_canceled(lambda i, r, s=s: (i, s))  # type: ignore[misc]
    )
    registration = register(system, btb.ApplicationTrigger())
    registration.add_completed(lambda reg, args, s=system, r=registration: (s, r))  # type: ignore[misc]
    registration.add_progress(lambda reg, args, r=registration: r)  # type: ignore[misc]
    group = system.all_task_groups.get("none")
    assert group is None
    registration.request()
    assert system.wait_idle(WAIT)
    ref = weakref.ref(system)
    del system, registration
    gc.collect()
    assert ref() is None
    with btb.System(manifest(), path) as reopened:  # the store was released
        assert len(reopened.all_tasks) == 1


def test_instance_outlives_its_run(system: btb.System) -> None:
    kept: list[btb.BackgroundTaskInstance] = []
    system.register_entry_point("app.Run", kept.append)
    registration = register(system, btb.ApplicationTrigger())
    registration.request({"a": 1})
    idle(system)
    (instance,) = kept
    with pytest.raises(btb.StateError, match="already completed"):
        instance.get_deferral()
    assert instance.task == registration
    assert instance.trigger_details == {"a": 1}
    assert instance.trigger_details is not instance.trigger_details  # a fresh dict each time
    assert repr(instance).startswith("BackgroundTaskInstance(instance_id=UUID(")
    assert isinstance(instance.instance_id, uuid.UUID)



def _sigint_as_a_terminal_gives_it() -> None:
    """In the child, before exec: SIGINT's default action, even when these tests run with SIGINT
    ignored (started in the background by a shell without job control, which a child inherits
    and Python then keeps: Ctrl-C would never reach it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_script(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        preexec_fn=_sigint_as_a_terminal_gives_it,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_ctrl_c_interrupts_wait_idle(tmp_path: Path) -> None:
    result = run_script(
        """
        import os, signal, threading, time
        import btb
        manifest = btb.Manifest("org.example.sigint", "1", [btb.TaskDeclaration("e.Run", ["general"])])
        system = btb.System(manifest, ":memory:", simulated=True)
        release = threading.Event()

        def run(instance):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the main thread waits
            release.wait()

        system.register_entry_point("e.Run", run)
        builder = btb.BackgroundTaskBuilder()
        builder.name = "blocked"
        builder.task_entry_point = "e.Run"
        builder.set_trigger(btb.ApplicationTrigger())
        registration = builder.register(system)
        start = time.monotonic()
        try:
            registration.request()
            system.wait_idle(60)
            print("not interrupted")
        except KeyboardInterrupt:
            print("interrupted", time.monotonic() - start < 30)
        release.set()
        print(system.wait_idle(30))
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["interrupted", "True", "True"]


def test_exit_with_a_stuck_task_cancels_it_and_exits(tmp_path: Path) -> None:
    """The exit hook closes the system: a run function that never returns is canceled with
    TERMINATING, abandoned after the grace period, and the interpreter exits cleanly."""
    result = run_script(
        """
        import threading
        import btb
        manifest = btb.Manifest("org.example.stuck", "1", [btb.TaskDeclaration("e.Run", ["general"])])
        system = btb.System(manifest, ":memory:", simulated=True, policy=btb.Policy(grace_seconds=0.2))
        started = threading.Event()

        def run(instance):
            instance.add_canceled(lambda i, reason: print("canceled", reason.name, flush=True))
            started.set()
            threading.Event().wait()  # never returns

        system.register_entry_point("e.Run", run)
        builder = btb.BackgroundTaskBuilder()
        builder.name = "stuck"
        builder.task_entry_point = "e.Run"
        builder.set_trigger(btb.ApplicationTrigger())
        registration = builder.register(system)
        registration.add_completed(lambda reg, args: print("completed", args.status.name, args.reason.name, flush=True))
        registration.request()
        started.wait(30)
        print("exiting", flush=True)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["exiting", "canceled TERMINATING", "completed CANCELED TERMINATING"]


def test_concurrent_register_request_unregister(system: btb.System) -> None:
    """Threads registering, requesting and unregistering while tasks run, take deferrals completed
    by other threads, and completed handlers unregister: no deadlock, nothing raised, idle at the
    end. (A bounded number of operations, so the test takes the same work every time.)"""
    completed = threading.Semaphore(0)

    def run(instance: btb.BackgroundTaskInstance) -> None:
        instance.progress = 1
        if (instance.trigger_details or {}).get("defer"):
            threading.Thread(target=instance.get_deferral().complete).start()

    system.register_entry_point("app.Run", run)
    errors: list[BaseException] = []

    def on_completed(reg: btb.BackgroundTaskRegistration, args: btb.BackgroundTaskCompletedEventArgs) -> None:
        completed.release()
        if args.instance_id.int % 3 == 0:
            try:
                reg.unregister(cancel_task=True)
            except btb.NotFoundError:
                pass

    def worker(n: int) -> None:
        try:
            for i in range(40):
                registration = register(system, btb.ApplicationTrigger(), name=f"w{n}")
                registration.add_completed(on_completed)
                registration.add_progress(lambda reg, args: None)
                for j in range(2):
                    registration.request({"defer": (i + j) % 2 == 0})
                if i % 2:
                    try:
                        registration.unregister(cancel_task=i % 4 == 1)
                    except btb.NotFoundError:
                        pass
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)
    assert errors == []
    assert not any(thread.is_alive() for thread in threads)
    idle(system)
    assert completed.acquire(timeout=0)  # tasks did run and complete


def test_a_system_dropped_while_its_task_runs_lets_the_run_succeed(clock: btb.ManualClock) -> None:
    """Fire and forget: the app keeps no reference to its system, only the running instance does.
    The run completes as it would have (not canceled by the close that dropping the system
    causes), and its completed handler is called."""
    started, release, done = threading.Event(), threading.Event(), threading.Event()
    outcomes: list[Any] = []

    def run(instance: btb.BackgroundTaskInstance) -> None:
        started.set()
        assert release.wait(WAIT)

    def completed(reg: btb.BackgroundTaskRegistration, args: btb.BackgroundTaskCompletedEventArgs) -> None:
        outcomes.append((args.status, args.reason))
        done.set()

    def start() -> weakref.ref[btb.System]:
        system = btb.System(manifest(), ":memory:", clock=clock, simulated=True)
        system.register_entry_point("app.Run", run)
        registration = register(system, btb.ApplicationTrigger())
        registration.add_completed(completed)
        registration.request()
        assert started.wait(WAIT)
        return weakref.ref(system)

    ref = start()
    assert ref() is not None  # the running instance holds it
    release.set()
    assert done.wait(WAIT)
    assert outcomes == [(Outcome.SUCCEEDED, None)]


def test_python_activity_on_btb_threads_is_tracked_for_the_exit_hook(system: btb.System) -> None:
    started, release = threading.Event(), threading.Event()

    def run(instance: btb.BackgroundTaskInstance) -> None:
        started.set()
        release.wait(WAIT)

    system.register_entry_point("app.Run", run)
    register(system, btb.ApplicationTrigger()).request()
    assert started.wait(WAIT)
    assert btb._btb._wait_python_idle(0.05) is False  # a btb thread is in Python code
    release.set()
    idle(system)
    assert btb._btb._wait_python_idle(WAIT) is True


class Handler:
    """A handler that can be watched with a weak reference."""

    def __call__(self, *args: object) -> None:
        pass


def test_handlers_are_released_when_their_registration_goes(system: btb.System) -> None:
    registration = register(system, btb.ApplicationTrigger(), name="gone")
    completed, progress = Handler(), Handler()
    refs = [weakref.ref(completed), weakref.ref(progress)]
    registration.add_completed(completed)
    registration.add_progress(progress)
    del completed, progress
    assert all(ref() is not None for ref in refs)
    registration.unregister(cancel_task=False)
    assert all(ref() is None for ref in refs)

    # NamePolicy.REPLACE unregisters the old registration: its handlers go too.
    old = register(system, btb.ApplicationTrigger(), name="replaced")
    handler = Handler()
    ref = weakref.ref(handler)
    old.add_completed(handler)
    del handler
    builder = btb.BackgroundTaskBuilder()
    builder.name = "replaced"
    builder.task_entry_point = "app.Run"
    builder.set_trigger(btb.ApplicationTrigger())
    builder.name_policy = btb.NamePolicy.REPLACE
    new = builder.register(system)
    assert list(system.all_tasks) == [new.task_id]
    assert ref() is None


def test_start_false_lets_handlers_catch_the_runs_due_at_open(tmp_path: Path) -> None:
    """A periodic task that missed its time while nothing ran fires once at open; opened with
    start=False, the handler registered afterwards still gets that run."""
    manifest = btb.Manifest(
        app_id="org.example.startup", version="1", tasks=[btb.TaskDeclaration("t.Tick", ["timer"])]
    )
    clock = btb.ManualClock(datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc))
    policy = btb.Policy(min_freshness_minutes=1, timer_window_seconds=0)
    store = tmp_path / "btb.sqlite3"
    with btb.System(manifest, store, clock=clock, simulated=True, policy=policy) as system:
        builder = btb.BackgroundTaskBuilder()
        builder.name = "tick"
        builder.task_entry_point = "t.Tick"
        builder.set_trigger(btb.TimeTrigger(5, one_shot=False))
        builder.register(system)
    clock.advance(datetime.timedelta(hours=1))
    runs: list[object] = []
    with btb.System(manifest, store, clock=clock, simulated=True, policy=policy, start=False) as system:
        system.register_entry_point("t.Tick", runs.append)
        assert system.wait_idle(5.0)
        assert runs == [], "paused: nothing runs before start()"
        system.start()
        assert system.wait_idle(5.0)
        assert len(runs) == 1
        (registration,) = system.all_tasks.values()
        assert [r.status for r in registration.history] == [btb.TaskOutcome.SUCCEEDED]


def test_application_triggers_disabled_by_policy() -> None:
    manifest = btb.Manifest(
        app_id="org.example.policy", version="1", tasks=[btb.TaskDeclaration("t.App", ["general"])]
    )
    policy = btb.Policy(allow_application_triggers=False)
    assert not policy.allow_application_triggers
    with btb.System(manifest, ":memory:", policy=policy) as system:
        ran: list[object] = []
        system.register_entry_point("t.App", ran.append)
        trigger = btb.ApplicationTrigger()
        builder = btb.BackgroundTaskBuilder()
        builder.name = "blocked"
        builder.task_entry_point = "t.App"
        builder.set_trigger(trigger)
        registration = builder.register(system)
        assert trigger.request(system=system) == btb.ApplicationTriggerResult.DISABLED_BY_POLICY
        assert system.wait_idle(5.0)
        assert ran == [] and registration.history == []


# --- real processes: interpreter exit with a task that ignores cancellation, fork -------------


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


def test_a_forked_child_cannot_use_its_parents_system() -> None:
    """SPEC §8: a system is refused in a forked child (the parent's threads are not there), with
    a StateError naming both processes; the parent's system goes on."""
    manifest = btb.Manifest("org.example.forkuse", "1", [btb.TaskDeclaration("e.Run", ["general"])])
    with btb.System(manifest, ":memory:", simulated=True) as system:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: reports what using the system raised, then leaves at once
            os.close(read_end)
            try:
                system.all_tasks
                said = b"no error"
            except btb.StateError as e:
                said = str(e).encode()
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                said = repr(e).encode()
            os.write(write_end, said)
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as child:
            said = child.read().decode()
        os.waitpid(pid, 0)
        assert f"opened by process {os.getpid()}" in said, said
        assert f"forked child (pid {pid})" in said, said
        assert system.all_tasks == {}


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
