"""Run background tasks: an export task registered with a decorator runs on an application trigger
with arguments, reports progress from a worker thread it completes with a deferral; a sync task (a
Windows-style class with ``run``) runs on a time trigger, under a manual clock, once the simulated
internet connection comes up; a run that raises ends FAILED.

Needs nothing set up by hand (the manifest is declared in code, the store is in memory, time is
simulated), prints what happens, and exits 0.

    python examples/tasks.py
"""

from __future__ import annotations

import datetime
import sys
import threading

import btb

_print_lock = threading.Lock()


def say(text: str) -> None:
    """Prints one line: tasks and handlers print from btb's threads, so lines must not interleave."""
    with _print_lock:
        print(text, flush=True)


def main() -> int:
    manifest = btb.Manifest(
        app_id="org.example.notes",
        version="1.0",
        tasks=[
            btb.TaskDeclaration("notes.Export", ["general"]),
            btb.TaskDeclaration("notes.Sync", ["timer"]),
        ],
    )
    clock = btb.ManualClock(datetime.datetime(2030, 1, 1, 9, 0, tzinfo=datetime.timezone.utc))
    policy = btb.Policy(timer_window_seconds=0)  # run timers exactly when due
    with btb.System(manifest, ":memory:", clock=clock, simulated=True, policy=policy) as system:

        @system.entry_point("notes.Export")
        def export(instance: btb.BackgroundTaskInstance) -> None:
            arguments = instance.trigger_details or {}
            notes = arguments.get("notes") or []
            if not notes:
                raise ValueError("nothing to export")
            say(f"export: run {instance.instance_id} got {arguments}")
            deferral = instance.get_deferral()  # the run goes on after this function returns

            def work() -> None:
                for done, note in enumerate(notes, 1):
                    say(f"export: wrote {note}.{arguments.get('format', 'txt')}")
                    instance.progress = done * 100 // len(notes)
                deferral.complete()

            threading.Thread(target=work, name="exporter").start()

        @system.entry_point("notes.Sync")
        class Sync:
            """Instantiated for each run, as Windows instantiates an IBackgroundTask class."""

            def run(self, instance: btb.BackgroundTaskInstance) -> None:
                say(f"sync: running at {clock.now:%H:%M} (instance {instance.instance_id})")

        # 1. An application trigger with arguments; progress and completion reach the app.
        trigger = btb.ApplicationTrigger()
        builder = btb.BackgroundTaskBuilder()
        builder.name = "export"
        builder.task_entry_point = "notes.Export"
        builder.set_trigger(trigger)
        export_task = builder.register(system)

        def on_progress(registration: btb.BackgroundTaskRegistration, args: btb.BackgroundTaskProgressEventArgs) -> None:
            say(f"progress: {registration.name} at {args.progress}%")

        def on_completed(registration: btb.BackgroundTaskRegistration, args: btb.BackgroundTaskCompletedEventArgs) -> None:
            try:
                args.check_result()
                say(f"completed: {registration.name} {args.status.name}")
            except btb.TaskFailedError as error:
                say(f"completed: {registration.name} FAILED: {error}")

        export_task.add_progress(on_progress)
        export_task.add_completed(on_completed)

        result = trigger.request({"format": "md", "notes": ["groceries", "ideas", "todo"]})
        say(f"request: {result.name}")
        system.wait_idle(10)

        # A run that raises ends FAILED with the exception as its message (and the traceback is
        # logged on the "btb" logger).
        say(f"request with no notes: {export_task.request({'notes': []}).name}")
        system.wait_idle(10)

        # 2. A time trigger every 15 minutes, gated by a condition, under the manual clock.
        builder = btb.BackgroundTaskBuilder()
        builder.name = "sync"
        builder.task_entry_point = "notes.Sync"
        builder.set_trigger(btb.TimeTrigger(15, one_shot=False))
        builder.add_condition(btb.SystemCondition(btb.SystemConditionType.INTERNET_AVAILABLE))
        sync = builder.register(system)
        sync.add_completed(on_completed)
        say(f"sync: next due at {sync.next_due:%H:%M}")

        clock.advance(datetime.timedelta(minutes=15))
        system.wait_idle(10)
        say("sync: due, but offline: the fire is latched")
        system.set_state(btb.SystemConditionType.INTERNET_AVAILABLE, True)
        system.wait_idle(10)
        clock.advance(datetime.timedelta(minutes=15))
        system.wait_idle(10)
        say(f"sync: next due at {sync.next_due:%H:%M}")

        for registration in (export_task, sync):
            say(f"history of {registration.name}:")
            for run in registration.history:
                say(
                    f"  {run.started:%H:%M} {run.trigger_kind} {run.status.name}"
                    f" progress={run.last_progress} message={run.message}"
                )
    say("closed the system")
    return 0


if __name__ == "__main__":
    sys.exit(main())
