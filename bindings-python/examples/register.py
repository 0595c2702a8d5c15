"""Register three background tasks, list them, show a failing registration, unregister one.

Needs no manifest file and no store set up by hand: the manifest is declared in code and the
store lives in a temporary directory (pass ``--memory`` for an in-memory store).

    python examples/register.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import btb


def describe(registration: btb.BackgroundTaskRegistration) -> str:
    conditions = ", ".join(btb.SystemConditionType(c.condition_type).name for c in registration.conditions)
    group = f" in group {registration.task_group.id!r}" if registration.task_group else ""
    return f"{registration.name!r}{group}: {registration.trigger!r} when [{conditions}] ({registration.task_id})"


def main() -> int:
    manifest = btb.Manifest(
        app_id="org.example.notes",
        version="1.0",
        tasks=[
            btb.TaskDeclaration("notes.Sync", ["timer", "systemEvent"]),
            btb.TaskDeclaration("notes.Index", ["timer", "general"]),
        ],
    )
    with tempfile.TemporaryDirectory(prefix="btb-example-") as directory:
        store = ":memory:" if "--memory" in sys.argv else Path(directory) / "btb.sqlite3"
        with btb.System(manifest, store) as system:
            print(f"opened a system for {system.app_id} with store {system.store_path}")

            # 1. Sync every hour, once the internet is available.
            sync = btb.BackgroundTaskBuilder()
            sync.name = "hourly-sync"
            sync.task_entry_point = "notes.Sync"
            sync.set_trigger(btb.TimeTrigger(60, one_shot=False))
            sync.add_condition(btb.SystemCondition(btb.SystemConditionType.INTERNET_AVAILABLE))
            sync.name_policy = btb.NamePolicy.REPLACE

            # 2. Re-sync when the user comes back, without cost concerns.
            welcome = btb.BackgroundTaskBuilder()
            welcome.name = "welcome-back"
            welcome.task_entry_point = "notes.Sync"
            welcome.set_trigger(btb.SystemTrigger(btb.SystemTriggerType.USER_PRESENT, one_shot=False))
            welcome.add_condition(btb.SystemCondition(btb.SystemConditionType.BACKGROUND_WORK_COST_NOT_HIGH))

            # 3. Rebuild the search index nightly, on AC power, in the app's "indexing" group.
            index = btb.BackgroundTaskBuilder()
            index.name = "nightly-index"
            index.task_entry_point = "notes.Index"
            index.task_group = btb.BackgroundTaskRegistrationGroup("indexing", "Search indexing")
            index.set_trigger(btb.CalendarTrigger("*-*-* 03:00:00"))
            index.add_condition(btb.SystemCondition(btb.SystemConditionType.ON_AC_POWER))
            index.add_condition(btb.SystemCondition(btb.SystemConditionType.DEVICE_IDLE))

            for builder in (sync, welcome, index):
                registration = builder.register(system)
                print(f"registered {describe(registration)}")

            print("all_tasks (ungrouped):")
            for registration in system.all_tasks.values():
                print(f"  {describe(registration)}")
            for group in system.all_task_groups.values():
                print(f"group {group.id!r} ({group.name}):")
                for registration in group.all_tasks.values():
                    print(f"  {describe(registration)}")

            # A mistake is reported at registration, precisely; nothing is stored.
            broken = btb.BackgroundTaskBuilder()
            broken.name = "too-eager"
            broken.task_entry_point = "notes.Sync"
            broken.set_trigger(btb.TimeTrigger(5, one_shot=True))
            try:
                broken.register(system)
            except btb.InvalidArgumentError as error:
                print(f"registration failed as expected: {type(error).__name__} (status {error.status}): {error}")
            else:
                print("error: the broken registration was accepted", file=sys.stderr)
                return 1

            # The builder is only borrowed: fix it and register again.
            broken.set_trigger(btb.TimeTrigger(15, one_shot=True))
            fixed = broken.register(system)
            print(f"after fixing the freshness: registered {describe(fixed)}")

            fixed.unregister(cancel_task=True)
            print(f"unregistered {fixed.name!r}; {len(system.all_tasks)} ungrouped tasks remain:")
            for registration in system.all_tasks.values():
                print(f"  {registration.name}")
    print("closed the system")
    return 0


if __name__ == "__main__":
    sys.exit(main())
