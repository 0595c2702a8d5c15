"""The enumerations of btb, as ``enum.IntEnum`` with the values of the C header (and of Windows,
where Windows has the enum). Arguments that take one of these also take a plain ``int``."""

from __future__ import annotations

import enum

__all__ = [
    "ApplicationTriggerResult",
    "BackgroundTaskCancellationReason",
    "BackgroundWorkCostValue",
    "BackoffPolicy",
    "CustomSystemEventTriggerRecurrence",
    "Durability",
    "NamePolicy",
    "SystemConditionType",
    "SystemTriggerType",
    "TaskOutcome",
]


class SystemTriggerType(enum.IntEnum):
    """Windows ``SystemTriggerType``."""

    SMS_RECEIVED = 1
    USER_PRESENT = 2
    USER_AWAY = 3
    NETWORK_STATE_CHANGE = 4
    CONTROL_CHANNEL_RESET = 5
    INTERNET_AVAILABLE = 6
    SESSION_CONNECTED = 7
    SERVICING_COMPLETE = 8
    LOCK_SCREEN_APPLICATION_ADDED = 9
    LOCK_SCREEN_APPLICATION_REMOVED = 10
    TIME_ZONE_CHANGE = 11
    ONLINE_ID_CONNECTED_STATE_CHANGE = 12
    BACKGROUND_WORK_COST_CHANGE = 13
    POWER_STATE_CHANGE = 14
    DEFAULT_SIGN_IN_ACCOUNT_CHANGE = 15


class SystemConditionType(enum.IntEnum):
    """Windows ``SystemConditionType``, plus btb's own conditions from 100."""

    USER_PRESENT = 1
    USER_NOT_PRESENT = 2
    INTERNET_AVAILABLE = 3
    INTERNET_NOT_AVAILABLE = 4
    SESSION_CONNECTED = 5
    SESSION_DISCONNECTED = 6
    FREE_NETWORK_AVAILABLE = 7
    BACKGROUND_WORK_COST_NOT_HIGH = 8
    ON_AC_POWER = 100
    BATTERY_NOT_LOW = 101
    STORAGE_NOT_LOW = 102
    DEVICE_IDLE = 103


class BackgroundTaskCancellationReason(enum.IntEnum):
    """Windows ``BackgroundTaskCancellationReason``."""

    ABORT = 0
    TERMINATING = 1
    LOGGING_OFF = 2
    SERVICING_UPDATE = 3
    IDLE_TASK = 4
    UNINSTALL = 5
    CONDITION_LOSS = 6
    SYSTEM_POLICY = 7
    QUIET_HOURS_ENTERED = 8
    EXECUTION_TIME_EXCEEDED = 9
    RESOURCE_REVOCATION = 10
    ENERGY_SAVER = 11


class ApplicationTriggerResult(enum.IntEnum):
    """Windows ``ApplicationTriggerResult``."""

    ALLOWED = 0
    CURRENTLY_RUNNING = 1
    DISABLED_BY_POLICY = 2
    UNKNOWN_ERROR = 3


class CustomSystemEventTriggerRecurrence(enum.IntEnum):
    """Windows ``CustomSystemEventTriggerRecurrence``."""

    ONCE = 0
    ALWAYS = 1


class BackgroundWorkCostValue(enum.IntEnum):
    """Windows ``BackgroundWorkCostValue``."""

    LOW = 0
    MEDIUM = 1
    HIGH = 2


class NamePolicy(enum.IntEnum):
    """What ``register`` does when the name is already registered in the same scope (beyond
    Windows, after WorkManager's unique work)."""

    ALLOW = 0
    KEEP = 1
    REPLACE = 2
    FAIL = 3


class TaskOutcome(enum.IntEnum):
    """The outcome of one run."""

    SUCCEEDED = 0
    FAILED = 1
    CANCELED = 2
    RETRY = 3
    """Another attempt follows (SPEC §12): the run asked for one (WorkManager's
    ``Result.retry()``), or failed or was cut off under a retry policy; ``retry_at`` says when."""


class BackoffPolicy(enum.IntEnum):
    """How the delay between attempts grows (WorkManager's ``BackoffPolicy``; SPEC §12)."""

    EXPONENTIAL = 0
    """``initial_delay·2^(n−1)`` after attempt n."""
    LINEAR = 1
    """``initial_delay·n`` after attempt n."""


class Durability(enum.IntEnum):
    """How hard a registration is pushed to disk before ``register`` returns."""

    FULL = 0
    """``synchronous=FULL``: a returned registration survives power loss (default)."""
    NORMAL = 1
    """``synchronous=NORMAL``: survives a crash; the last commits may be lost on power loss."""
