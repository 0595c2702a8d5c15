"""An out-of-process background task (SPEC §5): the manifest declares that entry point
"notes.Index" runs this same script with ``--background-task``. The app registers the task, fires
it, and prints what the child reported; the child connects with ``btb.host.connect()`` and uses
the same surface as an in-process run (``progress``, ``trigger_details``, ``add_canceled``). A
child that crashes ends the run FAILED with the end of its stderr; it cannot take the app down.

    python examples/out_of_process.py
"""

from __future__ import annotations

import os
import sys
import threading

import btb


def background_task() -> int:
    import btb.host

    instance = btb.host.connect()
    print(f"child pid {os.getpid()}: indexing {instance.trigger_details}")
    for progress in (25, 50, 75, 100):
        instance.progress = progress
    return 0  # exit status 0: SUCCEEDED


def main() -> int:
    manifest = btb.Manifest(
        app_id="org.example.notes.host",
        version="1.0",
        tasks=[
            btb.TaskDeclaration(
                "notes.Index", ["general"], exec=[sys.executable, os.path.abspath(__file__), "--background-task"]
            )
        ],
    )
    done = threading.Event()
    with btb.System(manifest, ":memory:") as system:
        builder = btb.BackgroundTaskBuilder()
        builder.name = "index"
        builder.task_entry_point = "notes.Index"
        trigger = btb.ApplicationTrigger()
        builder.set_trigger(trigger)
        registration = builder.register(system)
        registration.add_progress(lambda r, args: print(f"app: progress {args.progress}%"))

        def completed(r: btb.BackgroundTaskRegistration, args: btb.BackgroundTaskCompletedEventArgs) -> None:
            print(f"app: completed {args.status.name}")
            done.set()

        registration.add_completed(completed)
        print(f"app pid {os.getpid()}: request -> {trigger.request({'folder': 'notes'}).name}")
        if not done.wait(30):
            print("app: the task did not complete within 30 s")
            return 1
        (run,) = registration.history
        print(f"app: the child's stdout, kept with the run: {run.stdout}", end="")
    return 0


if __name__ == "__main__":
    sys.exit(background_task() if "--background-task" in sys.argv else main())
