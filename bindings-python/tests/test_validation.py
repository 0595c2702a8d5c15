"""Every registration check of SPEC §2 raises its own exception class with the right ``.status``
and a message that names the offending value; nothing is stored after an error."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import MakeBuilder

import btb
from btb import SystemConditionType as C

Mutate = Callable[[btb.BackgroundTaskBuilder], None]


def no_name(b: btb.BackgroundTaskBuilder) -> None:
    b.name = None


def set_name(value: str) -> Mutate:
    def mutate(b: btb.BackgroundTaskBuilder) -> None:
        b.name = value

    return mutate


def set_entry_point(value: str | None) -> Mutate:
    def mutate(b: btb.BackgroundTaskBuilder) -> None:
        b.task_entry_point = value

    return mutate


def set_trigger(trigger: btb.IBackgroundTrigger, entry_point: str = "notes.Sync") -> Mutate:
    def mutate(b: btb.BackgroundTaskBuilder) -> None:
        b.task_entry_point = entry_point
        b.set_trigger(trigger)

    return mutate


def add_conditions(*values: int) -> Mutate:
    def mutate(b: btb.BackgroundTaskBuilder) -> None:
        for value in values:
            b.add_condition(btb.SystemCondition(value))

    return mutate


def set_name_policy(value: int) -> Mutate:
    def mutate(b: btb.BackgroundTaskBuilder) -> None:
        b.name_policy = value

    return mutate


CASES: list[tuple[str, Mutate, type[btb.BtbError], int, str]] = [
    ("no name", no_name, btb.InvalidArgumentError, 3, "no name"),
    ("empty name", set_name(""), btb.InvalidArgumentError, 3, "task name is empty"),
    ("long name", set_name("n" * 257), btb.InvalidArgumentError, 3, "257 bytes"),
    ("NUL in name", set_name("a\0b"), btb.InvalidArgumentError, 3, "a\\0b"),
    ("no entry point", set_entry_point(None), btb.NoEntryPointError, 6, '"sync"'),
    (
        "entry point not declared",
        set_entry_point("notes.Missing"),
        btb.NotDeclaredError,
        7,
        "notes.Missing",
    ),
    (
        "task type not declared",
        set_trigger(btb.SystemTrigger(btb.SystemTriggerType.USER_AWAY), "notes.Index"),
        btb.NotDeclaredError,
        7,
        "systemEvent",
    ),
    (
        "application trigger needs general",
        set_trigger(btb.ApplicationTrigger()),
        btb.NotDeclaredError,
        7,
        "general",
    ),
    ("freshness below minimum", set_trigger(btb.TimeTrigger(14)), btb.InvalidArgumentError, 3, "14"),
    (
        "freshness above 30 days",
        set_trigger(btb.TimeTrigger(43_201)),
        btb.InvalidArgumentError,
        3,
        "43201",
    ),
    (
        "maintenance freshness below minimum",
        set_trigger(btb.MaintenanceTrigger(5), "notes.General"),
        btb.InvalidArgumentError,
        3,
        "maintenance trigger freshness 5",
    ),
    (
        "unknown system trigger type",
        set_trigger(btb.SystemTrigger(99)),
        btb.InvalidArgumentError,
        3,
        "99",
    ),
    (
        "one-shot control channel reset",
        set_trigger(btb.SystemTrigger(btb.SystemTriggerType.CONTROL_CHANNEL_RESET, one_shot=True)),
        btb.InvalidArgumentError,
        3,
        "CONTROL_CHANNEL_RESET",
    ),
    (
        "unknown recurrence",
        set_trigger(btb.CustomSystemEventTrigger("sync-now", 7)),
        btb.InvalidArgumentError,
        3,
        "7",
    ),
    (
        "empty custom trigger id",
        set_trigger(btb.CustomSystemEventTrigger("", btb.CustomSystemEventTriggerRecurrence.ONCE)),
        btb.InvalidArgumentError,
        3,
        "custom event trigger id is empty",
    ),
    (
        "bad calendar expression",
        set_trigger(btb.CalendarTrigger("every full moon")),
        btb.InvalidArgumentError,
        3,
        "full moon",
    ),
    ("unknown condition", add_conditions(42), btb.InvalidArgumentError, 3, "42"),
    ("unknown name policy", set_name_policy(9), btb.InvalidArgumentError, 3, "9"),
    (
        "contradictory internet conditions",
        add_conditions(C.INTERNET_AVAILABLE, C.INTERNET_NOT_AVAILABLE),
        btb.ConflictError,
        8,
        "INTERNET_NOT_AVAILABLE",
    ),
    (
        "contradictory user conditions",
        add_conditions(C.USER_NOT_PRESENT, C.USER_PRESENT),
        btb.ConflictError,
        8,
        "USER_NOT_PRESENT",
    ),
    (
        "contradictory session conditions",
        add_conditions(C.SESSION_CONNECTED, C.SESSION_DISCONNECTED),
        btb.ConflictError,
        8,
        "SESSION_DISCONNECTED",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "error", "status", "named"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_registration_error(
    system: btb.System,
    make_builder: MakeBuilder,
    mutate: Mutate,
    error: type[btb.BtbError],
    status: int,
    named: str,
) -> None:
    builder = make_builder()
    mutate(builder)
    with pytest.raises(error) as caught:
        builder.register(system)
    assert type(caught.value) is error
    assert caught.value.status == status
    assert named in str(caught.value)
    assert caught.value.message == str(caught.value)
    assert system.all_tasks == {}
    assert system.all_task_groups == {}


def test_no_trigger(system: btb.System) -> None:
    builder = btb.BackgroundTaskBuilder()
    builder.name = "sync"
    builder.task_entry_point = "notes.Sync"
    with pytest.raises(btb.NoTriggerError) as caught:
        builder.register(system)
    assert caught.value.status == 5
    assert '"sync"' in str(caught.value)


def test_checks_run_in_spec_order(system: btb.System) -> None:
    """A builder with several mistakes reports the first of SPEC §2's table."""
    builder = btb.BackgroundTaskBuilder()
    builder.task_entry_point = "notes.Missing"
    builder.add_condition(btb.SystemCondition(42))
    with pytest.raises(btb.InvalidArgumentError, match="no name"):
        builder.register(system)
    builder.name = "sync"
    with pytest.raises(btb.NoTriggerError):
        builder.register(system)
    builder.set_trigger(btb.TimeTrigger(1))
    with pytest.raises(btb.NotDeclaredError, match="notes.Missing"):
        builder.register(system)
    builder.task_entry_point = "notes.Sync"
    with pytest.raises(btb.InvalidArgumentError, match="1 minutes"):
        builder.register(system)
    builder.set_trigger(btb.TimeTrigger(15))
    with pytest.raises(btb.InvalidArgumentError, match="42"):
        builder.register(system)


def test_name_taken_under_fail_policy(system: btb.System, make_builder: MakeBuilder) -> None:
    first = make_builder().register(system)
    builder = make_builder()
    builder.name_policy = btb.NamePolicy.FAIL
    with pytest.raises(btb.ConflictError) as caught:
        builder.register(system)
    assert caught.value.status == 8
    assert '"sync"' in str(caught.value)
    assert str(first.task_id) in str(caught.value)
    assert list(system.all_tasks) == [first.task_id]


def test_lone_surrogate_is_invalid_utf8() -> None:
    builder = btb.BackgroundTaskBuilder()
    with pytest.raises(btb.InvalidUtf8Error) as caught:
        builder.name = "sync\udcff"
    assert caught.value.status == 4
    assert "\\udcff" in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert builder.name is None
    with pytest.raises(btb.InvalidUtf8Error, match="entry point"):
        builder.task_entry_point = "\ud800"
    with pytest.raises(btb.InvalidUtf8Error, match="calendar expression"):
        btb.CalendarTrigger("\ud800")
    with pytest.raises(btb.InvalidUtf8Error, match="task group id"):
        btb.BackgroundTaskRegistrationGroup("\ud800")


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: btb.TimeTrigger(-5), "-5"),
        (lambda: btb.MaintenanceTrigger(2**32), str(2**32)),
        (lambda: btb.SystemTrigger(-1), "-1"),
        (lambda: btb.CustomSystemEventTrigger("x", -2), "-2"),
        (lambda: btb.SystemCondition(2**40), str(2**40)),
    ],
    ids=["negative freshness", "huge freshness", "negative type", "negative recurrence", "huge condition"],
)
def test_values_outside_u32_are_invalid_argument(make: Callable[[], object], named: str) -> None:
    with pytest.raises(btb.InvalidArgumentError) as caught:
        make()
    assert caught.value.status == 3
    assert named in str(caught.value)


def test_builder_name_policy_out_of_range() -> None:
    builder = btb.BackgroundTaskBuilder()
    with pytest.raises(btb.InvalidArgumentError, match="-1"):
        builder.name_policy = -1


def test_wrong_types_are_type_errors() -> None:
    builder = btb.BackgroundTaskBuilder()
    with pytest.raises(TypeError):
        builder.name = 5  # type: ignore[assignment]
    with pytest.raises(TypeError):
        builder.set_trigger("time")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        builder.add_condition(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        btb.TimeTrigger(15.0)  # type: ignore[arg-type]


def test_group_without_handler_then_with(
    system: btb.System, make_builder: MakeBuilder
) -> None:
    group = btb.BackgroundTaskRegistrationGroup("lib", "Library")
    builder = make_builder(entry_point=None, trigger=btb.ApplicationTrigger())
    builder.task_group = group
    with pytest.raises(btb.NoEntryPointError, match='"lib"'):
        builder.register(system)
    btb.set_default_system(system)
    with pytest.raises(TypeError, match=r"callable as handler\(group, args\), not int"):
        group.add_background_activated(42)  # type: ignore[arg-type]
    token = group.add_background_activated(lambda group, args: None)
    registration = builder.register(system)
    assert registration.task_entry_point is None
    group.remove_background_activated(token)
    with pytest.raises(btb.NoEntryPointError):
        builder.register(system)


def test_system_handler_allows_tasks_without_entry_point(
    system: btb.System, make_builder: MakeBuilder
) -> None:
    builder = make_builder(entry_point=None)
    system.set_background_activated(lambda instance: None)
    assert builder.register(system).task_entry_point is None
    system.set_background_activated(None)
    with pytest.raises(btb.NoEntryPointError, match="the system has no"):
        builder.register(system)
    with pytest.raises(TypeError, match="callable"):
        system.set_background_activated(42)  # type: ignore[arg-type]


def test_unregister_twice_is_not_found(system: btb.System, make_builder: MakeBuilder) -> None:
    registration = make_builder().register(system)
    registration.unregister(False)
    with pytest.raises(btb.NotFoundError) as caught:
        registration.unregister(True)
    assert caught.value.status == 10
    assert str(registration.task_id) in str(caught.value)


def test_closed_system_is_state_error(system: btb.System, make_builder: MakeBuilder) -> None:
    registration = make_builder().register(system)
    system.close()
    assert system.closed
    for call in (
        lambda: make_builder().register(system),
        lambda: system.all_tasks,
        lambda: system.all_task_groups,
        lambda: registration.unregister(False),
        lambda: system.set_background_activated(print),
    ):
        with pytest.raises(btb.StateError) as caught:
            call()
        assert caught.value.status == 11
        assert "closed" in str(caught.value)
    system.close()  # closing twice is harmless
