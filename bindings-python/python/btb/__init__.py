"""btb: the Windows background-task model (``Windows.ApplicationModel.Background``) for Linux.

Describe a task with a :class:`BackgroundTaskBuilder`, register it in a :class:`System`, and the
broker validates it at once and keeps it until it is unregistered, and runs it whenever its trigger
fires and its conditions hold. Names are the snake_case of the WinRT projection, so Windows code
ports line by line.

Run functions and handlers run on btb's threads; ``async def`` ones run on the system's event loop
(the app's, with ``async with btb.System(...)``, else one loop that btb owns). An exception in one
is logged with its traceback on the ``"btb"`` logger (and fails the run, for a run function).
"""

from __future__ import annotations

import atexit
import sys
import weakref
from typing import Any

from . import _btb
from ._btb import (
    ApplicationTrigger,
    BackgroundActivatedEventArgs,
    BackgroundTaskBuilder,
    BackgroundTaskCompletedEventArgs,
    BackgroundTaskDeferral,
    BackgroundTaskInstance,
    BackgroundTaskProgressEventArgs,
    BackgroundTaskRegistration,
    BackgroundTaskRegistrationGroup,
    CalendarTrigger,
    CustomSystemEventTrigger,
    IBackgroundTrigger,
    MaintenanceTrigger,
    Manifest,
    ManualClock,
    Policy,
    RetryPolicy,
    RunRecord,
    System,
    SystemCondition,
    SystemTrigger,
    TaskDeclaration,
    TimeTrigger,
    default_system,
    set_default_system,
    signal_event,
)
from ._enums import (
    ApplicationTriggerResult,
    BackgroundTaskCancellationReason,
    BackgroundWorkCostValue,
    BackoffPolicy,
    CustomSystemEventTriggerRecurrence,
    Durability,
    NamePolicy,
    SystemConditionType,
    SystemTriggerType,
    TaskOutcome,
)
from ._errors import (
    BtbError,
    ConflictError,
    InternalError,
    InvalidArgumentError,
    InvalidHandleError,
    InvalidUtf8Error,
    NoEntryPointError,
    NoTriggerError,
    NotDeclaredError,
    NotFoundError,
    NullArgumentError,
    PolicyError,
    StateError,
    StoreError,
    TaskCanceledError,
    TaskFailedError,
    UnsupportedError,
)

# `btb.host` (the child's side of an `exec` host) is there after a plain `import btb`, as any
# attribute of the package; it costs nothing until `btb.host.connect()` is called.
from . import host as host  # noqa: E402

__version__: str = _btb.__version__

__all__ = [
    "ApplicationTrigger",
    "ApplicationTriggerResult",
    "BackgroundActivatedEventArgs",
    "BackgroundTaskBuilder",
    "BackgroundTaskCancellationReason",
    "BackgroundTaskCompletedEventArgs",
    "BackgroundTaskDeferral",
    "BackgroundTaskInstance",
    "BackgroundTaskProgressEventArgs",
    "BackgroundTaskRegistration",
    "BackgroundTaskRegistrationGroup",
    "BackgroundWorkCostValue",
    "BackoffPolicy",
    "BtbError",
    "CalendarTrigger",
    "ConflictError",
    "CustomSystemEventTrigger",
    "CustomSystemEventTriggerRecurrence",
    "Durability",
    "IBackgroundTrigger",
    "InternalError",
    "InvalidArgumentError",
    "InvalidHandleError",
    "InvalidUtf8Error",
    "MaintenanceTrigger",
    "Manifest",
    "ManualClock",
    "NamePolicy",
    "NoEntryPointError",
    "NoTriggerError",
    "NotDeclaredError",
    "NotFoundError",
    "NullArgumentError",
    "Policy",
    "PolicyError",
    "RetryPolicy",
    "RunRecord",
    "StateError",
    "StoreError",
    "System",
    "SystemCondition",
    "SystemConditionType",
    "SystemTrigger",
    "SystemTriggerType",
    "TaskCanceledError",
    "TaskDeclaration",
    "TaskFailedError",
    "TaskOutcome",
    "TimeTrigger",
    "UnsupportedError",
    "default_system",
    "set_default_system",
    "signal_event",
]

# Every System opened in this process (the extension adds each one); closed by the exit hook
# before interpreter finalization.
_OPEN_SYSTEMS: weakref.WeakSet[System] = weakref.WeakSet()


class _DefaultSystemAttribute:
    """A class attribute that reads an attribute of the default system, as WinRT's static
    ``BackgroundTaskRegistration.AllTasks`` / ``AllTaskGroups`` do."""

    def __init__(self, attribute: str) -> None:
        self._attribute = attribute

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        return getattr(default_system(), self._attribute)


_registration_type: Any = BackgroundTaskRegistration
_registration_type.all_tasks = _DefaultSystemAttribute("all_tasks")
_registration_type.all_task_groups = _DefaultSystemAttribute("all_task_groups")


def _unhandled_keyboard_interrupt() -> bool:
    """Whether the program is ending on Ctrl-C (an unhandled ``KeyboardInterrupt``)."""
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    return isinstance(last, KeyboardInterrupt)


@atexit.register
def _close_open_systems() -> None:
    if _unhandled_keyboard_interrupt():
        _btb._interrupted(mark=True)
    set_default_system(None)
    grace = 0.0
    for system in list(_OPEN_SYSTEMS):
        try:
            grace = max(grace, system.policy.grace_seconds)
            system.close()  # cancels running tasks (TERMINATING), waits at most their grace
        except StateError:
            pass  # opened by the parent of this forked process: not ours to close
    # A run abandoned after its grace period may still be in Python code on a btb thread: give it
    # as long again to leave before the interpreter finalizes (one stuck for good is left behind)
    # — unless Ctrl-C asked the program to end: it has waited one grace already, and says so.
    if not _btb._interrupted():
        _btb._wait_python_idle(grace)
