"""One broker, several processes (SPEC §10): the first process to open a store is its broker;
this script then starts itself again as a second process, which opens the same store and is a
*client*. The client registers a task whose run function it defines itself, requests it, and the
broker hands the run back to the client (progress and completion come back too). Then the broker
closes, and the client — still open — takes the store over and becomes the broker.

    python examples/clients.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading

import btb

MANIFEST = btb.Manifest(
    app_id="org.example.notes.clients",
    version="1.0",
    tasks=[btb.TaskDeclaration("notes.Work", ["general"])],
)


def say(line: str) -> None:
    """Prints a line in one write: lines printed on btb's threads and this one do not mix."""
    sys.stdout.write(line + "\n")


def client(store: str) -> int:
    with btb.System(MANIFEST, store) as system:
        print(f"client pid {os.getpid()}: is_broker={system.is_broker}, broker pid {system.broker_pid}")

        def work(instance: btb.BackgroundTaskInstance) -> None:
            say(f"client pid {os.getpid()}: running {instance.task.name!r}")
            instance.progress = 100

        system.register_entry_point("notes.Work", work)
        trigger = btb.ApplicationTrigger()
        builder = btb.BackgroundTaskBuilder()
        builder.name = "work"
        builder.task_entry_point = "notes.Work"
        builder.set_trigger(trigger)
        registration = builder.register(system)
        done = threading.Event()

        def completed(reg: btb.BackgroundTaskRegistration, args: btb.BackgroundTaskCompletedEventArgs) -> None:
            say(f"client pid {os.getpid()}: {reg.name!r} completed {args.status.name}")
            done.set()

        registration.add_completed(completed)
        # The run and its completion may be printed before the answer to the request: they come
        # on other connections, to other threads (SPEC §10 promises no order between them).
        say(f"client pid {os.getpid()}: request -> {trigger.request().name}")
        if not done.wait(10):
            return 1
        print("client: ready for the broker to close", flush=True)
        sys.stdin.readline()  # the broker closes now
        tasks = [r.name for r in system.all_tasks.values()]  # the next call finds it gone
        print(f"client pid {os.getpid()}: is_broker={system.is_broker}, tasks {tasks}")
    return 0


def main() -> int:
    with tempfile.TemporaryDirectory() as directory:
        store = os.path.join(directory, "btb.sqlite3")
        broker = btb.System(MANIFEST, store)
        print(f"broker pid {os.getpid()}: is_broker={broker.is_broker}")
        child = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--client", store],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdin is not None and child.stdout is not None
        for line in child.stdout:
            print(line, end="", flush=True)
            if line.startswith("client: ready"):
                break
        (task,) = broker.all_tasks.values()
        run = task.history[-1]
        print(f"broker pid {os.getpid()}: history of {task.name!r}: {run.status.name}, progress {run.last_progress}")
        broker.close()
        print(f"broker pid {os.getpid()}: closed")
        child.stdin.write("\n")
        child.stdin.flush()
        for line in child.stdout:
            print(line, end="", flush=True)
        return child.wait(timeout=30)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--client":
        sys.exit(client(sys.argv[2]))
    sys.exit(main())
