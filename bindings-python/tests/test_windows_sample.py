"""Microsoft's BackgroundTask sample (Windows-universal-samples, Samples/BackgroundTask), its C#
transliterated line by line: SampleBackgroundTask (Canceled handler, deferral, a periodic timer
that reports progress), registered with a system trigger, with a condition, with a time trigger and
with an application trigger; progress and completion handlers that call CheckResult; cancellation
by Unregister(true); and the grouped task run through its group's BackgroundActivated. The only
additions are what Windows has and a test lacks: a system for Register() to use (the default, as
the OS broker is for an app), and simulated state and a manual clock to drive it."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterator

import pytest

import btb

WAIT = 10.0
ENTRY_POINT = "Tasks.SampleBackgroundTask"


class SampleBackgroundTask:
    """SampleBackgroundTask.cs: runs ten 10% steps on a periodic timer, stops when canceled."""

    def run(self, task_instance: btb.BackgroundTaskInstance) -> None:
        self._cancel_reason = btb.BackgroundTaskCancellationReason.ABORT
        self._cancel_requested = False
        self._progress = 0
        task_instance.add_canceled(self.on_canceled)            # taskInstance.Canceled += OnCanceled
        self._deferral = task_instance.get_deferral()            # taskInstance.GetDeferral()
        self._task_instance = task_instance
        self._periodic_timer = threading.Thread(target=self.periodic_timer)  # ThreadPoolTimer
        self._periodic_timer.start()

    def on_canceled(self, sender: btb.BackgroundTaskInstance, reason: btb.BackgroundTaskCancellationReason) -> None:
        self._cancel_requested = True
        self._cancel_reason = reason

    def periodic_timer(self) -> None:
        tick = threading.Event()
        while True:
            tick.wait(0.005)
            if not self._cancel_requested and self._progress < 100:
                self._progress += 10
                self._task_instance.progress = self._progress
            else:
                SampleBackgroundTask.finished.append(
                    (self._task_instance.task.name, self._cancel_requested, self._cancel_reason)
                )
                self._deferral.complete()
                return

    finished: list[tuple[str, bool, btb.BackgroundTaskCancellationReason]] = []


def register_background_task(
    task_entry_point: str | None,
    name: str,
    trigger: btb.IBackgroundTrigger,
    condition: btb.SystemCondition | None,
    group: btb.BackgroundTaskRegistrationGroup | None = None,
) -> btb.BackgroundTaskRegistration:
    """BackgroundTaskSample.RegisterBackgroundTask."""
    builder = btb.BackgroundTaskBuilder()
    builder.name = name
    if task_entry_point is not None:
        builder.task_entry_point = task_entry_point
    builder.set_trigger(trigger)
    if condition is not None:
        builder.add_condition(condition)
        # If the condition changes while the background task is executing then it will be canceled.
        builder.cancel_on_condition_loss = True
    if group is not None:
        builder.task_group = group
    task = builder.register()
    attach_progress_and_completed_handlers(task)
    return task


progress_seen: dict[str, list[int]] = {}
completed_seen: dict[str, list[str]] = {}
done = threading.Semaphore(0)


def attach_progress_and_completed_handlers(task: btb.BackgroundTaskRegistration) -> None:
    task.add_progress(on_progress)       # task.Progress += new BackgroundTaskProgressEventHandler(OnProgress)
    task.add_completed(on_completed)     # task.Completed += new BackgroundTaskCompletedEventHandler(OnCompleted)


def on_progress(task: btb.BackgroundTaskRegistration, args: btb.BackgroundTaskProgressEventArgs) -> None:
    progress_seen.setdefault(task.name, []).append(args.progress)


def on_completed(task: btb.BackgroundTaskRegistration, args: btb.BackgroundTaskCompletedEventArgs) -> None:
    try:
        args.check_result()  # throws if the task failed
        completed_seen.setdefault(task.name, []).append("Completed")
    except btb.TaskCanceledError as e:
        assert e.reason is not None
        reason = btb.BackgroundTaskCancellationReason(e.reason)
        completed_seen.setdefault(task.name, []).append(f"Canceled {reason.name}")
    done.release()


@pytest.fixture(autouse=True)
def app_system() -> Iterator[tuple[btb.System, btb.ManualClock]]:
    manifest = btb.Manifest(
        "org.example.backgroundtask", "1",
        [btb.TaskDeclaration(ENTRY_POINT, ["systemEvent", "timer", "general"])],
    )
    clock = btb.ManualClock(datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc))
    system = btb.System(manifest, ":memory:", clock=clock, simulated=True)
    system.register_entry_point(ENTRY_POINT, SampleBackgroundTask)
    btb.set_default_system(system)  # the app's broker: Register() with no argument uses it
    SampleBackgroundTask.finished.clear()
    progress_seen.clear()
    completed_seen.clear()
    yield system, clock
    btb.set_default_system(None)
    system.close()


def wait_completed(count: int = 1) -> None:
    for _ in range(count):
        assert done.acquire(timeout=WAIT), "a task did not complete"


def unregister_background_tasks(name: str) -> None:
    """BackgroundTaskSample.UnregisterBackgroundTasks."""
    for cur in btb.BackgroundTaskRegistration.all_tasks.values():
        if cur.name == name:
            cur.unregister(True)


def test_sample_background_task_with_a_system_trigger(app_system: tuple[btb.System, btb.ManualClock]) -> None:
    system, _ = app_system
    register_background_task(ENTRY_POINT, "SampleBackgroundTask",
                             btb.SystemTrigger(btb.SystemTriggerType.TIME_ZONE_CHANGE, False), None)
    system.raise_event(btb.SystemTriggerType.TIME_ZONE_CHANGE)  # what the OS does when the zone changes
    wait_completed()
    assert progress_seen["SampleBackgroundTask"] == list(range(10, 101, 10))
    assert completed_seen["SampleBackgroundTask"] == ["Completed"]
    unregister_background_tasks("SampleBackgroundTask")
    assert btb.BackgroundTaskRegistration.all_tasks == {}


def test_sample_background_task_with_a_condition(app_system: tuple[btb.System, btb.ManualClock]) -> None:
    system, _ = app_system
    system.set_state(btb.SystemConditionType.INTERNET_AVAILABLE, False)
    register_background_task(ENTRY_POINT, "SampleBackgroundTaskWithCondition",
                             btb.SystemTrigger(btb.SystemTriggerType.TIME_ZONE_CHANGE, False),
                             btb.SystemCondition(btb.SystemConditionType.INTERNET_AVAILABLE))
    system.raise_event(btb.SystemTriggerType.TIME_ZONE_CHANGE)
    assert system.wait_idle(WAIT)
    assert "SampleBackgroundTaskWithCondition" not in completed_seen  # latched: offline
    system.set_state(btb.SystemConditionType.INTERNET_AVAILABLE, True)
    wait_completed()
    assert completed_seen["SampleBackgroundTaskWithCondition"] == ["Completed"]


def test_time_triggered_task(app_system: tuple[btb.System, btb.ManualClock]) -> None:
    _, clock = app_system
    register_background_task(ENTRY_POINT, "TimeTriggeredTask", btb.TimeTrigger(15, False), None)
    # Windows runs a 15-minute time trigger within the 15 minutes after it is due (the timer
    # window): by the end of its window at the latest, then every 15 minutes.
    clock.advance(datetime.timedelta(minutes=30))
    wait_completed()
    clock.advance(datetime.timedelta(minutes=15))
    wait_completed()
    assert completed_seen["TimeTriggeredTask"] == ["Completed", "Completed"]


def test_application_trigger_task(app_system: tuple[btb.System, btb.ManualClock]) -> None:
    trigger = btb.ApplicationTrigger()
    register_background_task(ENTRY_POINT, "ApplicationTriggerTask", trigger, None)
    # var result = await trigger.RequestAsync();
    assert trigger.request() is btb.ApplicationTriggerResult.ALLOWED
    wait_completed()
    assert completed_seen["ApplicationTriggerTask"] == ["Completed"]


def test_cancellation_by_unregister(app_system: tuple[btb.System, btb.ManualClock]) -> None:
    class Slow(SampleBackgroundTask):
        started = threading.Event()

        def run(self, task_instance: btb.BackgroundTaskInstance) -> None:
            super().run(task_instance)
            Slow.started.set()

        def periodic_timer(self) -> None:
            while not self._cancel_requested:  # a long task: works until it is canceled
                threading.Event().wait(0.005)
            super().periodic_timer()

    system, _ = app_system
    system.register_entry_point(ENTRY_POINT, Slow)
    trigger = btb.ApplicationTrigger()
    register_background_task(ENTRY_POINT, "ApplicationTriggerTask", trigger, None)
    assert trigger.request() is btb.ApplicationTriggerResult.ALLOWED
    assert Slow.started.wait(WAIT)
    unregister_background_tasks("ApplicationTriggerTask")  # Unregister(true) cancels the instance
    wait_completed()
    assert completed_seen["ApplicationTriggerTask"] == ["Canceled ABORT"]
    assert SampleBackgroundTask.finished == [
        ("ApplicationTriggerTask", True, btb.BackgroundTaskCancellationReason.ABORT)
    ]


def test_grouped_background_task(app_system: tuple[btb.System, btb.ManualClock]) -> None:
    group = btb.BackgroundTaskRegistrationGroup("3F2504E0-4F89-11D3-9A0C-0305E82C3301", "Example Group")
    activated: list[str] = []

    def on_background_activated(
        sender: btb.BackgroundTaskRegistrationGroup, args: btb.BackgroundActivatedEventArgs
    ) -> None:
        # group.BackgroundActivated += ...: an in-process task without an entry point
        assert sender == group
        activated.append(args.task_instance.task.name)

    token = group.add_background_activated(on_background_activated)
    try:
        trigger = btb.ApplicationTrigger()
        register_background_task(None, "GroupedBackgroundTask", trigger, None, group)
        assert trigger.request() is btb.ApplicationTriggerResult.ALLOWED
        wait_completed()
        assert activated == ["GroupedBackgroundTask"]
        assert btb.BackgroundTaskRegistration.all_tasks == {}  # grouped tasks are listed by their group
        groups = btb.BackgroundTaskRegistration.all_task_groups
        assert [t.name for t in groups[group.id].all_tasks.values()] == ["GroupedBackgroundTask"]
    finally:
        group.remove_background_activated(token)
