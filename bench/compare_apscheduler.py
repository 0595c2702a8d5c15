"""Register 10,000 tasks through btb and through APScheduler 3, in one run, and compare; then
measure how long a task asked to run now takes to start (btb `ApplicationTrigger.request` vs an
APScheduler job added for "now"), next to Python's own limit (a `threading.Event` hand-off).

btb:         BackgroundTaskBuilder + TimeTrigger(one_shot=True) + register(), on a ":memory:" store
             and on a durable SQLite file (durability FULL and NORMAL).
APScheduler: add_job(func, "date", run_date=...) on a started BackgroundScheduler, with a
             MemoryJobStore and with a SQLAlchemyJobStore on a SQLite file.

Each timed call is the whole "describe and register one task" unit on both sides (build the task
and its trigger, then register / add_job). Prints per-call median and p99 and the ratios.

    .venv/bin/python bench/compare_apscheduler.py [--count 10000] [--dir DIR]

Needs btb (bindings-python, installed) and APScheduler 3 with SQLAlchemy.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import logging
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import apscheduler
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler

import btb

RUN_DATE = datetime.datetime(2100, 1, 1, tzinfo=datetime.timezone.utc)


def task() -> None:
    """The job APScheduler would run (never, here: it is due in 2100)."""


@dataclass
class Result:
    name: str
    samples_ns: list[int]
    wall_s: float

    @property
    def median_us(self) -> float:
        return statistics.median(self.samples_ns) / 1000

    @property
    def p99_us(self) -> float:
        ordered = sorted(self.samples_ns)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000

    @property
    def rate(self) -> float:
        return len(self.samples_ns) / self.wall_s


def measure(name: str, count: int, call: Callable[[int], object]) -> Result:
    samples = [0] * count
    gc.collect()
    gc.disable()  # no collector pauses inside the timed calls, on either side
    try:
        start = time.perf_counter()
        for i in range(count):
            t0 = time.perf_counter_ns()
            call(i)
            samples[i] = time.perf_counter_ns() - t0
        wall = time.perf_counter() - start
    finally:
        gc.enable()
    return Result(name, samples, wall)


@contextmanager
def btb_system(store: str | Path, durability: str) -> Iterator[btb.System]:
    manifest = btb.Manifest(
        app_id="org.example.bench", version="1", tasks=[btb.TaskDeclaration("bench.Task", ["timer"])]
    )
    with btb.System(manifest, store, policy=btb.Policy(durability=durability)) as system:
        yield system


def bench_btb(name: str, count: int, store: str | Path, durability: str = "full") -> Result:
    with btb_system(store, durability) as system:

        def register(i: int) -> object:
            builder = btb.BackgroundTaskBuilder()
            builder.name = f"task-{i}"
            builder.task_entry_point = "bench.Task"
            builder.set_trigger(btb.TimeTrigger(15, one_shot=True))
            return builder.register(system)

        result = measure(name, count, register)
        assert len(system.all_tasks) == count
    return result


def bench_apscheduler(name: str, count: int, jobstore: object) -> Result:
    scheduler = BackgroundScheduler(jobstores={"default": jobstore}, timezone=datetime.timezone.utc)
    scheduler.start()
    try:

        def add(i: int) -> object:
            return scheduler.add_job(task, "date", run_date=RUN_DATE, id=f"task-{i}", name=f"task-{i}")

        result = measure(name, count, add)
        assert len(scheduler.get_jobs()) == count
    finally:
        scheduler.shutdown(wait=True)
    return result


LATENCY_SAMPLES = 1000


def latency_samples(name: str, start_one: Callable[[threading.Event, list[int]], object], settle: Callable[[], object]) -> Result:
    """Each sample: t0, ask for a run, the run records when it starts; `settle` waits for quiet."""
    samples = []
    started: list[int] = []
    wall = time.perf_counter()
    for _ in range(LATENCY_SAMPLES):
        event = threading.Event()
        started.clear()
        time.sleep(0.0003)  # let the worker's CPU go idle, as a real request would find it
        t0 = time.perf_counter_ns()
        start_one(event, started)
        if not event.wait(10):
            raise RuntimeError(f"{name}: the run did not start within 10 s")
        samples.append(started[0] - t0)
        settle()
    return Result(name, samples, time.perf_counter() - wall)


def latency_event_handoff() -> Result:
    """The Python limit: a thread blocked on threading.Event, woken by set()."""
    go = threading.Event()
    box: dict[str, object] = {}

    def waiter() -> None:
        while True:
            go.wait()
            go.clear()
            if box.get("stop"):
                return
            started = box["started"]
            assert isinstance(started, list)
            started.append(time.perf_counter_ns())
            done = box["event"]
            assert isinstance(done, threading.Event)
            done.set()

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()

    def start_one(event: threading.Event, started: list[int]) -> None:
        box["event"], box["started"] = event, started
        go.set()

    result = latency_samples("threading.Event hand-off (limit)", start_one, lambda: None)
    box["stop"] = True
    go.set()
    thread.join()
    return result


def latency_btb() -> Result:
    manifest = btb.Manifest(
        app_id="org.example.bench", version="1", tasks=[btb.TaskDeclaration("bench.Now", ["general"])]
    )
    box: dict[str, object] = {}
    with btb.System(manifest, ":memory:") as system:

        @system.entry_point("bench.Now")
        def run(instance: object) -> None:
            started = box["started"]
            assert isinstance(started, list)
            started.append(time.perf_counter_ns())
            event = box["event"]
            assert isinstance(event, threading.Event)
            event.set()

        trigger = btb.ApplicationTrigger()
        builder = btb.BackgroundTaskBuilder()
        builder.name = "now"
        builder.task_entry_point = "bench.Now"
        builder.set_trigger(trigger)
        builder.register(system)

        def start_one(event: threading.Event, started: list[int]) -> None:
            box["event"], box["started"] = event, started
            assert trigger.request(system=system) == btb.ApplicationTriggerResult.ALLOWED

        return latency_samples("btb request -> run starts", start_one, lambda: system.wait_idle(10))


_APS_BOX: dict[str, object] = {}


def _aps_job() -> None:
    """Module level, no arguments: the SQLAlchemy store pickles a textual reference to it."""
    started = _APS_BOX["started"]
    assert isinstance(started, list)
    started.append(time.perf_counter_ns())
    event = _APS_BOX["event"]
    assert isinstance(event, threading.Event)
    event.set()


def latency_apscheduler(name: str, jobstore: object) -> Result:
    scheduler = BackgroundScheduler(jobstores={"default": jobstore}, timezone=datetime.timezone.utc)
    scheduler.start()
    try:

        def start_one(event: threading.Event, started: list[int]) -> None:
            _APS_BOX["event"], _APS_BOX["started"] = event, started
            scheduler.add_job(_aps_job)  # no trigger: run now

        return latency_samples(name, start_one, lambda: None)
    finally:
        scheduler.shutdown(wait=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10_000, help="tasks per variant (default 10000)")
    parser.add_argument("--dir", type=Path, default=None, help="directory for the SQLite files (default: a temp dir)")
    args = parser.parse_args()
    logging.getLogger("apscheduler").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="btb-bench-", dir=args.dir) as directory:
        files = Path(directory)
        print(
            f"registering {args.count} tasks per variant; btb {btb.__version__}, "
            f"APScheduler {apscheduler.__version__}, Python {sys.version.split()[0]}; files in {files}"
        )
        results = [
            bench_btb("btb :memory:", args.count, ":memory:"),
            bench_btb("btb file, durability FULL", args.count, files / "btb-full.sqlite3", "full"),
            bench_btb("btb file, durability NORMAL", args.count, files / "btb-normal.sqlite3", "normal"),
            bench_apscheduler("APScheduler MemoryJobStore", args.count, MemoryJobStore()),
            bench_apscheduler(
                "APScheduler SQLAlchemyJobStore (SQLite file)",
                args.count,
                SQLAlchemyJobStore(url=f"sqlite:///{files / 'apscheduler.sqlite3'}"),
            ),
        ]

    width = max(len(r.name) for r in results)
    print(f"\n{'variant':<{width}}  {'median µs':>10}  {'p99 µs':>10}  {'calls/s':>10}")
    for r in results:
        print(f"{r.name:<{width}}  {r.median_us:>10.1f}  {r.p99_us:>10.1f}  {r.rate:>10.0f}")

    by_name = {r.name: r for r in results}
    comparisons = [
        ("APScheduler memory / btb :memory:", "APScheduler MemoryJobStore", "btb :memory:"),
        (
            "APScheduler SQLite / btb durable FULL",
            "APScheduler SQLAlchemyJobStore (SQLite file)",
            "btb file, durability FULL",
        ),
        (
            "APScheduler SQLite / btb durable NORMAL",
            "APScheduler SQLAlchemyJobStore (SQLite file)",
            "btb file, durability NORMAL",
        ),
    ]
    print("\nratios (> 1: btb is faster per call)")
    for label, slower, faster in comparisons:
        a, b = by_name[slower], by_name[faster]
        print(f"  {label:<40} median {a.median_us / b.median_us:7.1f}x   p99 {a.p99_us / b.p99_us:7.1f}x")

    print(f"\nstart latency, {LATENCY_SAMPLES} samples each: asked to run now -> the function starts")
    with tempfile.TemporaryDirectory(prefix="btb-bench-", dir=args.dir) as directory:
        lat = [
            latency_event_handoff(),
            latency_btb(),
            latency_apscheduler("APScheduler job for now, MemoryJobStore", MemoryJobStore()),
            latency_apscheduler(
                "APScheduler job for now, SQLAlchemyJobStore",
                SQLAlchemyJobStore(url=f"sqlite:///{Path(directory) / 'apscheduler-now.sqlite3'}"),
            ),
        ]
    width = max(len(r.name) for r in lat)
    print(f"{'variant':<{width}}  {'median µs':>10}  {'p99 µs':>10}")
    for r in lat:
        print(f"{r.name:<{width}}  {r.median_us:>10.1f}  {r.p99_us:>10.1f}")
    limit, ours = lat[0], lat[1]
    print(f"  btb / threading.Event limit: median {ours.median_us / limit.median_us:.1f}x, p99 {ours.p99_us / limit.p99_us:.1f}x")
    for r in lat[2:]:
        print(f"  {r.name} / btb: median {r.median_us / ours.median_us:.1f}x, p99 {r.p99_us / ours.p99_us:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
