"""Manifest, TaskDeclaration, Policy and ManualClock."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest

import btb

UTC = datetime.timezone.utc


def test_manifest_in_code() -> None:
    declaration = btb.TaskDeclaration("notes.Index", ["timer", "timer"], exec=["/usr/bin/notes", "--bg"])
    manifest = btb.Manifest(app_id="org.example.notes", version="1.4.0", tasks=[declaration])
    assert manifest.app_id == "org.example.notes"
    assert manifest.version == "1.4.0"
    assert manifest.tasks == [declaration]
    assert declaration.types == ["timer"]  # duplicates collapse
    assert declaration.exec == ["/usr/bin/notes", "--bg"]
    assert manifest.path is None
    assert btb.Manifest("org.example.empty").version == "0"


def test_manifest_load_and_from_toml(tmp_path: Path) -> None:
    text = """\
app_id  = "org.example.notes"
version = "1.4.0"

[[task]]
entry_point = "notes.Sync"
types       = ["timer", "systemEvent"]
"""
    path = tmp_path / "btb.toml"
    path.write_text(text)
    loaded = btb.Manifest.load(path)
    assert Path(os.fspath(loaded.path or "")) == path
    assert loaded.tasks[0].entry_point == "notes.Sync"
    assert loaded.tasks[0].types == ["timer", "systemEvent"]
    parsed = btb.Manifest.from_toml(text)
    assert parsed.tasks == loaded.tasks
    assert btb.Manifest.load(str(path)).app_id == "org.example.notes"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('app_id = "org.example.x"\n\n[[task]]\nentry_point = "a"\ntypes = ["timer", "telepathy"]\n', "line 5"),
        ('app_id = "org.example.x"\ncolour = "blue"\n', "line 2"),
        ('app_id = "not a reverse dns"\n', "not a reverse-DNS"),
        ('app_id = "org.example.x"\n[[task]]\nentry_point = "a"\ntypes = ["timer"]\nexec = ["notes"]\n', "absolute"),
        ('app_id = "org.example.x"\n[[task]]\nentry_point = "a"\ntypes = []\n[[task]]\nentry_point = "a"\ntypes = []\n', "twice"),
    ],
    ids=["unknown type", "unknown key", "bad app id", "relative exec", "declared twice"],
)
def test_manifest_errors_name_the_line_or_value(text: str, named: str) -> None:
    with pytest.raises(btb.InvalidArgumentError) as caught:
        btb.Manifest.from_toml(text)
    assert caught.value.status == 3
    assert named in str(caught.value)


def test_manifest_code_errors(tmp_path: Path) -> None:
    with pytest.raises(btb.InvalidArgumentError, match="telepathy"):
        btb.TaskDeclaration("a", ["telepathy"])
    with pytest.raises(btb.InvalidArgumentError, match="whitespace"):
        btb.TaskDeclaration("a b", ["timer"])
    with pytest.raises(btb.InvalidArgumentError, match="'a'|\"a\""):
        btb.Manifest("org.example.x", "1", [btb.TaskDeclaration("a", []), btb.TaskDeclaration("a", [])])
    with pytest.raises(btb.InvalidArgumentError, match="cannot read"):
        btb.Manifest.load(tmp_path / "missing.toml")
    with pytest.raises(TypeError, match="not a str"):
        btb.TaskDeclaration("a", "timer")
    with pytest.raises(TypeError):
        btb.Manifest("org.example.x", "1", ["not a declaration"])  # type: ignore[list-item]


def test_policy_defaults_follow_windows() -> None:
    policy = btb.Policy()
    assert policy.min_freshness_minutes == 15
    assert policy.timer_window_seconds == 900
    assert policy.grace_seconds == 5.0
    assert policy.max_concurrent == os.cpu_count()
    assert policy.durability is btb.Durability.FULL
    assert policy.history_limit == 100
    assert policy.time_limits == {
        "time": 25,
        "maintenance": 600,
        "system": 25,
        "application": 600,
        "custom_event": 25,
        "calendar": 25,
    }


def test_policy_options() -> None:
    policy = btb.Policy(
        min_freshness_minutes=1,
        timer_window_seconds=0,
        grace_seconds=0.25,
        max_concurrent=3,
        durability=btb.Durability.NORMAL,
        time_limits={"time": 0, "Maintenance": 60},
        history_limit=5,
    )
    assert (policy.min_freshness_minutes, policy.timer_window_seconds, policy.grace_seconds) == (1, 0, 0.25)
    assert (policy.max_concurrent, policy.durability, policy.history_limit) == (3, btb.Durability.NORMAL, 5)
    assert policy.time_limits["time"] == 0 and policy.time_limits["maintenance"] == 60
    assert policy.time_limits["system"] == 25
    assert btb.Policy(durability="NORMAL") == btb.Policy(durability=1)
    assert "min_freshness_minutes=1" in repr(policy)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"min_freshness_minutes": 0}, "min_freshness_minutes 0"),
        ({"max_concurrent": 0}, "max_concurrent 0"),
        ({"timer_window_seconds": 90_000}, "90000"),
        ({"durability": "fast"}, "fast"),
        ({"durability": 7}, "7"),
        ({"time_limits": {"lunar": 5}}, "lunar"),
        ({"time_limits": {"time": -1}}, "-1"),
        ({"grace_seconds": -1.0}, "-1"),
        ({"grace_seconds": float("nan")}, "NaN"),
        ({"history_limit": 10**6}, "1000000"),
    ],
)
def test_policy_errors(options: dict[str, object], named: str) -> None:
    with pytest.raises(btb.InvalidArgumentError) as caught:
        btb.Policy(**options)  # type: ignore[arg-type]
    assert named in str(caught.value)


def test_manual_clock() -> None:
    start = datetime.datetime(2030, 1, 1, 12, 30, tzinfo=UTC)
    clock = btb.ManualClock(start)
    assert clock.now == start
    assert clock.now.tzinfo is not None
    clock.advance(datetime.timedelta(minutes=15))
    assert clock.now == start + datetime.timedelta(minutes=15)
    clock.advance(90)
    clock.advance(0.5)
    assert clock.now == start + datetime.timedelta(minutes=16, seconds=30.5)
    other_zone = datetime.datetime(2030, 1, 1, 14, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    assert btb.ManualClock(other_zone).now == start
    assert btb.ManualClock(start.timestamp()).now == start
    assert btb.ManualClock(0).now == datetime.datetime(1970, 1, 1, tzinfo=UTC)
    assert btb.ManualClock(-86_400.25).now == datetime.datetime(1969, 12, 30, 23, 59, 59, 750_000, tzinfo=UTC)


def test_manual_clock_errors() -> None:
    with pytest.raises(btb.InvalidArgumentError, match="naive"):
        btb.ManualClock(datetime.datetime(2030, 1, 1))
    with pytest.raises(TypeError):
        btb.ManualClock("2030-01-01")  # type: ignore[arg-type]
    clock = btb.ManualClock(0)
    with pytest.raises(btb.InvalidArgumentError, match="-1000 ms: time never runs backwards"):
        clock.advance(-1)
    with pytest.raises(btb.InvalidArgumentError, match="-1000 ms"):
        clock.advance(datetime.timedelta(seconds=-1))
    with pytest.raises(btb.InvalidArgumentError):
        clock.advance(float("inf"))
    assert clock.now == datetime.datetime(1970, 1, 1, tzinfo=UTC)
