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
import threading
from collections.abc import Callable, Coroutine
from typing import Any

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
    """The app's running loop, which a system opened with ``async with`` uses: the app owns it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def start(self, coroutine: Coroutine[Any, Any, Any], run: Any) -> None:
        _start(self.loop, coroutine, run)

    def call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return _call(self.loop, coroutine)

    def close(self) -> None:
        """Nothing to do: the loop is the app's."""


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
        _start(self.loop, coroutine, run)

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


def _start(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, Any], run: Any) -> None:
    """Runs a run function's coroutine on ``loop`` as a task; ``run`` (the extension's
    ``_AsyncRun``) hears of the task and of how it ended."""

    def begin() -> None:
        try:
            task = loop.create_task(coroutine)
        except BaseException as error:  # noqa: BLE001 - the run fails with it, not the loop
            coroutine.close()
            run.failed(error)
            return
        run.attach(loop, task)
        task.add_done_callback(run.done)

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


async def aclose(system: Any) -> None:
    """Closes ``system`` on the loop's default executor, so that the loop keeps running the
    coroutines that close waits for (they get their cancellation as ``CancelledError``)."""
    await asyncio.get_running_loop().run_in_executor(None, system.close)


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
