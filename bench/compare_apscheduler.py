"""Register 10,000 tasks through btb and through APScheduler 3, in one run, and compare.

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
