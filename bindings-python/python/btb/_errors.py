"""The exceptions of btb: one ``BtbError`` subclass per ``btb_status``. Each carries ``status``
(the ``BTB_ERROR_*`` number) and ``message`` (which names the offending value).

``TaskFailedError`` and ``TaskCanceledError`` are not status errors: btb did its job, and the *task*
failed or was canceled. ``BackgroundTaskCompletedEventArgs.check_result()`` raises them (WinRT
``CheckResult``), so they derive from ``Exception`` directly and carry the run's ``instance_id``."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._enums import BackgroundTaskCancellationReason

__all__ = [
    "BtbError",
    "ConflictError",
    "InternalError",
    "InvalidArgumentError",
    "InvalidHandleError",
    "InvalidUtf8Error",
    "NoEntryPointError",
    "NoTriggerError",
    "NotDeclaredError",
    "NotFoundError",
    "NullArgumentError",
    "PolicyError",
    "StateError",
    "StoreError",
    "TaskCanceledError",
    "TaskFailedError",
    "UnsupportedError",
]


class BtbError(Exception):
    """Base class of every btb error."""

    status: int
    """The ``btb_status`` number (``BTB_ERROR_*``)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class NullArgumentError(BtbError):
    """``BTB_ERROR_NULL_ARGUMENT``: a required argument was missing."""

    status = 1


class InvalidHandleError(BtbError):
    """``BTB_ERROR_INVALID_HANDLE``: a freed, foreign or wrong-type handle (C ABI)."""

    status = 2


class InvalidArgumentError(BtbError, ValueError):
    """``BTB_ERROR_INVALID_ARGUMENT``: a value out of range, malformed or unknown."""

    status = 3


class InvalidUtf8Error(BtbError, ValueError):
    """``BTB_ERROR_INVALID_UTF8``: a string with no UTF-8 form."""

    status = 4


class NoTriggerError(BtbError):
    """``BTB_ERROR_NO_TRIGGER``: the builder has no trigger."""

    status = 5


class NoEntryPointError(BtbError):
    """``BTB_ERROR_NO_ENTRY_POINT``: no entry point and no background-activated handler."""

    status = 6


class NotDeclaredError(BtbError):
    """``BTB_ERROR_NOT_DECLARED``: the entry point, or its task type, is not in the manifest."""

    status = 7


class ConflictError(BtbError):
    """``BTB_ERROR_CONFLICT``: contradictory conditions, or a name taken under ``NamePolicy.FAIL``."""

    status = 8


class StoreError(BtbError):
    """``BTB_ERROR_STORE``: the store cannot be opened, read or written."""

    status = 9


class NotFoundError(BtbError):
    """``BTB_ERROR_NOT_FOUND``: no such registration, group or object."""

    status = 10


class StateError(BtbError):
    """``BTB_ERROR_STATE``: not valid now (closed system, no default system, forked child)."""

    status = 11


class UnsupportedError(BtbError):
    """``BTB_ERROR_UNSUPPORTED``: not supported on this platform or in this build."""

    status = 12


class PolicyError(BtbError):
    """``BTB_ERROR_POLICY``: refused by policy."""

    status = 13


class InternalError(BtbError):
    """``BTB_ERROR_INTERNAL``: a bug in btb."""

    status = 14


class TaskFailedError(Exception):
    """A run ended ``FAILED``: its run function raised (the message is the exception, e.g.
    ``"ValueError: boom"``), reported a failure, or no handler was found for it."""

    def __init__(self, message: str, instance_id: uuid.UUID | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.instance_id = instance_id


class TaskCanceledError(Exception):
    """A run ended ``CANCELED``; ``reason`` is the ``BackgroundTaskCancellationReason``."""

    def __init__(
        self,
        message: str,
        reason: BackgroundTaskCancellationReason | int | None,
        instance_id: uuid.UUID | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.instance_id = instance_id
