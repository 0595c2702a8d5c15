"""The package itself: version, stubs, the installed abi3 wheel, the exit hook, GC support."""

from __future__ import annotations

import gc
import importlib.metadata
import logging
import re
import subprocess
import sys
import sysconfig
import textwrap
import weakref
from pathlib import Path

import pytest

import btb

ROOT = Path(__file__).resolve().parents[2]


def workspace_version() -> str:
    text = (ROOT / "Cargo.toml").read_text()
    section = text.split("[workspace.package]", 1)[1].split("\n[", 1)[0]
    match = re.search(r'^version\s*=\s*"([^"]+)"', section, re.MULTILINE)
    assert match, "no version in [workspace.package]"
    return match.group(1)


def test_version_is_the_workspace_version() -> None:
    assert btb.__version__ == workspace_version()
    assert importlib.metadata.version("btb") == workspace_version()


def test_imports_the_installed_wheel() -> None:
    """The tests run against the installed abi3 wheel, with stubs and py.typed, not the tree."""
    installed = Path(btb.__file__).resolve().parent
    site = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    assert installed.parent in site, (
        f"btb is imported from {installed}, not from site-packages: build and install the wheel "
        "(maturin build --release -o dist && pip install --force-reinstall dist/btb-*.whl)"
    )
    distribution = importlib.metadata.distribution("btb")
    wheel = distribution.read_text("WHEEL") or ""
    assert re.search(r"^Tag: cp39-abi3-", wheel, re.MULTILINE), wheel
    files = {str(f) for f in distribution.files or []}
    assert {"btb/__init__.py", "btb/_btb.pyi", "btb/py.typed", "btb/_btb.abi3.so"} <= files
    for name in ("_btb.pyi", "py.typed", "_btb.abi3.so"):
        assert (installed / name).is_file()


def test_stubs_match_the_runtime(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "btb"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=55,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_exit_hook_closes_open_systems(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import atexit
        systems = []

        @atexit.register  # registered before btb's hook, so it runs after it
        def report():
            print(all(system.closed for system in systems), len(systems))

        import btb
        manifest = btb.Manifest("org.example.exit")
        systems.append(btb.System(manifest, {str(tmp_path / "exit.sqlite3")!r}))
        systems.append(btb.System(manifest, ":memory:"))
        btb.set_default_system(systems[0])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True 2"


def test_handler_cycles_are_collected(tmp_path: Path) -> None:
    """Handlers that refer back to their system (a cycle through Rust) are garbage-collected,
    and collecting the system releases its store."""
    manifest = btb.Manifest("org.example.gc", "1", [btb.TaskDeclaration("gc.Task", ["timer"])])
    path = tmp_path / "gc.sqlite3"
    system = btb.System(manifest, path)
    group = btb.BackgroundTaskRegistrationGroup("lib")
    system.set_background_activated(lambda instance: system)
    builder = btb.BackgroundTaskBuilder()
    builder.name = "cycle"
    builder.set_trigger(btb.TimeTrigger(15))
    builder.task_group = group
    registration = builder.register(system)
    listed = system.all_task_groups["lib"]
    # Group handlers are process-wide (a group's handlers apply in every system): one that refers
    # to the system keeps it alive until it is removed, as an atexit function would.
    token = listed.add_background_activated(lambda group, args: (listed, builder, registration))
    listed.remove_background_activated(token)
    ref = weakref.ref(system)
    del system, group, builder, registration, listed
    gc.collect()
    assert ref() is None
    with btb.System(manifest, path) as reopened:  # the store was released
        assert len(reopened.all_task_groups["lib"].all_tasks) == 1


def test_registration_equality_and_hash(tmp_path: Path) -> None:
    manifest = btb.Manifest("org.example.eq", "1", [btb.TaskDeclaration("eq.Task", ["timer"])])
    with btb.System(manifest, ":memory:") as system:
        builder = btb.BackgroundTaskBuilder()
        builder.name = "a"
        builder.task_entry_point = "eq.Task"
        builder.set_trigger(btb.TimeTrigger(15))
        registration = builder.register(system)
        again = system.all_tasks[registration.task_id]
        assert again == registration and hash(again) == hash(registration)
        assert again is not registration
        assert {registration, again} == {registration}
        assert registration != builder.register(system)
        assert registration != "a"  # type: ignore[comparison-overlap]
        assert repr(registration) == f"BackgroundTaskRegistration(task_id={registration.task_id!r}, name='a')"


def test_forked_child_gets_state_error(tmp_path: Path) -> None:
    """A system used in a forked child fails cleanly (SPEC §8), and the child's exit hook does
    not trip over the parent's systems."""
    code = textwrap.dedent(
        f"""
        import os, sys
        import btb
        manifest = btb.Manifest("org.example.fork")
        system = btb.System(manifest, {str(tmp_path / "fork.sqlite3")!r})
        pid = os.fork()
        if pid == 0:
            try:
                system.all_tasks
            except btb.StateError as error:
                print("child", error.status, "forked child" in str(error), flush=True)
            sys.exit(0)  # runs the exit hook in the child
        _, status = os.waitpid(pid, 0)
        print("parent", os.waitstatus_to_exitcode(status), len(system.all_tasks))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["child 11 True", "parent 0 0"]
    assert result.stderr == ""


def test_dropping_a_handler_may_call_back_into_btb(tmp_path: Path) -> None:
    """Handlers are released outside btb's locks: a finalizer that calls btb does not deadlock."""
    manifest = btb.Manifest("org.example.drop")
    with btb.System(manifest, tmp_path / "drop.sqlite3") as system:
        btb.set_default_system(system)
        group = btb.BackgroundTaskRegistrationGroup("lib")
        calls: list[int] = []

        class Handler:
            def __call__(self, *args: object) -> None:
                pass

            def __del__(self) -> None:
                calls.append(group.add_background_activated(print))
                system.set_background_activated(print)

        group.remove_background_activated(group.add_background_activated(Handler()))
        system.set_background_activated(Handler())
        system.set_background_activated(None)
        assert len(calls) == 2
        for token in calls:
            group.remove_background_activated(token)
        btb.set_default_system(None)


def test_core_log_records_reach_the_btb_logger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The core logs through Rust's `log`; pyo3-log hands the records to `logging` ("btb")."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "no-such-dir"))  # no control socket here
    manifest = btb.Manifest("org.example.log", "1", [btb.TaskDeclaration("e.Run", ["general"])])
    with caplog.at_level(logging.WARNING, logger="btb"):
        with btb.System(manifest, tmp_path / "log.sqlite3"):
            pass
    messages = [r.getMessage() for r in caplog.records if r.name == "btb"]
    assert any("other processes (clients, btbctl, signal_event) will not reach this system" in m for m in messages), messages


def test_import_btb_makes_btb_host_available() -> None:
    """A fresh interpreter: `import btb` alone, then `btb.host` (the exec host's side)."""
    result = subprocess.run(
        [sys.executable, "-c", "import btb; print(callable(btb.host.connect))"],
        capture_output=True,
        text=True,
        timeout=55,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True"]
