"""Store errors (SPEC §7): a corrupt file or a store in use is a StoreError naming the path, and
nothing is overwritten."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
from conftest import MakeBuilder

import btb


def test_corrupt_file_is_store_error_and_left_untouched(
    open_system: Callable[..., btb.System], tmp_path: Path
) -> None:
    path = tmp_path / "corrupt.sqlite3"
    garbage = os.urandom(4096) + b"this is not a SQLite database" * 100
    path.write_bytes(garbage)
    with pytest.raises(btb.StoreError) as caught:
        open_system(store=path)
    assert caught.value.status == 9
    assert str(path) in str(caught.value)
    assert "untouched" in str(caught.value)
    assert path.read_bytes() == garbage


def test_foreign_database_is_store_error(open_system: Callable[..., btb.System], tmp_path: Path) -> None:
    path = tmp_path / "foreign.sqlite3"
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
        connection.commit()
    before = path.read_bytes()
    with pytest.raises(btb.StoreError, match="not a btb store"):
        open_system(store=path)
    assert path.read_bytes() == before


def test_newer_schema_is_store_error(
    open_system: Callable[..., btb.System], store_path: Path
) -> None:
    open_system().close()
    with closing(sqlite3.connect(store_path)) as connection:
        connection.execute("UPDATE btb_schema SET version = 999")
        connection.commit()
    with pytest.raises(btb.StoreError, match="schema version 999"):
        open_system()


def test_a_second_system_on_a_store_is_a_client_of_the_first(
    open_system: Callable[..., btb.System], make_builder: MakeBuilder
) -> None:
    first = open_system()
    make_builder().register(first)
    second = open_system()
    assert first.is_broker and not second.is_broker
    assert second.broker_pid == os.getpid()
    assert [r.name for r in second.all_tasks.values()] == ["sync"]
    make_builder("more").register(second)
    assert sorted(r.name for r in first.all_tasks.values()) == ["more", "sync"]
    with pytest.raises(btb.UnsupportedError, match="client"):
        second.wait_idle(0)
    # The broker closes: the client takes the store over on its next call, losing nothing.
    first.close()
    assert sorted(r.name for r in second.all_tasks.values()) == ["more", "sync"]
    assert second.is_broker


def test_store_file_permissions(open_system: Callable[..., btb.System], store_path: Path) -> None:
    open_system()
    assert store_path.stat().st_mode & 0o777 == 0o600
    assert store_path.parent.stat().st_mode & 0o777 == 0o700


def test_default_store_location_uses_xdg_state_home(
    open_system: Callable[..., btb.System], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    system = open_system(store=None)
    assert system.store_path == str(tmp_path / "xdg" / "btb" / "org.example.notes" / "btb.sqlite3")
