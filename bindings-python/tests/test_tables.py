"""Enums and exceptions match the core's tables (one source of truth, checked here)."""

from __future__ import annotations

import enum

import pytest

import btb
from btb import _btb

SPEC_VALUES = {
    "SystemTriggerType": {"SMS_RECEIVED": 1, "USER_AWAY": 3, "TIME_ZONE_CHANGE": 11, "DEFAULT_SIGN_IN_ACCOUNT_CHANGE": 15},
    "SystemConditionType": {"USER_PRESENT": 1, "BACKGROUND_WORK_COST_NOT_HIGH": 8, "ON_AC_POWER": 100, "DEVICE_IDLE": 103},
    "BackgroundTaskCancellationReason": {"ABORT": 0, "CONDITION_LOSS": 6, "ENERGY_SAVER": 11},
    "ApplicationTriggerResult": {"ALLOWED": 0, "CURRENTLY_RUNNING": 1, "UNKNOWN_ERROR": 3},
    "CustomSystemEventTriggerRecurrence": {"ONCE": 0, "ALWAYS": 1},
    "BackgroundWorkCostValue": {"LOW": 0, "MEDIUM": 1, "HIGH": 2},
    "NamePolicy": {"ALLOW": 0, "KEEP": 1, "REPLACE": 2, "FAIL": 3},
    "TaskOutcome": {"SUCCEEDED": 0, "FAILED": 1, "CANCELED": 2, "RETRY": 3},
    "BackoffPolicy": {"EXPONENTIAL": 0, "LINEAR": 1},
    "Durability": {"FULL": 0, "NORMAL": 1},
}


@pytest.mark.parametrize("name", sorted(SPEC_VALUES))
def test_enum_is_int_enum_with_core_values(name: str) -> None:
    cls = getattr(btb, name)
    assert issubclass(cls, enum.IntEnum)
    assert {member.name: member.value for member in cls} == dict(_btb._ENUM_VALUES[name])
    for member, value in SPEC_VALUES[name].items():
        assert cls[member] == value


def test_every_core_enum_has_a_python_class() -> None:
    assert set(_btb._ENUM_VALUES) == set(SPEC_VALUES)


def test_enum_members_are_accepted_and_returned() -> None:
    trigger = btb.SystemTrigger(btb.SystemTriggerType.POWER_STATE_CHANGE)
    assert trigger.trigger_type is btb.SystemTriggerType.POWER_STATE_CHANGE
    assert btb.SystemTrigger(14).trigger_type is btb.SystemTriggerType.POWER_STATE_CHANGE


def test_exception_classes_match_the_core_statuses() -> None:
    assert len(_btb._ERROR_CLASSES) == 14
    for status, status_name, class_name in _btb._ERROR_CLASSES:
        cls = getattr(btb, class_name)
        assert issubclass(cls, btb.BtbError)
        assert cls.status == status, status_name
        error = cls("message")
        assert error.status == status and error.message == "message" and str(error) == "message"
    assert [s for s, _, _ in _btb._ERROR_CLASSES] == list(range(1, 15))


def test_exception_hierarchy() -> None:
    assert issubclass(btb.BtbError, Exception)
    assert issubclass(btb.InvalidArgumentError, ValueError)
    assert issubclass(btb.InvalidUtf8Error, ValueError)
    assert not issubclass(btb.NoTriggerError, ValueError)
    error = btb.StoreError("store x: broken", 9)
    assert error.status == 9
