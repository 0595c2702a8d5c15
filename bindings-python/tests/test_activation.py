"""Activation (SPEC §12) with real processes: btbd holds the store with no app code; a task whose
run function only the app has comes due while the app is closed; btbd starts the app that the
manifest's `activate` names (a Python script), which opens its system as a client, is handed the
run, and returns from `serve_activation` once nothing is left for it — then exits."""

from __future__ import annotations

import datetime
import json
import os
import queue
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import btb

DEADLINE = 30.0


def tool(name: str) -> Path:
    """A binary of this build: btbd and btbctl (built by the Rust suites, which `make test` runs
    first, or by `make demo`)."""
    root = Path(__file__).resolve().parents[2]
    target = Path(os.environ.get("CARGO_TARGET_DIR", root / "target"))
    for profile in ("debug", "release"):
        candidate = target / profile / name
        if candidate.exists():
            return candidate
    pytest.skip(f"*** SKIPPED: no {name} in {target} (run `cargo build -p btb-tools` first)")
    raise AssertionError("unreachable")


APP = """
import os, pathlib, btb
assert os.environ["BTB_ACTIVATION"] == "1"
manifest = btb.Manifest.load(os.environ["BTB_MANIFEST"])
with btb.System(manifest, store=os.environ["BTB_STORE"]) as system:
    client = not system.is_broker

    @system.entry_point("notes.Sync")
    def sync(instance):
        return {"served_by": os.getpid(), "details": instance.trigger_details}

    served = system.serve_activation(timeout=20)
with open(pathlib.Path(os.environ["BTB_STORE"]).with_name("app.fifo"), "w") as fifo:
    fifo.write(f"client={client} served={served}")
"""


def test_btbd_activates_a_python_app_that_exits_once_it_has_served(tmp_path: Path) -> None:
    btbd, btbctl = tool("btbd"), tool("btbctl")
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(APP))
    manifest = tmp_path / "manifest.toml"
    app_id = f"org.example.activated.p{os.getpid()}"
    manifest.write_text(
        f'app_id = "{app_id}"\nversion = "1"\n'
        f"activate = {json.dumps([sys.executable, str(app)])}\n"
        '[[task]]\nentry_point = "notes.Sync"\ntypes = ["general"]\n'
    )
    store = tmp_path / "btb.sqlite3"
    fifo = tmp_path / "app.fifo"
    os.mkfifo(fifo)
    reports: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: reports.put(fifo.read_text()), daemon=True).start()

    # The task is registered while nothing runs (the app, closed again at once).
    with btb.System(btb.Manifest.load(manifest), store=store) as system:
        builder = btb.BackgroundTaskBuilder()
        builder.name, builder.task_entry_point = "sync", "notes.Sync"
        builder.set_trigger(btb.ApplicationTrigger())
        builder.register(system)

    daemon = subprocess.Popen(
        [btbd, "--manifest", manifest, "--store", store],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert daemon.stdout is not None
        assert daemon.stdout.readline() == "btbd: ready\n"
        ctl = [btbctl, "--manifest", manifest, "--store", store]
        fired = subprocess.run([*ctl, "run", "sync"], capture_output=True, text=True, timeout=DEADLINE)
        assert fired.returncode == 0, fired.stderr
        report = reports.get(timeout=DEADLINE)
        assert report == "client=True served=True"
        history = subprocess.run(
            [*ctl, "history", "sync", "--json"], capture_output=True, text=True, timeout=DEADLINE
        )
        (run,) = json.loads(history.stdout)
        assert run["status"] == "SUCCEEDED", run
        assert run["output"]["served_by"] not in (os.getpid(), daemon.pid)
    finally:
        daemon.terminate()
        _, stderr = daemon.communicate(timeout=DEADLINE)
    assert daemon.returncode == 0, stderr
    assert "started the app for background work" in stderr


def test_the_policy_takes_an_activation_timeout(tmp_path: Path) -> None:
    """`Policy(activation_timeout=…)` mirrors the core's `activation_timeout_ms`: how long a run
    waits for the app that `activate` started (its effect is tested in core/tests/activation.rs:
    in a Python broker the import-path resolver claims every entry point, so nothing waits)."""
    policy = btb.Policy(activation_timeout=datetime.timedelta(seconds=7))
    assert policy.activation_timeout == datetime.timedelta(seconds=7)
    assert btb.Policy().activation_timeout == datetime.timedelta(seconds=30)
    assert btb.Policy(activation_timeout=2.5).activation_timeout == datetime.timedelta(seconds=2.5)
    assert policy != btb.Policy()
    assert "activation_timeout=datetime.timedelta(seconds=7)" in repr(policy)
    with pytest.raises(btb.InvalidArgumentError, match="activation_timeout .* negative"):
        btb.Policy(activation_timeout=-1)
    with pytest.raises(btb.InvalidArgumentError, match="activation_timeout .* out of range"):
        btb.Policy(activation_timeout=datetime.timedelta(days=60))
    with pytest.raises(TypeError, match="activation_timeout must be a timedelta"):
        btb.Policy(activation_timeout="7s")  # type: ignore[arg-type]
    manifest = btb.Manifest(
        app_id="org.example.timeout",
        version="1",
        tasks=[btb.TaskDeclaration("notes.Sync", ["general"])],
        activate=["/bin/true"],
    )
    with btb.System(manifest, ":memory:", simulated=True, policy=policy) as system:
        assert system.policy.activation_timeout == datetime.timedelta(seconds=7)
