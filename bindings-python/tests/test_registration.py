"""Registering, listing, groups, name policies, unregistering, and persistence across reopen."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import MakeBuilder

import btb
from btb import NamePolicy
from btb import SystemConditionType as C


def test_registration_holds_what_the_builder_held(
    system: btb.System, make_builder: MakeBuilder
) -> None:
    builder = make_builder(trigger=btb.SystemTrigger(btb.SystemTriggerType.INTERNET_AVAILABLE, one_shot=True))
    builder.add_condition(btb.SystemCondition(C.INTERNET_AVAILABLE))
    builder.add_condition(btb.SystemCondition(C.ON_AC_POWER))
    builder.add_condition(btb.SystemCondition(C.INTERNET_AVAILABLE))  # duplicates collapse
    builder.cancel_on_condition_loss = True
    builder.is_network_requested = True
    registration = builder.register(system)

    assert isinstance(registration.task_id, uuid.UUID)
    assert registration.name == "sync"
    assert registration.task_entry_point == "notes.Sync"
    assert registration.task_group is None
    assert registration.cancel_on_condition_loss is True
    assert registration.is_network_requested is True
    assert registration.spent is False
    assert registration.system is system
    trigger = registration.trigger
    assert isinstance(trigger, btb.SystemTrigger)
    assert trigger.trigger_type is btb.SystemTriggerType.INTERNET_AVAILABLE
    assert trigger.one_shot is True
    assert [c.condition_type for c in registration.conditions] == [C.INTERNET_AVAILABLE, C.ON_AC_POWER]
    assert system.all_tasks == {registration.task_id: registration}


def test_builder_properties_round_trip() -> None:
    builder = btb.BackgroundTaskBuilder()
    assert builder.name is None
    assert builder.task_entry_point is None
    assert builder.task_group is None
    assert builder.trigger is None
    assert builder.conditions == []
    assert builder.cancel_on_condition_loss is False
    assert builder.is_network_requested is False
    assert builder.name_policy is NamePolicy.ALLOW

    group = btb.BackgroundTaskRegistrationGroup("lib")
    builder.name = "sync"
    builder.task_entry_point = "notes.Sync"
    builder.task_group = group
    builder.name_policy = NamePolicy.REPLACE
    builder.set_trigger(btb.TimeTrigger(30))
    builder.set_trigger(btb.MaintenanceTrigger(60, one_shot=True))  # replaces
    builder.add_condition(btb.SystemCondition(C.ON_AC_POWER))
    assert builder.name == "sync"
    assert builder.task_entry_point == "notes.Sync"
    assert builder.task_group is group
    assert group.name == "lib"  # without a name, the name is the id
    assert builder.name_policy is NamePolicy.REPLACE
    assert builder.trigger == btb.MaintenanceTrigger(60, one_shot=True)
    assert builder.conditions == [btb.SystemCondition(C.ON_AC_POWER)]

    builder.name_policy = 7  # unknown values are kept and reported by register
    assert builder.name_policy == 7 and not isinstance(builder.name_policy, NamePolicy)
    builder.task_group = None
    builder.name = None
    assert builder.task_group is None and builder.name is None


@pytest.mark.parametrize(
    ("trigger", "properties"),
    [
        (btb.TimeTrigger(15), {"freshness_time": 15, "one_shot": False}),
        (btb.MaintenanceTrigger(45, True), {"freshness_time": 45, "one_shot": True}),
        (
            btb.SystemTrigger(btb.SystemTriggerType.USER_AWAY, True),
            {"trigger_type": btb.SystemTriggerType.USER_AWAY, "one_shot": True},
        ),
        (
            btb.CustomSystemEventTrigger("sync-now", btb.CustomSystemEventTriggerRecurrence.ALWAYS),
            {"trigger_id": "sync-now", "recurrence": btb.CustomSystemEventTriggerRecurrence.ALWAYS},
        ),
        (btb.CalendarTrigger("*-*-* 03:00:00"), {"expression": "*-*-* 03:00:00"}),
        (btb.ApplicationTrigger(), {}),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, btb.IBackgroundTrigger) else "",
)
def test_trigger_properties_survive_registration(
    open_system: Callable[..., btb.System],
    trigger: btb.IBackgroundTrigger,
    properties: dict[str, object],
) -> None:
    manifest = btb.Manifest(
        "org.example.triggers", "1", [btb.TaskDeclaration("t", ["timer", "general", "systemEvent"])]
    )
    system = open_system(manifest=manifest, store=":memory:")
    for name, value in properties.items():
        assert getattr(trigger, name) == value
        assert type(getattr(trigger, name)) is type(value)
    builder = btb.BackgroundTaskBuilder()
    builder.name = "t"
    builder.task_entry_point = "t"
    builder.set_trigger(trigger)
    registered = builder.register(system).trigger
    assert type(registered) is type(trigger)
    assert registered == trigger
    for name, value in properties.items():
        assert getattr(registered, name) == value


def test_unknown_enum_values_read_back_as_int() -> None:
    trigger = btb.SystemTrigger(99)
    assert trigger.trigger_type == 99 and type(trigger.trigger_type) is int
    assert btb.SystemCondition(42).condition_type == 42
    assert type(btb.CustomSystemEventTrigger("x", 5).recurrence) is int
    assert repr(btb.SystemCondition(C.DEVICE_IDLE)) == "SystemCondition(<SystemConditionType.DEVICE_IDLE: 103>)"


def test_builder_is_reusable_after_an_error(system: btb.System) -> None:
    builder = btb.BackgroundTaskBuilder()
    builder.name = "sync"
    builder.task_entry_point = "notes.Sync"
    with pytest.raises(btb.NoTriggerError):
        builder.register(system)
    builder.set_trigger(btb.TimeTrigger(10))
    with pytest.raises(btb.InvalidArgumentError):
        builder.register(system)
    assert builder.name == "sync" and builder.trigger == btb.TimeTrigger(10)
    builder.set_trigger(btb.TimeTrigger(20))
    first = builder.register(system)
    second = builder.register(system)  # the builder stays usable after success too
    assert first.task_id != second.task_id
    assert first.trigger == second.trigger == btb.TimeTrigger(20)
    assert list(system.all_tasks) == [first.task_id, second.task_id]


def test_grouped_tasks_are_listed_by_their_group(
    system: btb.System, make_builder: MakeBuilder
) -> None:
    ungrouped = make_builder(name="app-task").register(system)
    group = btb.BackgroundTaskRegistrationGroup("com.example.lib", "Example library")
    builder = make_builder(name="lib-task")
    builder.task_group = group
    grouped = [builder.register(system), builder.register(system)]

    assert system.all_tasks == {ungrouped.task_id: ungrouped}
    groups = system.all_task_groups
    assert list(groups) == ["com.example.lib"]
    listed = groups["com.example.lib"]
    assert (listed.id, listed.name) == ("com.example.lib", "Example library")
    assert listed == group
    assert listed.all_tasks == {r.task_id: r for r in grouped}
    assert grouped[0].task_group == group

    for registration in grouped:
        registration.unregister(cancel_task=False)
    assert system.all_task_groups == {}
    assert listed.all_tasks == {}


def test_names_are_scoped_by_group(system: btb.System, make_builder: MakeBuilder) -> None:
    make_builder().register(system)
    builder = make_builder()
    builder.task_group = btb.BackgroundTaskRegistrationGroup("lib")
    builder.name_policy = NamePolicy.FAIL
    builder.register(system)  # same name, other scope
    with pytest.raises(btb.ConflictError, match='in task group "lib"'):
        builder.register(system)


def test_name_policy_allow(system: btb.System, make_builder: MakeBuilder) -> None:
    first = make_builder().register(system)
    second = make_builder().register(system)
    assert first.task_id != second.task_id
    assert len(system.all_tasks) == 2


def test_name_policy_keep(system: btb.System, make_builder: MakeBuilder) -> None:
    first = make_builder().register(system)
    builder = make_builder(trigger=btb.TimeTrigger(60))
    builder.name_policy = NamePolicy.KEEP
    kept = builder.register(system)
    assert kept == first
    assert kept.trigger == btb.TimeTrigger(15)
    assert list(system.all_tasks) == [first.task_id]


def test_name_policy_replace(system: btb.System, make_builder: MakeBuilder) -> None:
    first = make_builder().register(system)
    builder = make_builder(trigger=btb.TimeTrigger(60))
    builder.name_policy = NamePolicy.REPLACE
    replacement = builder.register(system)
    assert replacement.task_id != first.task_id
    assert system.all_tasks == {replacement.task_id: replacement}
    with pytest.raises(btb.NotFoundError):
        first.unregister(False)


def test_name_policy_fail(system: btb.System, make_builder: MakeBuilder) -> None:
    builder = make_builder()
    builder.name_policy = NamePolicy.FAIL
    first = builder.register(system)
    with pytest.raises(btb.ConflictError):
        builder.register(system)
    builder.name = "other"
    assert builder.register(system).task_id != first.task_id


def test_unregister(system: btb.System, make_builder: MakeBuilder) -> None:
    keep = make_builder(name="keep").register(system)
    drop = make_builder(name="drop").register(system)
    drop.unregister(cancel_task=True)
    assert system.all_tasks == {keep.task_id: keep}


def test_registrations_persist_across_close_and_reopen(
    open_system: Callable[..., btb.System], make_builder: MakeBuilder, store_path: Path
) -> None:
    with open_system() as system:
        plain = make_builder(trigger=btb.CalendarTrigger("Mon *-*-* 09:00")).register(system)
        plain_id = plain.task_id
        builder = make_builder(name="grouped", entry_point=None, trigger=btb.ApplicationTrigger())
        builder.task_group = btb.BackgroundTaskRegistrationGroup("lib", "Library")
        system.set_background_activated(lambda instance: None)
        grouped_id = builder.register(system).task_id
        gone = make_builder(name="gone").register(system)
        gone.unregister(False)
    assert system.closed
    assert store_path.exists()

    reopened = open_system()
    tasks = reopened.all_tasks
    assert list(tasks) == [plain_id]
    restored = tasks[plain_id]
    assert restored.name == "sync"
    assert restored.trigger == btb.CalendarTrigger("Mon *-*-* 09:00")
    groups = reopened.all_task_groups
    assert list(groups) == ["lib"] and groups["lib"].name == "Library"
    assert list(groups["lib"].all_tasks) == [grouped_id]


def test_durability_normal_and_path_objects(
    open_system: Callable[..., btb.System], make_builder: MakeBuilder, tmp_path: Path
) -> None:
    path = tmp_path / "normal.sqlite3"
    system = open_system(store=path, policy=btb.Policy(durability="normal"))
    assert system.store_path == str(path)
    assert system.policy.durability is btb.Durability.NORMAL
    make_builder().register(system)
    system.close()
    assert len(open_system(store=str(path)).all_tasks) == 1


def test_memory_store_is_ephemeral(
    open_system: Callable[..., btb.System], make_builder: MakeBuilder
) -> None:
    system = open_system(store=":memory:")
    assert system.store_path == ":memory:"
    make_builder().register(system)
    system.close()
    assert open_system(store=":memory:").all_tasks == {}


def test_concurrent_durable_registrations(system: btb.System, make_builder: MakeBuilder) -> None:
    """Threads register at once on a durable store (the GIL is released while committing)."""
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            builder = make_builder(name=f"task-{index}")
            for _ in range(10):
                builder.register(system)
                _ = system.all_tasks
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(system.all_tasks) == 40


def test_system_properties(system: btb.System, manifest: btb.Manifest, clock: btb.ManualClock) -> None:
    assert system.app_id == "org.example.notes"
    assert system.manifest == manifest
    assert system.simulated is True
    assert system.closed is False
    own_clock = system.clock
    assert own_clock is not None and own_clock.now == clock.now
    clock.advance(60)
    assert own_clock.now == clock.now  # one clock, shared
    assert repr(system).startswith("System(app_id='org.example.notes', store=")


def test_calendar_trigger_normalized():
    assert btb.CalendarTrigger("Mon-Wed 12-10-15 17:48").normalized == "Mon..Wed 2012-10-15 17:48:00"
    assert btb.CalendarTrigger("*-*~05,3").normalized == "*-*~03,05 00:00:00"
    with pytest.raises(btb.InvalidArgumentError, match="minute 61 is out of range"):
        btb.CalendarTrigger("*-*-* 10:61").normalized
