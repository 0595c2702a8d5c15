"""SPEC §9, objects are bound by use: Windows code that never names a system ports line by line.
A registered ApplicationTrigger fires wherever its registrations live, and a task group's
background-activated handlers apply in every system that uses the group — before or after the
registration. Nothing here sets a default system."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import pytest

import btb

WAIT = 10.0


def manifest(app_id: str) -> btb.Manifest:
    return btb.Manifest(app_id, "1", [btb.TaskDeclaration("app.Run", ["general"])])


@pytest.fixture
def open_system() -> Iterator[Callable[..., btb.System]]:
    opened: list[btb.System] = []

    def open_(app_id: str = "org.example.bound") -> btb.System:
        system = btb.System(manifest(app_id), ":memory:", simulated=True)
        opened.append(system)
        return system

    btb.set_default_system(None)
    yield open_
    for system in opened:
        system.close()


def build(trigger: btb.IBackgroundTrigger, entry_point: str | None = "app.Run",
          group: btb.BackgroundTaskRegistrationGroup | None = None) -> btb.BackgroundTaskBuilder:
    builder = btb.BackgroundTaskBuilder()
    builder.name = "task"
    builder.task_entry_point = entry_point
    builder.task_group = group
    builder.set_trigger(trigger)
    return builder


def test_a_registered_trigger_fires_in_its_system_without_naming_it(
    open_system: Callable[..., btb.System],
) -> None:
    system = open_system("org.example.bound")
    ran = threading.Event()
    system.register_entry_point("app.Run", lambda instance: ran.set())
    trigger = btb.ApplicationTrigger()
    build(trigger).register(system)
    assert trigger.request() is btb.ApplicationTriggerResult.ALLOWED  # was StateError: no default
    assert ran.wait(WAIT)


def test_a_trigger_registered_in_two_systems_fires_in_both_and_system_narrows(
    open_system: Callable[..., btb.System],
) -> None:
    runs: list[str] = []
    done = threading.Semaphore(0)
    systems = [open_system("org.example.one"), open_system("org.example.two")]
    trigger = btb.ApplicationTrigger()
    def runner(app_id: str) -> Callable[[btb.BackgroundTaskInstance], None]:
        def run(instance: btb.BackgroundTaskInstance) -> None:
            runs.append(app_id)
            done.release()

        return run

    for system in systems:
        system.register_entry_point("app.Run", runner(system.app_id))
        build(trigger).register(system)
    assert trigger.request() is btb.ApplicationTriggerResult.ALLOWED
    for _ in systems:
        assert done.acquire(timeout=WAIT)
    assert sorted(runs) == ["org.example.one", "org.example.two"]
    for system in systems:
        assert system.wait_idle(WAIT)
    runs.clear()
    assert trigger.request(system=systems[1]) is btb.ApplicationTriggerResult.ALLOWED
    assert done.acquire(timeout=WAIT)
    assert systems[1].wait_idle(WAIT)
    assert runs == ["org.example.two"]


def test_an_unregistered_trigger_is_unknown_not_an_error(open_system: Callable[..., btb.System]) -> None:
    open_system()
    assert btb.ApplicationTrigger().request() is btb.ApplicationTriggerResult.UNKNOWN_ERROR


def test_request_async_finds_the_system_too(open_system: Callable[..., btb.System]) -> None:
    system = open_system()
    ran = threading.Event()
    system.register_entry_point("app.Run", lambda instance: ran.set())
    trigger = btb.ApplicationTrigger()
    build(trigger).register(system)

    async def main() -> btb.ApplicationTriggerResult:
        return await trigger.request_async({"n": 1})

    assert asyncio.run(main()) is btb.ApplicationTriggerResult.ALLOWED
    assert ran.wait(WAIT)


@pytest.mark.parametrize("added", ["before", "after"])
def test_a_group_handler_applies_in_any_system_using_the_group(
    open_system: Callable[..., btb.System], added: str
) -> None:
    system = open_system()
    group = btb.BackgroundTaskRegistrationGroup("bound.lib", "Library")
    seen: list[tuple[str, str]] = []

    def handler(sender: btb.BackgroundTaskRegistrationGroup, args: btb.BackgroundActivatedEventArgs) -> None:
        # Called as WinRT calls it: the group, then the args with the run to carry out.
        instance = args.task_instance
        group_of = instance.task.task_group
        assert group_of is not None and sender == group_of
        assert instance.task.system is system, "the group's handler gets the system's own object"
        seen.append((instance.task.name, sender.id))

    token = 0
    if added == "before":  # registration needs a handler to accept a task without entry point
        token = group.add_background_activated(handler)
    else:
        system.set_background_activated(lambda i: seen.append(("system", "")))
    trigger = btb.ApplicationTrigger()
    registration = build(trigger, None, group).register(system)
    if added == "after":
        # A new object for the same group, made after the registration, in no system at all.
        token = btb.BackgroundTaskRegistrationGroup("bound.lib").add_background_activated(handler)
    try:
        assert trigger.request() is btb.ApplicationTriggerResult.ALLOWED
        assert system.wait_idle(WAIT)
        assert seen == [("task", "bound.lib")]
        assert registration.history[-1].status is btb.TaskOutcome.SUCCEEDED
    finally:
        group.remove_background_activated(token)
