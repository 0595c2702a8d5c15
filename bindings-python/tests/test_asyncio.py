"""asyncio (SPEC §9): `async def` run functions and handlers run on the app's loop when the system
was opened with `async with`, else on the one loop btb owns; cancellation reaches a coroutine as
`CancelledError` after the canceled handlers; Ctrl-C ends an app whose task ignores its
cancellation after one grace period, and a second Ctrl-C at once (real processes, real SIGINT).
Threads meet on events with deadlines, never on sleeps."""

from __future__ import annotations

import asyncio
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import btb

WAIT = 10.0  # a bound for events crossing threads; tests never wait for it to pass
Outcome = btb.TaskOutcome
Reason = btb.BackgroundTaskCancellationReason


def manifest() -> btb.Manifest:
    return btb.Manifest(
        app_id="org.example.aio", version="1", tasks=[btb.TaskDeclaration("app.Run", ["general"])]
    )


def register(
    system: btb.System, group: btb.BackgroundTaskRegistrationGroup | None = None
) -> btb.BackgroundTaskRegistration:
    builder = btb.BackgroundTaskBuilder()
    builder.name = "task"
    builder.task_entry_point = None if group else "app.Run"
    builder.task_group = group
    builder.set_trigger(btb.ApplicationTrigger())
    return builder.register(system)


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "btb-asyncio"]


def test_coroutines_of_a_system_opened_without_a_loop_share_one_loop_btb_owns() -> None:
    assert loop_threads() == []
    seen: list[tuple[asyncio.AbstractEventLoop, str]] = []

    async def run(instance: btb.BackgroundTaskInstance) -> dict[str, int]:
        await asyncio.sleep(0)
        with pytest.raises(btb.StateError, match="wait_idle_async"):
            instance.task.system.wait_idle(0)  # it would wait for this very coroutine
        seen.append((asyncio.get_running_loop(), threading.current_thread().name))
        instance.progress = 5
        return {"n": len(seen)}

    progress: list[tuple[str, int]] = []

    async def on_progress(_: btb.BackgroundTaskRegistration, args: btb.BackgroundTaskProgressEventArgs) -> None:
        await asyncio.sleep(0)
        progress.append((threading.current_thread().name, args.progress))

    with btb.System(manifest(), ":memory:", simulated=True) as system:
        system.register_entry_point("app.Run", run)
        registration = register(system)
        registration.add_progress(on_progress)
        for _ in range(2):
            assert registration.request() is btb.ApplicationTriggerResult.ALLOWED
            assert system.wait_idle(WAIT)
        assert [r.output for r in registration.history] == [{"n": 1}, {"n": 2}]
        assert [r.status for r in registration.history] == [Outcome.SUCCEEDED] * 2
        assert len(loop_threads()) == 1
    (first_loop, first_thread), (second_loop, second_thread) = seen
    assert first_loop is second_loop, "one loop for every run, not asyncio.run per run"
    assert first_thread == second_thread == "btb-asyncio"
    assert progress == [("btb-asyncio", 5)] * 2
    assert loop_threads() == [], "the loop's thread is joined at close"
    assert first_loop.is_closed()


def test_async_with_runs_coroutines_and_handlers_on_the_apps_loop() -> None:
    async def main() -> None:
        app_loop = asyncio.get_running_loop()
        where: list[tuple[str, bool]] = []

        def here(what: str) -> None:
            where.append((what, asyncio.get_running_loop() is app_loop))

        async def run(instance: btb.BackgroundTaskInstance) -> dict[str, str]:
            here("run")
            await asyncio.sleep(0)
            return {"ran": "here"}

        async def on_completed(_: btb.BackgroundTaskRegistration, args: btb.BackgroundTaskCompletedEventArgs) -> None:
            here("completed")
            assert args.output == {"ran": "here"}

        async def on_group(group: btb.BackgroundTaskRegistrationGroup, args: btb.BackgroundActivatedEventArgs) -> None:
            here(f"group {group.id} {args.task_instance.task.name}")

        group = btb.BackgroundTaskRegistrationGroup("aio.lib")
        token = group.add_background_activated(on_group)
        try:
            async with btb.System(manifest(), ":memory:", simulated=True) as system:
                system.register_entry_point("app.Run", run)
                registration = register(system)
                registration.add_completed(on_completed)
                grouped = register(system, group)
                with pytest.raises(btb.StateError, match="wait_idle_async"):
                    system.wait_idle(0)  # it would block the loop that its coroutines need
                assert await registration.request_async() is btb.ApplicationTriggerResult.ALLOWED
                assert await system.wait_idle_async(WAIT)
                grouped.request()
                assert await system.wait_idle_async(WAIT)
                assert [r.status for r in grouped.history] == [Outcome.SUCCEEDED]
                assert loop_threads() == [], "btb started no loop of its own"
            assert system.closed
        finally:
            group.remove_background_activated(token)
        assert where == [("run", True), ("completed", True), ("group aio.lib task", True)]

    asyncio.run(main())


def test_cancellation_reaches_the_coroutine_after_the_canceled_handlers() -> None:
    events: list[str] = []
    started = threading.Event()

    async def run(instance: btb.BackgroundTaskInstance) -> None:
        async def async_handler(_: btb.BackgroundTaskInstance, reason: Reason) -> None:
            await asyncio.sleep(0)
            events.append(f"async handler {reason.name}")

        instance.add_canceled(lambda _, reason: events.append(f"handler {reason.name}"))
        instance.add_canceled(async_handler)
        started.set()
        try:
            await asyncio.Event().wait()  # forever, until cancelled
        except asyncio.CancelledError:
            events.append("CancelledError")
            raise
        finally:
            events.append("finally")

    with btb.System(manifest(), ":memory:", simulated=True) as system:
        system.register_entry_point("app.Run", run)
        registration = register(system)
        completed: list[btb.BackgroundTaskCompletedEventArgs] = []
        registration.add_completed(lambda _, args: completed.append(args))
        registration.request()
        assert started.wait(WAIT)
        registration.unregister(cancel_task=True)
        assert system.wait_idle(WAIT)
    assert events == ["handler ABORT", "async handler ABORT", "CancelledError", "finally"]
    (record,) = completed
    assert (record.status, record.reason) == (Outcome.CANCELED, Reason.ABORT)


def test_a_closing_system_cancels_its_coroutines_and_records_them_canceled() -> None:
    started = threading.Event()
    finished: list[str] = []

    async def run(instance: btb.BackgroundTaskInstance) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            finished.append(str(instance.cancellation_reason))

    async def main() -> btb.BackgroundTaskRegistration:
        async with btb.System(manifest(), ":memory:", simulated=True) as system:
            system.register_entry_point("app.Run", run)
            registration = register(system)
            registration.request()
            assert await asyncio.get_running_loop().run_in_executor(None, started.wait, WAIT)
        return registration

    registration = asyncio.run(main())
    assert finished == [str(Reason.TERMINATING)]
    assert registration.system.closed


def test_a_coroutine_that_ignores_its_cancellation_is_closed_once_the_system_closed_without_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On the app's loop, which would wait for it for ever at its end (asyncio.run cancels and
    awaits every task): after the grace, it gets GeneratorExit, so its finally runs."""
    started = threading.Event()
    events: list[str] = []

    async def stubborn(instance: btb.BackgroundTaskInstance) -> None:
        started.set()
        try:
            while True:
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    events.append("CancelledError ignored")
        except GeneratorExit:
            events.append("GeneratorExit")
            raise
        finally:
            events.append("finally")

    async def main() -> None:
        system = btb.System(manifest(), ":memory:", simulated=True, policy=btb.Policy(grace_seconds=0.2))
        async with system:
            system.register_entry_point("app.Run", stubborn)
            register(system).request()
            assert await asyncio.get_running_loop().run_in_executor(None, started.wait, WAIT)
        left = asyncio.all_tasks() - {asyncio.current_task()}
        if left:  # ended already, as a rule: the close gave it up before `aclose` returned
            await asyncio.wait_for(asyncio.wait(left), WAIT)

    # Not asyncio.run, which would hang at its end should the coroutine still run.
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level("WARNING", logger="btb"):
            loop.run_until_complete(main())
    finally:
        loop.close()
    assert events == ["CancelledError ignored", "GeneratorExit", "finally"]
    assert 'closed without task "task"' in caplog.text, caplog.text
    assert "closing it (GeneratorExit)" in caplog.text


def test_async_run_failures_and_what_it_returns() -> None:
    async def raises(instance: btb.BackgroundTaskInstance) -> None:
        await asyncio.sleep(0)
        raise ValueError("async boom")

    async def wrong(instance: btb.BackgroundTaskInstance) -> int:
        return 7

    with btb.System(manifest(), ":memory:", simulated=True) as system:
        registration = register(system)
        for function, message in ((raises, "ValueError: async boom"), (wrong, "returned a int")):
            system.register_entry_point("app.Run", function)
            registration.request()
            assert system.wait_idle(WAIT)
            record = registration.history[-1]
            assert record.status is Outcome.FAILED and message in (record.message or ""), record


def test_async_waits_check_their_timeout() -> None:
    async def main(system: btb.System) -> None:
        with pytest.raises(btb.InvalidArgumentError, match="timeout -1"):
            await system.wait_idle_async(-1)
        with pytest.raises(TypeError, match="number of seconds"):
            await system.wait_idle_async("1")  # type: ignore[arg-type]
        assert await system.wait_idle_async(0)

    with btb.System(manifest(), ":memory:", simulated=True) as system:
        asyncio.run(main(system))


# --- Ctrl-C, with a real process and real SIGINTs ---------------------------------------------------

APP = """
import asyncio, sys, threading, time, btb

STUBBORN = sys.argv[1]
manifest = btb.Manifest(app_id="org.example.ctrlc", version="1",
                        tasks=[btb.TaskDeclaration("app.Run", ["general"])])

def sync_run(instance):
    print("started", flush=True)
    while True:  # ignores its cancellation
        time.sleep(0.05)

running = None  # an asyncio.Event of the app's loop, once main runs

async def async_run(instance):
    print("started", flush=True)
    if running is not None:
        running.set()
    try:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                print("ignoring its cancellation", flush=True)
    finally:
        print("async_run: finally", file=sys.stderr, flush=True)

def start(system):
    system.register_entry_point("app.Run", sync_run if STUBBORN == "sync" else async_run)
    builder = btb.BackgroundTaskBuilder()
    builder.name, builder.task_entry_point = "stubborn", "app.Run"
    builder.set_trigger(btb.ApplicationTrigger())
    builder.register(system).request()

system = btb.System(manifest, ":memory:", simulated=True,
                    policy=btb.Policy(grace_seconds=float(sys.argv[2])))
if sys.argv[3] in ("asyncio.run", "leaving async with"):
    # asyncio's own SIGINT handler cancels `main`; the system is the app loop's.
    async def main():
        global running
        running = asyncio.Event()
        async with system:
            start(system)
            if sys.argv[3] == "asyncio.run":
                await system.wait_idle_async(3600)
            else:
                await running.wait()  # then leaves: aclose cancels the run and waits
    asyncio.run(main())
    sys.exit("asyncio.run returned")
start(system)
if sys.argv[3] == "with":
    with system:
        system.wait_idle(3600)
else:
    # Ctrl-C lands in the app's own code; btb's exit hook closes the system.
    threading.Event().wait()
"""



def _sigint_as_a_terminal_gives_it() -> None:
    """In the child, before exec: SIGINT's default action, even when these tests run with SIGINT
    ignored (started in the background by a shell without job control, which a child inherits
    and Python then keeps: Ctrl-C would never reach it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class App:
    """The app above in a child process; its stdout and stderr lines are read as they come."""

    def __init__(self, tmp_path: Path, kind: str, grace: float, closed_by: str = "with") -> None:
        script = tmp_path / "app.py"
        script.write_text(textwrap.dedent(APP))
        self.process = subprocess.Popen(
            [sys.executable, str(script), kind, str(grace), closed_by],
            preexec_fn=_sigint_as_a_terminal_gives_it,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self.stderr: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(name, getattr(self.process, name)), daemon=True)
            for name in ("stdout", "stderr")
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, name: str, stream: Any) -> None:
        with stream:
            for line in stream:
                self.lines.put((name, line))

    def expect(self, stream: str, fragment: str) -> None:
        deadline = time.monotonic() + WAIT
        while True:
            name, line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if name == "stderr":
                self.stderr.append(line)
            if name == stream and fragment in line:
                return

    def wait(self) -> tuple[int, float, str]:
        """The exit status, the seconds from now until the exit, and the whole stderr."""
        begun = time.monotonic()
        status = self.process.wait(timeout=60)
        took = time.monotonic() - begun
        for reader in self.readers:
            reader.join(WAIT)  # at the end of the pipes, which the exit closed
        while not self.lines.empty():
            name, line = self.lines.get()
            if name == "stderr":
                self.stderr.append(line)
        return status, took, "".join(self.stderr)

    def interrupt(self) -> None:
        self.process.send_signal(signal.SIGINT)


@pytest.mark.parametrize(
    ("kind", "closed_by"),
    [("sync", "with"), ("async", "with"), ("sync", "exit hook"), ("async", "asyncio.run")],
)
def test_ctrl_c_ends_an_app_whose_task_ignores_cancellation_after_one_grace(
    tmp_path: Path, kind: str, closed_by: str
) -> None:
    grace = 3.0
    app = App(tmp_path, kind, grace, closed_by)
    app.expect("stdout", "started")
    app.interrupt()
    app.expect("stderr", "Ctrl-C again exits at once")
    status, took, stderr = app.wait()
    assert status == -signal.SIGINT, stderr  # as Python ends on an unhandled KeyboardInterrupt
    # One grace (plus at most the second that close gives threads to leave), not two.
    assert took < 2 * grace, (took, stderr)
    assert 'waiting up to the grace period (3 s) for task "stubborn"' in stderr, stderr
    assert 'Ctrl-C: waited the grace period (3 s) for task "stubborn"' in stderr, stderr
    assert "ignored its cancellation" in stderr
    if closed_by == "asyncio.run":
        # The app's loop would wait for the coroutine for ever at its end: btb closed it.
        assert 'closed without task "stubborn"' in stderr, stderr
        assert "async_run: finally" in stderr, stderr


@pytest.mark.parametrize(("kind", "closed_by"), [("sync", "with"), ("async", "with"), ("async", "asyncio.run")])
def test_a_second_ctrl_c_exits_at_once(tmp_path: Path, kind: str, closed_by: str) -> None:
    app = App(tmp_path, kind, grace=60.0, closed_by=closed_by)
    app.expect("stdout", "started")
    app.interrupt()
    app.expect("stderr", "Ctrl-C again exits at once")
    app.interrupt()
    status, took, stderr = app.wait()
    assert status == -signal.SIGINT, stderr
    assert took < WAIT, stderr  # not the 60 s grace
    assert 'Ctrl-C again: exiting at once, without waiting for task "stubborn"' in stderr, stderr



def test_ctrl_c_that_lands_while_aclose_waits_says_what_it_waits_for(tmp_path: Path) -> None:
    """The close began before Ctrl-C (the app left ``async with``): nothing was announced yet, so
    the first Ctrl-C says what the close waits for; the close still lasts one grace."""
    grace = 3.0
    app = App(tmp_path, "async", grace, "leaving async with")
    app.expect("stdout", "ignoring its cancellation")  # aclose has cancelled the run: it waits
    app.interrupt()
    app.expect("stderr", "Ctrl-C again exits at once")
    status, took, stderr = app.wait()
    assert status == -signal.SIGINT, stderr
    assert took < 2 * grace, (took, stderr)
    assert 'waiting up to the grace period (3 s) for task "stubborn"' in stderr, stderr
    assert 'Ctrl-C: waited the grace period (3 s) for task "stubborn"' in stderr, stderr
    assert "async_run: finally" in stderr, stderr
