"""Retries and results from Python (SPEC §12): ``RetryPolicy`` on the builder, ``request_retry`` and
``attempt`` on the instance, outputs set or returned as a dict, and what history and completed
handlers see. Deterministic: a manual clock, the simulated source and ``wait_idle``."""

from __future__ import annotations

import datetime
import logging
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import btb

APP_ID = "org.example.retry"
START = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
WAIT = 10.0
SEC = datetime.timedelta(seconds=1)

Outcome = btb.TaskOutcome


@pytest.fixture
def clock() -> btb.ManualClock:
    return btb.ManualClock(START)


@pytest.fixture
def system(clock: btb.ManualClock) -> Iterator[btb.System]:
    manifest = btb.Manifest(app_id=APP_ID, version="1", tasks=[btb.TaskDeclaration("app.Run", ["general"])])
    with btb.System(manifest, ":memory:", clock=clock, simulated=True) as system:
        yield system


def register(
    system: btb.System, policy: btb.RetryPolicy | None = None, name: str = "task"
) -> tuple[btb.BackgroundTaskRegistration, list[btb.BackgroundTaskCompletedEventArgs]]:
    builder = btb.BackgroundTaskBuilder()
    builder.name = name
    builder.task_entry_point = "app.Run"
    builder.set_trigger(btb.ApplicationTrigger())
    builder.retry_policy = policy
    registration = builder.register(system)
    done: list[btb.BackgroundTaskCompletedEventArgs] = []
    registration.add_completed(lambda reg, args: done.append(args))
    return registration, done


def idle(system: btb.System) -> None:
    assert system.wait_idle(WAIT), "the system did not become idle"


# --- the policy ----------------------------------------------------------------------------------


def test_retry_policy_defaults_properties_repr_and_equality() -> None:
    policy = btb.RetryPolicy()
    assert policy.backoff is btb.BackoffPolicy.EXPONENTIAL
    assert policy.initial_delay == datetime.timedelta(seconds=30)
    assert policy.max_delay == datetime.timedelta(hours=5)
    assert policy.max_attempts is None
    assert policy.retry_on_failure is False
    assert policy.jitter == 0.0
    assert policy == btb.RetryPolicy(
        btb.BackoffPolicy.EXPONENTIAL, datetime.timedelta(seconds=30), datetime.timedelta(hours=5), None, False, 0.0
    )
    assert repr(policy) == (
        "RetryPolicy(backoff=<BackoffPolicy.EXPONENTIAL: 0>, initial_delay=datetime.timedelta(seconds=30), "
        "max_delay=datetime.timedelta(seconds=18000), max_attempts=None, retry_on_failure=False, jitter=0.0)"
    )
    linear = btb.RetryPolicy(
        backoff=btb.BackoffPolicy.LINEAR, initial_delay=12.5, max_delay=SEC * 60, max_attempts=4, retry_on_failure=True, jitter=0.25
    )
    assert linear.backoff is btb.BackoffPolicy.LINEAR
    assert linear.initial_delay == datetime.timedelta(seconds=12.5)
    assert (linear.max_attempts, linear.retry_on_failure, linear.jitter) == (4, True, 0.25)
    assert linear != policy
    with pytest.raises(TypeError):
        hash(policy)
    with pytest.raises(AttributeError):
        policy.jitter = 0.5  # type: ignore[misc]
    assert list(btb.BackoffPolicy) == [btb.BackoffPolicy.EXPONENTIAL, btb.BackoffPolicy.LINEAR]
    assert btb.TaskOutcome.RETRY == 3


def test_what_the_policy_arguments_cannot_hold_is_refused_at_once() -> None:
    with pytest.raises(btb.InvalidArgumentError, match="unknown backoff policy value 7"):
        btb.RetryPolicy(backoff=7)
    with pytest.raises(btb.InvalidArgumentError, match="initial_delay .* is negative"):
        btb.RetryPolicy(initial_delay=-SEC)
    with pytest.raises(btb.InvalidArgumentError, match="max_attempts -1 is out of range"):
        btb.RetryPolicy(max_attempts=-1)
    with pytest.raises(btb.InvalidArgumentError, match="jitter 1.5 is outside 0–1"):
        btb.RetryPolicy(jitter=1.5)
    with pytest.raises(ValueError):  # InvalidArgumentError is a ValueError
        btb.RetryPolicy(jitter=float("nan"))
    with pytest.raises(TypeError, match="timedelta or a number of seconds"):
        btb.RetryPolicy(initial_delay="30s")  # type: ignore[arg-type]


def test_the_policy_bounds_are_checked_at_registration(system: btb.System) -> None:
    builder = btb.BackgroundTaskBuilder()
    builder.name = "task"
    builder.task_entry_point = "app.Run"
    builder.set_trigger(btb.ApplicationTrigger())
    assert builder.retry_policy is None
    cases = [
        (btb.RetryPolicy(initial_delay=5), "initial delay 5000 ms is outside 10 s – 5 h"),
        (btb.RetryPolicy(initial_delay=datetime.timedelta(hours=6)), "initial delay 21600000 ms"),
        (btb.RetryPolicy(initial_delay=60, max_delay=30), "max delay 30000 ms is outside the initial delay"),
        (btb.RetryPolicy(max_attempts=0), "max attempts is 0"),
    ]
    for policy, message in cases:
        builder.retry_policy = policy
        assert builder.retry_policy == policy
        with pytest.raises(btb.InvalidArgumentError, match=message):
            builder.register(system)
    assert system.all_tasks == {}
    policy = btb.RetryPolicy(initial_delay=10, max_attempts=3)
    builder.retry_policy = policy
    registration = builder.register(system)
    assert registration.retry_policy == policy
    builder.retry_policy = None
    assert builder.retry_policy is None
    assert builder.register(system).retry_policy is None


# --- retries -------------------------------------------------------------------------------------


def test_a_run_that_asks_runs_again_after_its_delay_with_the_same_details(
    system: btb.System, clock: btb.ManualClock
) -> None:
    seen: list[tuple[int, Any]] = []

    def run(instance: btb.BackgroundTaskInstance) -> None:
        seen.append((instance.attempt, instance.trigger_details))
        if instance.attempt == 1:
            instance.request_retry(message="server busy")

    system.register_entry_point("app.Run", run)
    registration, done = register(system, btb.RetryPolicy(btb.BackoffPolicy.LINEAR, initial_delay=10))
    registration.request({"file": "a"})
    idle(system)
    (first,) = done
    assert (first.status, first.attempt, first.message) == (Outcome.RETRY, 1, "server busy")
    assert first.retry_at == START + 10 * SEC
    with pytest.raises(btb.TaskFailedError, match="server busy"):
        first.check_result()

    clock.advance(9.999)
    idle(system)
    assert len(seen) == 1  # not before its delay
    clock.advance(0.001)
    idle(system)
    assert seen == [(1, {"file": "a"}), (2, {"file": "a"})]
    second = done[1]
    assert (second.status, second.attempt, second.retry_at) == (Outcome.SUCCEEDED, 2, None)
    history = registration.history
    assert [(r.status, r.attempt) for r in history] == [(Outcome.RETRY, 1), (Outcome.SUCCEEDED, 2)]
    assert history[0].retry_at == START + 10 * SEC
    assert history[0].retry_at.tzinfo is datetime.timezone.utc
    assert history[1].retry_at is None


def test_after_replaces_the_delay_and_the_default_policy_applies_without_one(
    system: btb.System, clock: btb.ManualClock
) -> None:
    attempts: list[int] = []

    def run(instance: btb.BackgroundTaskInstance) -> None:
        attempts.append(instance.attempt)
        if instance.attempt == 1:
            instance.request_retry(after=datetime.timedelta(minutes=2))
        elif instance.attempt == 2:
            instance.request_retry()  # the default policy: exponential from 30 s

    system.register_entry_point("app.Run", run)
    registration, done = register(system)
    registration.request()
    idle(system)
    assert done[0].retry_at == START + datetime.timedelta(minutes=2)
    clock.advance(datetime.timedelta(minutes=2))
    idle(system)
    assert done[1].retry_at == START + datetime.timedelta(minutes=2) + 2 * 30 * SEC  # 30 s · 2^(2−1)
    assert attempts == [1, 2]


def test_request_retry_checks_its_arguments(system: btb.System) -> None:
    errors: list[BaseException] = []

    def run(instance: btb.BackgroundTaskInstance) -> None:
        for call in (
            lambda: instance.request_retry(after=-SEC),
            lambda: instance.request_retry(after="soon"),  # type: ignore[arg-type]
            lambda: instance.request_retry(message=b"bytes"),  # type: ignore[arg-type]
        ):
            try:
                call()
            except Exception as error:  # noqa: BLE001 - collected for the asserts below
                errors.append(error)

    system.register_entry_point("app.Run", run)
    registration, done = register(system)
    registration.request()
    idle(system)
    assert [type(e) for e in errors] == [btb.InvalidArgumentError, TypeError, TypeError]
    assert done[0].status is Outcome.SUCCEEDED  # none of them asked for a retry


def test_max_attempts_gives_up(system: btb.System, clock: btb.ManualClock) -> None:
    system.register_entry_point("app.Run", lambda instance: instance.request_retry(message=f"busy {instance.attempt}"))
    registration, done = register(system, btb.RetryPolicy(initial_delay=10, max_attempts=2))
    registration.request()
    idle(system)
    clock.advance(10)
    idle(system)
    assert [(d.status, d.attempt) for d in done] == [(Outcome.RETRY, 1), (Outcome.FAILED, 2)]
    assert done[1].message == "gave up after 2 attempts: busy 2"
    assert done[1].retry_at is None
    clock.advance(datetime.timedelta(hours=1))
    idle(system)
    assert len(registration.history) == 2


def test_failures_are_retried_under_retry_on_failure(
    system: btb.System, clock: btb.ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    def run(instance: btb.BackgroundTaskInstance) -> None:
        if instance.attempt == 1:
            raise OSError("disk not mounted")

    system.register_entry_point("app.Run", run)
    registration, done = register(system, btb.RetryPolicy(initial_delay=10, retry_on_failure=True))
    with caplog.at_level(logging.ERROR, logger="btb"):  # the traceback is logged
        registration.request()
        idle(system)
    assert "OSError: disk not mounted" in caplog.text
    assert (done[0].status, done[0].message) == (Outcome.RETRY, "OSError: disk not mounted")
    clock.advance(10)
    idle(system)
    assert (done[1].status, done[1].attempt) == (Outcome.SUCCEEDED, 2)


# --- outputs -------------------------------------------------------------------------------------


def test_a_returned_dict_is_the_output_in_history_and_completion(system: btb.System) -> None:
    def run(instance: btb.BackgroundTaskInstance) -> dict[str, Any]:
        assert instance.output is None
        return {"files": 3, "names": ["a", "b"], "ok": True, "ratio": 0.5}

    system.register_entry_point("app.Run", run)
    registration, done = register(system)
    registration.request()
    idle(system)
    expected = {"files": 3, "names": ["a", "b"], "ok": True, "ratio": 0.5}
    assert done[0].status is Outcome.SUCCEEDED
    assert done[0].output == expected
    assert registration.history[0].output == expected


def test_output_set_on_the_instance_and_kept_by_returning_none(system: btb.System) -> None:
    read_back: list[Any] = []

    def run(instance: btb.BackgroundTaskInstance) -> None:
        instance.output = {"step": 1}
        instance.output = {"step": 2}  # the last one wins
        read_back.append(instance.output)

    system.register_entry_point("app.Run", run)
    registration, done = register(system)
    registration.request()
    idle(system)
    assert read_back == [{"step": 2}]
    assert done[0].output == {"step": 2}
    assert registration.history[0].output == {"step": 2}


def test_async_run_functions_return_their_output(system: btb.System) -> None:
    async def run(instance: btb.BackgroundTaskInstance) -> dict[str, int]:
        return {"attempt": instance.attempt}

    system.register_entry_point("app.Run", run)
    registration, done = register(system)
    registration.request()
    idle(system)
    assert done[0].output == {"attempt": 1}


def test_output_is_validated(system: btb.System) -> None:
    errors: list[BaseException] = []

    def run(instance: btb.BackgroundTaskInstance) -> None:
        for value in ([1, 2], None, "text", {"big": "x" * (64 * 1024)}, {"nan": float("nan")}, {1: "one"}, {"when": object()}):
            try:
                instance.output = value  # type: ignore[assignment]
            except Exception as error:  # noqa: BLE001 - collected for the asserts below
                errors.append(error)
        try:
            del instance.output  # type: ignore[misc]
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    system.register_entry_point("app.Run", run)
    registration, done = register(system)
    registration.request()
    idle(system)
    kinds = [type(e) for e in errors]
    assert kinds == [
        btb.InvalidArgumentError,
        btb.InvalidArgumentError,
        btb.InvalidArgumentError,
        btb.InvalidArgumentError,
        btb.InvalidArgumentError,
        TypeError,
        TypeError,
        AttributeError,  # it cannot be deleted
    ]
    assert "must be a dict (a JSON object), not list" in str(errors[0])
    assert "the limit is 65536 bytes" in str(errors[3])
    assert done[0].status is Outcome.SUCCEEDED and done[0].output is None


def test_returning_anything_else_fails_the_run(system: btb.System, caplog: pytest.LogCaptureFixture) -> None:
    results: list[Any] = [[1, 2], {"big": "x" * (64 * 1024)}]
    system.register_entry_point("app.Run", lambda instance: results.pop(0))
    registration, done = register(system)
    with caplog.at_level(logging.ERROR, logger="btb"):
        registration.request()
        idle(system)
        registration.request()
        idle(system)
    assert [d.status for d in done] == [Outcome.FAILED, Outcome.FAILED]
    assert done[0].message == (
        "TypeError: the run function returned a list: it may return a dict (the run's output) or None"
    )
    assert done[1].message is not None and "the limit is 65536 bytes" in done[1].message
    assert done[1].message.startswith("btb._errors.InvalidArgumentError: a run's output is 65546 bytes")
    assert [d.output for d in done] == [None, None]
    assert len([r for r in caplog.records if r.name == "btb"]) == 2  # each failure is logged


def test_retry_with_output_and_a_returned_dict(system: btb.System, clock: btb.ManualClock) -> None:
    def run(instance: btb.BackgroundTaskInstance) -> dict[str, int] | None:
        if instance.attempt == 1:
            instance.request_retry(after=10 * SEC)
            return {"partial": 1}
        return {"done": instance.attempt}

    system.register_entry_point("app.Run", run)
    registration, done = register(system)
    registration.request()
    idle(system)
    clock.advance(10)
    idle(system)
    assert [(d.status, d.output) for d in done] == [(Outcome.RETRY, {"partial": 1}), (Outcome.SUCCEEDED, {"done": 2})]
    assert [r.output for r in registration.history] == [{"partial": 1}, {"done": 2}]


# --- an exec host --------------------------------------------------------------------------------

HOST = textwrap.dedent(
    """
    import datetime
    import btb, btb.host

    instance = btb.host.connect()
    assert instance.output is None
    try:
        instance.output = [1]
    except btb.InvalidArgumentError:
        pass
    else:
        raise AssertionError("a list was accepted as output")
    instance.output = {"attempt": instance.attempt}
    assert instance.output == {"attempt": instance.attempt}
    if instance.attempt == 1:
        instance.request_retry(after=datetime.timedelta(seconds=10), message="host busy")
    """
)


def test_an_exec_host_asks_for_a_retry_and_hands_back_output(tmp_path: Path, clock: btb.ManualClock) -> None:
    script = tmp_path / "host.py"
    script.write_text(HOST)
    manifest = btb.Manifest(
        app_id="org.example.pyretryhost",
        version="1",
        tasks=[btb.TaskDeclaration("app.Host", ["general"], exec=[sys.executable, str(script)])],
    )
    with btb.System(manifest, tmp_path / "btb.sqlite3", clock=clock, simulated=True) as system:
        builder = btb.BackgroundTaskBuilder()
        builder.name = "host"
        builder.task_entry_point = "app.Host"
        builder.set_trigger(btb.ApplicationTrigger())
        registration = builder.register(system)
        done: list[btb.BackgroundTaskCompletedEventArgs] = []
        ended = threading.Event()

        def completed(reg: btb.BackgroundTaskRegistration, args: btb.BackgroundTaskCompletedEventArgs) -> None:
            done.append(args)
            ended.set()

        registration.add_completed(completed)
        registration.request()
        assert ended.wait(30)
        ended.clear()
        assert (done[0].status, done[0].attempt, done[0].message) == (Outcome.RETRY, 1, "host busy"), done[0].message
        assert done[0].output == {"attempt": 1}
        assert done[0].retry_at == START + 10 * SEC
        clock.advance(10)
        assert ended.wait(30)
        assert (done[1].status, done[1].attempt, done[1].output) == (Outcome.SUCCEEDED, 2, {"attempt": 2})
        assert [r.output for r in registration.history] == [{"attempt": 1}, {"attempt": 2}]
