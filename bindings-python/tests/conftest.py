"""Shared fixtures: a manifest declared in code, and systems on real SQLite files in tmp_path."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import btb

APP_ID = "org.example.notes"


@pytest.fixture
def manifest() -> btb.Manifest:
    return btb.Manifest(
        app_id=APP_ID,
        version="1.0",
        tasks=[
            btb.TaskDeclaration("notes.Sync", ["timer", "systemEvent"]),
            btb.TaskDeclaration("notes.Index", ["timer"]),
            btb.TaskDeclaration("notes.General", ["general"]),
        ],
    )


@pytest.fixture
def clock() -> btb.ManualClock:
    return btb.ManualClock(datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc))


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "btb.sqlite3"


@pytest.fixture
def open_system(
    manifest: btb.Manifest, store_path: Path, clock: btb.ManualClock
) -> Iterator[Callable[..., btb.System]]:
    """Opens systems on the test's store file; closes whatever is still open afterwards."""
    opened: list[btb.System] = []

    def open_(**kwargs: object) -> btb.System:
        options: dict[str, object] = {"clock": clock, "simulated": True}
        options.update(kwargs)
        store = options.pop("store", store_path)
        system = btb.System(options.pop("manifest", manifest), store, **options)  # type: ignore[arg-type]
        opened.append(system)
        return system

    yield open_
    for system in opened:
        system.close()
    btb.set_default_system(None)


@pytest.fixture
def system(open_system: Callable[..., btb.System]) -> btb.System:
    return open_system()


MakeBuilder = Callable[..., btb.BackgroundTaskBuilder]


@pytest.fixture
def make_builder() -> MakeBuilder:
    """A builder that registers cleanly in ``system`` unless the test changes it."""

    def make(
        name: str | None = "sync",
        entry_point: str | None = "notes.Sync",
        trigger: btb.IBackgroundTrigger | None = None,
    ) -> btb.BackgroundTaskBuilder:
        builder = btb.BackgroundTaskBuilder()
        builder.name = name
        builder.task_entry_point = entry_point
        builder.set_trigger(trigger if trigger is not None else btb.TimeTrigger(15, one_shot=False))
        return builder

    return make
