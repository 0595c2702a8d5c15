"""Where btb runs coroutines (SPEC §9.1).

An ``async def`` run function or handler runs on the event loop of its system: the app's own
loop when the system was opened with ``async with btb.System(...)`` (:class:`AppLoop`), else the
one loop that btb owns for that system (:class:`OwnLoop`), started with its thread at the first
coroutine and stopped and joined when the system closes. The extension (``runtime.rs``) decides
which, and calls ``start`` for a run (which a deferral keeps going until its coroutine ends) or
``call`` for a handler (the btb thread that calls handlers waits for it, so handlers still run one
at a time, in order).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import signal
import threading
import weakref
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from . import _btb
from ._errors import InvalidArgumentError

_log = logging.getLogger("btb")

# How long the btb thread that waits for a handler's coroutine waits before it checks that the
# loop still runs (a loop stopped under it would never answer).
_CHECK_LOOP = 1.0
# How long `close` waits for btb's loop thread once the loop is told to stop; past it, the thread
# is blocked in app code (a coroutine that never yields) and is left behind, named.
_JOIN_MARGIN = 1.0
# One executor call of the async waits lasts at most this long, so that cancelling
# `wait_idle_async` leaves no wait behind for longer.
_WAIT_SLICE = 0.25


class AppLoop:
    """The app's running loop, which a system opened with ``async with`` uses: the app owns it.

    On the main thread it also hears Ctrl-C while the system is open (SPEC §9.1): its SIGINT
    handler records the Ctrl-C for btb (the close then says what it waits for, and waits at most
    one grace) and passes it on to the handler it replaced (``asyncio.run``'s cancels the main
    task); a second Ctrl-C while ``aclose`` waits exits the process at once, for that wait is on
    an executor's thread, where no signal is heard."""

    def __init__(self, loop: asyncio.AbstractEventLoop, system: Any) -> None:
        self.loop = loop
        self._system = weakref.ref(system)
        # The tasks of the runs going on this loop: those left when the system has closed ignored
        # their cancellation past the grace, and are given up (`close`).
        self._runs: dict[asyncio.Task[Any], _Coroutine] = {}
        self.closing = False
        self._replaced: Any = None
        if threading.current_thread() is threading.main_thread():
            replaced = signal.getsignal(signal.SIGINT)
            if callable(replaced):  # not SIG_IGN, nor a handler that is not Python's
                self._replaced = replaced
                signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        system = self._system()
        try:
            if self.closing and system is not None:
                # The first says what the close waits for; a second exits at once (no return).
                _btb._ctrl_c_while_closing(system)
            else:
                _btb._interrupted(mark=True)
        finally:
            # Passed on even when saying it raised (warnings turned into errors): asyncio's
            # handler still cancels `main`.
            self._replaced(signum, frame)

    def restore_sigint(self) -> None:
        """Gives SIGINT back to the handler it had before ``async with`` (from the main thread,
        at the end of ``aclose``)."""
        if self._replaced is not None and signal.getsignal(signal.SIGINT) == self._on_sigint:
            signal.signal(signal.SIGINT, self._replaced)

    def start(self, coroutine: Coroutine[Any, Any, Any], run: Any) -> None:
        _start(self.loop, coroutine, run, self._runs)

    def call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return _call(self.loop, coroutine)

    def close(self) -> None:
        """After the system closed: a run whose coroutine still runs ignored its cancellation
        past the grace, and the system closed without it. The loop is the app's, and would wait
        for it for ever at its end (``asyncio.run`` does): its coroutine is closed (it gets
        ``GeneratorExit``, so its ``finally`` blocks run), named in a warning."""
        try:
            self.loop.call_soon_threadsafe(self._give_up)
        except RuntimeError:
            pass  # the app's loop is closed: nothing runs on it any more

    def _give_up(self) -> None:
        for task, coroutine in list(self._runs.items()):
            if task.done():
                continue
            _log.warning(
                "closed without %s: its coroutine ignored its cancellation past the grace "
                "period; closing it (GeneratorExit)",
                coroutine.run.label,
            )
            coroutine.given_up = True
            task.cancel()


class OwnLoop:
    """The one loop btb runs for a system opened outside a running loop, on its thread
    ``btb-asyncio``."""

    def __init__(self, app_id: str) -> None:
        self.app_id = app_id
        self.loop = asyncio.new_event_loop()
        # A daemon thread: the interpreter does not wait for it before the exit hook, which
        # closes the systems (and so stops and joins this thread).
        self._thread = threading.Thread(target=self._run, name="btb-asyncio", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            # What is left ignored its cancellation past the grace (the system closed without
            # it): its coroutine is closed with the loop, which asyncio reports by name.
            self.loop.close()

    def start(self, coroutine: Coroutine[Any, Any, Any], run: Any) -> None:
        _start(self.loop, coroutine, run, None)

    def call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return _call(self.loop, coroutine)

    def close(self) -> None:
        """Stops the loop and joins its thread (after the system closed: nothing of btb's runs
        there any more, unless a coroutine ignored its cancellation)."""
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:
            return  # closed already
        if threading.current_thread() is self._thread:
            return  # the system was closed by a coroutine of this loop: it stops once that returns
        self._thread.join(_JOIN_MARGIN)
        if self._thread.is_alive():
            _log.warning(
                "closed %s without waiting for its event loop thread btb-asyncio: a coroutine "
                "blocks it (it calls blocking code without awaiting)",
                self.app_id,
            )


class _Coroutine:
    """What a run's task awaits: the run function's coroutine, driven as ``await`` drives it
    (what the task sends or throws goes to it), until the system gives up on it (``given_up``,
    after it ignored its cancellation past the grace): the next exception thrown in then closes
    it and ends the task, instead of being swallowed by it."""

    def __init__(self, coroutine: Coroutine[Any, Any, Any], run: Any) -> None:
        self.coroutine = coroutine
        self.run = run
        self.given_up = False

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine = self.coroutine
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                yielded = coroutine.send(sent) if thrown is None else coroutine.throw(thrown)
            except StopIteration as stop:
                return stop.value
            sent = thrown = None
            try:
                sent = yield yielded
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as error:  # noqa: BLE001 - thrown in by the task: passed on
                if self.given_up:
                    coroutine.close()
                    raise
                thrown = error


async def _drive(coroutine: _Coroutine) -> Any:
    return await coroutine


def _start(
    loop: asyncio.AbstractEventLoop,
    coroutine: Coroutine[Any, Any, Any],
    run: Any,
    runs: dict[asyncio.Task[Any], _Coroutine] | None,
) -> None:
    """Runs a run function's coroutine on ``loop`` as a task; ``run`` (the extension's
    ``_AsyncRun``) hears of the task and of how it ended; ``runs`` (if any) holds the task
    while it runs."""

    def begin() -> None:
        driven = _Coroutine(coroutine, run)
        driving = _drive(driven)
        try:
            task = loop.create_task(driving)
        except BaseException as error:  # noqa: BLE001 - the run fails with it, not the loop
            driving.close()
            coroutine.close()
            run.failed(error)
            return
        run.attach(loop, task)
        task.add_done_callback(run.done)
        if runs is not None:
            runs[task] = driven
            task.add_done_callback(runs.pop)

    try:
        loop.call_soon_threadsafe(begin)
    except RuntimeError:
        coroutine.close()
        raise RuntimeError(
            "the event loop that runs this system's coroutines is closed (an app's loop ends "
            "with `async with btb.System(...)`)"
        ) from None


def _call(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Runs a handler's coroutine on ``loop`` and waits for it (on a btb thread)."""
    try:
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
    except RuntimeError:
        coroutine.close()
        raise RuntimeError("the event loop that runs this system's coroutines is closed") from None
    while True:
        try:
            return future.result(_CHECK_LOOP)
        except concurrent.futures.TimeoutError:  # the builtin TimeoutError only from 3.11
            if not loop.is_running():
                future.cancel()
                raise RuntimeError(
                    "the event loop that runs this system's coroutines stopped before the "
                    "handler's coroutine ended"
                ) from None


def run_here(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """A coroutine of a system whose object is gone (a handler delivered while it closes): run to
    completion on the calling btb thread, on a loop of its own."""
    return asyncio.run(coroutine)


async def returning(value: Any) -> Any:
    """``await system.__aenter__()``: the system (bound to the running loop already)."""
    return value


async def aclose(system: Any, event_loop: Any) -> None:
    """Closes ``system`` on the loop's default executor, so that the loop keeps running the
    coroutines that close waits for (they get their cancellation as ``CancelledError``).
    Cancelled meanwhile (Ctrl-C under ``asyncio.run`` cancels the main task), it still waits for
    the close, which lasts at most the grace, and then ends cancelled."""
    loop = asyncio.get_running_loop()
    app_loop = event_loop if isinstance(event_loop, AppLoop) else None
    if app_loop is not None:
        app_loop.closing = True
    try:
        closing = loop.run_in_executor(None, system.close)
        cancelled: asyncio.CancelledError | None = None
        while True:
            try:
                await asyncio.shield(closing)
                break
            except asyncio.CancelledError as error:
                if closing.done():
                    raise
                cancelled = error
        if cancelled is not None:
            raise cancelled
    finally:
        if app_loop is not None:
            app_loop.restore_sigint()


async def wait(call: Callable[[float], bool], what: str, timeout: float) -> bool:
    """``wait_idle_async`` and ``serve_activation_async``: the blocking wait on the default
    executor, in slices, so that the loop stays free and a cancelled wait ends soon."""
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
        raise TypeError(f"{what} timeout must be a number of seconds, not {type(timeout).__name__}")
    if not math.isfinite(timeout) or timeout < 0:
        raise InvalidArgumentError(f"{what} timeout {timeout} is not a number of seconds >= 0")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = max(0.0, deadline - loop.time())
        if await loop.run_in_executor(None, call, min(left, _WAIT_SLICE)):
            return True
        if left <= _WAIT_SLICE:
            return False
