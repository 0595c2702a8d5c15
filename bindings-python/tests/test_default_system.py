"""The default system: set explicitly, or opened lazily from BTB_MANIFEST / BTB_STORE."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import MakeBuilder

import btb

MANIFEST = """\
app_id = "org.example.envapp"
version = "3"

[[task]]
entry_point = "env.Sync"
types = ["timer"]
"""

SCRIPT = textwrap.dedent(
    """
    import btb
    existing = btb.BackgroundTaskRegistration.all_tasks
    builder = btb.BackgroundTaskBuilder()
    builder.name = "from-env"
    builder.task_entry_point = "env.Sync"
    builder.set_trigger(btb.TimeTrigger(15))
    registration = builder.register()
    system = btb.default_system()
    assert system is btb.default_system()
    assert registration.system is system
    print(system.app_id, system.store_path, len(existing), len(btb.BackgroundTaskRegistration.all_tasks))
    print(sorted(btb.BackgroundTaskRegistration.all_task_groups))
    """
)


def run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def test_default_system_from_environment(tmp_path: Path) -> None:
    manifest = tmp_path / "btb.toml"
    manifest.write_text(MANIFEST)
    store = tmp_path / "env.sqlite3"
    env = {**os.environ, "BTB_MANIFEST": str(manifest), "BTB_STORE": str(store)}
    first = run(SCRIPT, env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"org.example.envapp {store} 0 1", "[]"]
    second = run(SCRIPT, env)  # persisted: the second process sees the first one's task
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[0] == f"org.example.envapp {store} 1 2"


def test_without_manifest_the_error_says_how_to_provide_one(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BTB_")}
    code = textwrap.dedent(
        """
        import btb
        try:
            btb.BackgroundTaskRegistration.all_tasks
        except btb.StateError as error:
            print(error.status, error)
        """
    )
    result = run(code, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("11 ")
    assert "BTB_MANIFEST" in result.stdout
    assert "set_default_system" in result.stdout


def test_bad_manifest_in_environment(tmp_path: Path) -> None:
    manifest = tmp_path / "btb.toml"
    manifest.write_text('app_id = "org.example.bad"\nunknown_key = 1\n')
    env = {**os.environ, "BTB_MANIFEST": str(manifest), "BTB_STORE": ":memory:"}
    code = textwrap.dedent(
        """
        import btb
        try:
            btb.default_system()
        except btb.InvalidArgumentError as error:
            print(error)
        """
    )
    result = run(code, env)
    assert result.returncode == 0, result.stderr
    assert "line 2" in result.stdout and "unknown_key" in result.stdout


def test_set_default_system(
    open_system: Callable[..., btb.System], make_builder: MakeBuilder
) -> None:
    system = open_system()
    btb.set_default_system(system)
    assert btb.default_system() is system
    registration = make_builder().register()
    assert registration.system is system
    assert btb.BackgroundTaskRegistration.all_tasks == {registration.task_id: registration}
    assert btb.BackgroundTaskRegistration.all_task_groups == {}
    # an app-made group reads the default system
    builder = make_builder()
    builder.task_group = btb.BackgroundTaskRegistrationGroup("lib")
    grouped = builder.register()
    assert btb.BackgroundTaskRegistrationGroup("lib").all_tasks == {grouped.task_id: grouped}
    btb.set_default_system(None)


def test_without_default_system_register_fails(
    make_builder: MakeBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BTB_MANIFEST", raising=False)
    btb.set_default_system(None)
    with pytest.raises(btb.StateError, match="BTB_MANIFEST"):
        make_builder().register()
