"""Type stubs for the ``btb._btb`` extension module (the Rust core's binding)."""

import asyncio
import datetime
import os
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, ClassVar, TypeVar, final

from typing_extensions import Self, disjoint_base

from ._enums import (
    ApplicationTriggerResult,
    BackgroundTaskCancellationReason,
    BackgroundWorkCostValue,
    BackoffPolicy,
    CustomSystemEventTriggerRecurrence,
    Durability,
    NamePolicy,
    SystemConditionType,
    SystemTriggerType,
    TaskOutcome,
)

_T = TypeVar("_T")
_Json = dict[str, Any]

__all__ = [
    "ApplicationTrigger",
    "BackgroundActivatedEventArgs",
    "BackgroundTaskBuilder",
    "BackgroundTaskCompletedEventArgs",
    "BackgroundTaskDeferral",
    "BackgroundTaskInstance",
    "BackgroundTaskProgressEventArgs",
    "BackgroundTaskRegistration",
    "BackgroundTaskRegistrationGroup",
    "CalendarTrigger",
    "CustomSystemEventTrigger",
    "IBackgroundTrigger",
    "MaintenanceTrigger",
    "Manifest",
    "ManualClock",
    "Policy",
    "RetryPolicy",
    "RunRecord",
    "System",
    "SystemCondition",
    "SystemTrigger",
    "TaskDeclaration",
    "TimeTrigger",
    "_ENUM_VALUES",
    "_ERROR_CLASSES",
    "__version__",
    "_ctrl_c_while_closing",
    "_host_connect",
    "_interrupted",
    "_wait_python_idle",
    "default_system",
    "set_default_system",
    "signal_event",
]

__version__: str
_ERROR_CLASSES: list[tuple[int, str, str]]
_ENUM_VALUES: dict[str, list[tuple[str, int]]]

@final
class TaskDeclaration:
    """One declared entry point and the Windows task types it may use."""

    __hash__: ClassVar[None]  # type: ignore[assignment]

    def __new__(
        cls, entry_point: str, types: Iterable[str], exec: Iterable[str] | None = None
    ) -> Self: ...
    @property
    def entry_point(self) -> str: ...
    @property
    def types(self) -> list[str]: ...
    @property
    def exec(self) -> list[str] | None: ...

@final
class Manifest:
    """The app's identity and the entry points it declares (SPEC §5)."""

    __hash__: ClassVar[None]  # type: ignore[assignment]

    def __new__(
        cls,
        app_id: str,
        version: str | None = None,
        tasks: Iterable[TaskDeclaration] | None = None,
        activate: list[str] | None = None,
    ) -> Self: ...
    @staticmethod
    def load(path: str | os.PathLike[str]) -> Manifest: ...
    @staticmethod
    def from_toml(text: str) -> Manifest: ...
    @property
    def app_id(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def tasks(self) -> list[TaskDeclaration]: ...
    @property
    def path(self) -> os.PathLike[str] | None: ...
    @property
    def activate(self) -> list[str] | None:
        """How the broker starts the app for background work (SPEC §12), or None."""

@final
class Policy:
    """The system-wide knobs; omitted arguments keep the defaults (Windows' values)."""

    __hash__: ClassVar[None]  # type: ignore[assignment]

    def __new__(
        cls,
        *,
        min_freshness_minutes: int | None = None,
        timer_window_seconds: int | None = None,
        grace_seconds: float | None = None,
        max_concurrent: int | None = None,
        durability: str | int | None = None,
        time_limits: Mapping[str, int] | None = None,
        history_limit: int | None = None,
        allow_application_triggers: bool | None = None,
        storage_low_percent: int | None = None,
        activation_timeout: datetime.timedelta | float | None = None,
    ) -> Self: ...
    @property
    def min_freshness_minutes(self) -> int: ...
    @property
    def timer_window_seconds(self) -> int: ...
    @property
    def grace_seconds(self) -> float: ...
    @property
    def max_concurrent(self) -> int: ...
    @property
    def durability(self) -> Durability: ...
    @property
    def time_limits(self) -> dict[str, int]: ...
    @property
    def history_limit(self) -> int: ...
    @property
    def allow_application_triggers(self) -> bool: ...
    @property
    def storage_low_percent(self) -> int: ...
    @property
    def activation_timeout(self) -> datetime.timedelta:
        """How long a run waits for the app that the manifest's ``activate`` started to offer
        its handler before it fails, saying so (default 30 s; SPEC §12)."""

@final
class ManualClock:
    """A clock that moves only by ``advance``."""

    def __new__(cls, start: datetime.datetime | float) -> Self: ...
    @property
    def now(self) -> datetime.datetime: ...
    def advance(self, delta: datetime.timedelta | float) -> None:
        """Moves the clock forward and wakes the systems using it."""

@final
class RetryPolicy:
    """When and how often a run is tried again (SPEC §12; WorkManager's backoff criteria,
    ``setBackoffCriteria``): the delay after attempt n is ``initial_delay·2^(n−1)`` (EXPONENTIAL)
    or ``initial_delay·n`` (LINEAR), capped at ``max_delay``, moved at random by up to ``jitter``
    of itself. ``None`` arguments keep the defaults: EXPONENTIAL, 30 s, 5 h, no limit on attempts,
    failures not retried, no jitter. Delays are ``timedelta`` or seconds. The bounds (delays
    10 s – 5 h, ``max_delay`` ≥ ``initial_delay``, ``max_attempts`` ≥ 1) are checked by
    ``register``."""

    __hash__: ClassVar[None]  # type: ignore[assignment]

    def __new__(
        cls,
        backoff: BackoffPolicy | int | None = None,
        initial_delay: datetime.timedelta | float | None = None,
        max_delay: datetime.timedelta | float | None = None,
        max_attempts: int | None = None,
        retry_on_failure: bool = False,
        jitter: float = 0.0,
    ) -> Self: ...
    @property
    def backoff(self) -> BackoffPolicy: ...
    @property
    def initial_delay(self) -> datetime.timedelta: ...
    @property
    def max_delay(self) -> datetime.timedelta: ...
    @property
    def max_attempts(self) -> int | None: ...
    @property
    def retry_on_failure(self) -> bool: ...
    @property
    def jitter(self) -> float: ...

@disjoint_base
class IBackgroundTrigger:
    """The common base of every trigger; not constructible itself."""

    __hash__: ClassVar[None]  # type: ignore[assignment]

@final
class TimeTrigger(IBackgroundTrigger):
    def __new__(cls, freshness_time: int, one_shot: bool = False) -> Self: ...
    @property
    def freshness_time(self) -> int: ...
    @property
    def one_shot(self) -> bool: ...

@final
class MaintenanceTrigger(IBackgroundTrigger):
    def __new__(cls, freshness_time: int, one_shot: bool = False) -> Self: ...
    @property
    def freshness_time(self) -> int: ...
    @property
    def one_shot(self) -> bool: ...

@final
class SystemTrigger(IBackgroundTrigger):
    def __new__(cls, trigger_type: SystemTriggerType | int, one_shot: bool = False) -> Self: ...
    @property
    def trigger_type(self) -> SystemTriggerType | int: ...
    @property
    def one_shot(self) -> bool: ...

@final
class ApplicationTrigger(IBackgroundTrigger):
    def __new__(cls) -> Self: ...
    def request(
        self, arguments: Mapping[str, Any] | None = None, system: System | None = None
    ) -> ApplicationTriggerResult:
        """Fires the tasks registered with this trigger; ``arguments`` become their
        ``trigger_details``."""
    def request_async(
        self, arguments: Mapping[str, Any] | None = None, system: System | None = None
    ) -> asyncio.Future[ApplicationTriggerResult]:
        """``await trigger.request_async(...)``: ``request`` on the event loop's default executor."""

@final
class CustomSystemEventTrigger(IBackgroundTrigger):
    def __new__(
        cls, trigger_id: str, recurrence: CustomSystemEventTriggerRecurrence | int
    ) -> Self: ...
    @property
    def trigger_id(self) -> str: ...
    @property
    def recurrence(self) -> CustomSystemEventTriggerRecurrence | int: ...

@final
class CalendarTrigger(IBackgroundTrigger):
    def __new__(cls, expression: str) -> Self: ...
    @property
    def expression(self) -> str: ...
    @property
    def normalized(self) -> str:
        """The expression in systemd's normalized form ("Mon-Fri 9:30" → "Mon..Fri *-*-* 09:30:00").

        Raises InvalidArgumentError, naming the offending part, when it does not parse.
        """

@final
class SystemCondition:
    def __new__(cls, condition_type: SystemConditionType | int) -> Self: ...
    @property
    def condition_type(self) -> SystemConditionType | int: ...
    def __hash__(self) -> int: ...

@final
class BackgroundTaskBuilder:
    """A mutable description of one task; ``register`` validates it."""

    def __new__(cls) -> Self: ...
    @property
    def name(self) -> str | None: ...
    @name.setter
    def name(self, value: str | None) -> None: ...
    @property
    def task_entry_point(self) -> str | None: ...
    @task_entry_point.setter
    def task_entry_point(self, value: str | None) -> None: ...
    @property
    def task_group(self) -> BackgroundTaskRegistrationGroup | None: ...
    @task_group.setter
    def task_group(self, value: BackgroundTaskRegistrationGroup | None) -> None: ...
    @property
    def cancel_on_condition_loss(self) -> bool: ...
    @cancel_on_condition_loss.setter
    def cancel_on_condition_loss(self, value: bool) -> None: ...
    @property
    def is_network_requested(self) -> bool: ...
    @is_network_requested.setter
    def is_network_requested(self, value: bool) -> None: ...
    @property
    def name_policy(self) -> NamePolicy | int: ...
    @name_policy.setter
    def name_policy(self, value: NamePolicy | int) -> None: ...
    @property
    def trigger(self) -> IBackgroundTrigger | None: ...
    @property
    def conditions(self) -> list[SystemCondition]: ...
    @property
    def retry_policy(self) -> RetryPolicy | None:
        """Retries (SPEC §12; WorkManager's ``setBackoffCriteria``); ``None``: none on its own."""
    @retry_policy.setter
    def retry_policy(self, value: RetryPolicy | None) -> None: ...
    def set_trigger(self, trigger: IBackgroundTrigger) -> None: ...
    def add_condition(self, condition: SystemCondition) -> None: ...
    def register(self, system: System | None = None) -> BackgroundTaskRegistration: ...

@final
class System:
    """One broker: app identity and manifest, store, clock and policy. A context manager, and an
    async one: with ``async with btb.System(...)``, ``async def`` run functions and handlers run
    on the running loop; otherwise on one loop that btb owns (thread ``btb-asyncio``, joined at
    close)."""

    def __new__(
        cls,
        manifest: Manifest,
        store: str | os.PathLike[str] | None = None,
        *,
        clock: ManualClock | None = None,
        simulated: bool = False,
        policy: Policy | None = None,
        start: bool = True,
        power_supply_root: str | os.PathLike[str] | None = None,
        localtime: str | os.PathLike[str] | None = None,
    ) -> Self:
        """Opens a system. ``power_supply_root`` (default ``/sys/class/power_supply``) and
        ``localtime`` (default ``/etc/localtime``) point the platform sources elsewhere (tests)."""
    def start(self) -> None:
        """Starts a system opened with ``start=False`` (what latched meanwhile runs now)."""
    def close(self) -> None:
        """Cancels running tasks (TERMINATING), waits at most the policy's grace for them,
        releases the store and stops btb's event loop. Ctrl-C while it waits is raised once it
        is done; a second Ctrl-C exits the process at once."""
    def __enter__(self) -> Self: ...
    def __exit__(self, exc_type: type[BaseException] | None = None, *_exc_info: object) -> bool: ...
    def __aenter__(self) -> Coroutine[Any, Any, Self]:
        """Binds the system to the running loop: its coroutines run there. On the main thread,
        Ctrl-C is heard until ``aclose`` (one grace, then a second Ctrl-C exits at once)."""
    def __aexit__(self, *_exc_info: object) -> Coroutine[Any, Any, None]: ...
    def aclose(self) -> Coroutine[Any, Any, None]:
        """``close`` on the loop's default executor: the loop keeps running the coroutines that
        the close cancels (``CancelledError``) and waits for. Cancelled meanwhile, it still waits
        for the close (at most the grace). A coroutine still going after the grace is closed
        (``GeneratorExit``)."""
    @property
    def closed(self) -> bool: ...
    @property
    def app_id(self) -> str: ...
    @property
    def store_path(self) -> str: ...
    @property
    def is_broker(self) -> bool:
        """False when another process's broker held the store at open: this system is its
        client, and every call goes through that broker."""
    @property
    def broker_pid(self) -> int: ...
    @property
    def manifest(self) -> Manifest: ...
    @property
    def policy(self) -> Policy: ...
    @property
    def clock(self) -> ManualClock | None: ...
    @property
    def simulated(self) -> bool: ...
    @property
    def all_tasks(self) -> dict[uuid.UUID, BackgroundTaskRegistration]: ...
    @property
    def all_task_groups(self) -> dict[str, BackgroundTaskRegistrationGroup]: ...
    def set_background_activated(
        self, handler: Callable[[BackgroundTaskInstance], object] | type | None
    ) -> None: ...
    def register_entry_point(
        self, name: str, handler: Callable[[BackgroundTaskInstance], object] | type | None
    ) -> None: ...
    def entry_point(self, name: str) -> Callable[[_T], _T]:
        """Decorator: ``@system.entry_point("notes.Sync")`` registers the function or class."""
    def raise_event(self, trigger_type: SystemTriggerType | int) -> int: ...
    def signal_event(self, name: str) -> int:
        """Fires this system's custom-event triggers named ``name`` (1-256 bytes, no control
        character, as for ``btb.signal_event``); returns how many fired."""
    def set_state(self, condition_type: SystemConditionType | int, value: bool) -> None: ...
    def state(self, condition_type: SystemConditionType | int) -> bool | None:
        """Whether a condition holds now; ``None`` while unknown (which does not hold)."""
    def state_source(self, condition_type: SystemConditionType | int) -> str:
        """What the state is read from: ``"simulated"``, ``"statvfs"``, ... or ``"unknown"``."""
    @property
    def background_work_cost(self) -> BackgroundWorkCostValue | None: ...
    def wait_idle(self, timeout: float) -> bool:
        """True once nothing runs or is runnable and every handler was called; False on timeout.
        ``StateError`` on the event loop that the system is bound to (``async with``)."""
    def wait_idle_async(self, timeout: float) -> Coroutine[Any, Any, bool]:
        """``await system.wait_idle_async(timeout)``: ``wait_idle`` without blocking the loop."""
    def serve_activation(self, timeout: float) -> bool:
        """In an app started for background work (manifest `activate`, `BTB_ACTIVATION=1`): serve
        the runs the broker hands this process; True once none is left, False on timeout."""
    def serve_activation_async(self, timeout: float) -> Coroutine[Any, Any, bool]:
        """``serve_activation`` without blocking the loop."""

@final
class BackgroundTaskInstance:
    """One run of a registered task: what a run function receives. A run function may be an
    ``async def``: its coroutine runs on the system's event loop, the run lasts until it ends,
    and a cancellation reaches it as ``CancelledError`` after the canceled handlers ran."""

    @property
    def instance_id(self) -> uuid.UUID: ...
    @property
    def task(self) -> BackgroundTaskRegistration: ...
    @property
    def progress(self) -> int: ...
    @progress.setter
    def progress(self, value: int) -> None: ...
    @property
    def trigger_details(self) -> _Json | None: ...
    @property
    def suspended_count(self) -> int: ...
    @property
    def is_network_granted(self) -> bool: ...
    @property
    def canceled(self) -> bool: ...
    @property
    def cancellation_reason(self) -> BackgroundTaskCancellationReason | None: ...
    def get_deferral(self) -> BackgroundTaskDeferral: ...
    def add_canceled(
        self,
        handler: Callable[[BackgroundTaskInstance, BackgroundTaskCancellationReason], object],
    ) -> int: ...
    def remove_canceled(self, token: int) -> None: ...
    def wait_canceled(self, timeout: float) -> BackgroundTaskCancellationReason | None:
        """Waits (without the GIL) until canceled or ``timeout`` seconds pass."""
    def report_failure(self, message: str) -> None: ...
    @property
    def attempt(self) -> int:
        """Which attempt this run is: 1, then 2, 3… (WorkManager's ``runAttemptCount + 1``)."""
    def request_retry(
        self, after: datetime.timedelta | float | None = None, message: str | None = None
    ) -> None:
        """Asks for another attempt when the run ends (WorkManager's ``Result.retry()``)."""
    @property
    def output(self) -> _Json | None:
        """What the run hands back: a dict, ≤ 64 KiB as JSON (WorkManager's output ``Data``)."""
    @output.setter
    def output(self, value: _Json) -> None: ...

@final
class BackgroundTaskDeferral:
    """Keeps an instance running after its run function returns, until ``complete()``."""

    def complete(self) -> None: ...
    @property
    def instance(self) -> BackgroundTaskInstance: ...

@final
class BackgroundActivatedEventArgs:
    """What a task group's background-activated handler receives after the group."""

    @property
    def task_instance(self) -> BackgroundTaskInstance: ...

@final
class BackgroundTaskProgressEventArgs:
    @property
    def instance_id(self) -> uuid.UUID: ...
    @property
    def progress(self) -> int: ...

@final
class BackgroundTaskCompletedEventArgs:
    @property
    def instance_id(self) -> uuid.UUID: ...
    @property
    def status(self) -> TaskOutcome: ...
    @property
    def message(self) -> str | None: ...
    @property
    def reason(self) -> BackgroundTaskCancellationReason | None: ...
    @property
    def last_progress(self) -> int: ...
    @property
    def attempt(self) -> int: ...
    @property
    def retry_at(self) -> datetime.datetime | None:
        """With status RETRY: when the next attempt is due."""
    @property
    def output(self) -> _Json | None: ...
    def check_result(self) -> None:
        """Raises ``TaskFailedError`` / ``TaskCanceledError`` unless the run succeeded."""

@final
class RunRecord:
    """One finished run, from ``registration.history``."""

    @property
    def instance_id(self) -> uuid.UUID: ...
    @property
    def task_id(self) -> uuid.UUID: ...
    @property
    def trigger_kind(self) -> str: ...
    @property
    def trigger_details(self) -> _Json | None: ...
    @property
    def started(self) -> datetime.datetime: ...
    @property
    def ended(self) -> datetime.datetime: ...
    @property
    def status(self) -> TaskOutcome: ...
    @property
    def reason(self) -> BackgroundTaskCancellationReason | None: ...
    @property
    def message(self) -> str | None: ...
    @property
    def last_progress(self) -> int: ...
    @property
    def stdout(self) -> str | None:
        """The end (last 64 KiB) of an exec host's stdout."""
    @property
    def stderr(self) -> str | None:
        """The end (last 64 KiB) of an exec host's stderr."""
    @property
    def attempt(self) -> int: ...
    @property
    def retry_at(self) -> datetime.datetime | None:
        """With status RETRY: when the next attempt is due."""
    @property
    def output(self) -> _Json | None: ...

@final
class BackgroundTaskRegistration:
    """A registered task."""

    all_tasks: ClassVar[dict[uuid.UUID, BackgroundTaskRegistration]]
    """The default system's registrations outside any group (WinRT ``AllTasks``)."""
    all_task_groups: ClassVar[dict[str, BackgroundTaskRegistrationGroup]]
    """The default system's task groups (WinRT ``AllTaskGroups``)."""

    @property
    def task_id(self) -> uuid.UUID: ...
    @property
    def name(self) -> str: ...
    @property
    def task_entry_point(self) -> str | None: ...
    @property
    def trigger(self) -> IBackgroundTrigger: ...
    @property
    def task_group(self) -> BackgroundTaskRegistrationGroup | None: ...
    @property
    def conditions(self) -> list[SystemCondition]: ...
    @property
    def cancel_on_condition_loss(self) -> bool: ...
    @property
    def is_network_requested(self) -> bool: ...
    @property
    def retry_policy(self) -> RetryPolicy | None: ...
    @property
    def spent(self) -> bool: ...
    @property
    def next_due(self) -> datetime.datetime | None: ...
    @property
    def system(self) -> System: ...
    def unregister(self, cancel_task: bool) -> None: ...
    def request(self, arguments: Mapping[str, Any] | None = None) -> ApplicationTriggerResult: ...
    def request_async(
        self, arguments: Mapping[str, Any] | None = None
    ) -> asyncio.Future[ApplicationTriggerResult]: ...
    def add_progress(
        self,
        handler: Callable[[BackgroundTaskRegistration, BackgroundTaskProgressEventArgs], object],
    ) -> int: ...
    def remove_progress(self, token: int) -> None: ...
    def add_completed(
        self,
        handler: Callable[[BackgroundTaskRegistration, BackgroundTaskCompletedEventArgs], object],
    ) -> int: ...
    def remove_completed(self, token: int) -> None: ...
    @property
    def history(self) -> list[RunRecord]: ...
    def __hash__(self) -> int: ...

@final
class BackgroundTaskRegistrationGroup:
    """A task group ``(id, name)``; naming it in a builder creates it."""

    def __new__(cls, id: str, name: str | None = None) -> Self: ...
    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def all_tasks(self) -> dict[uuid.UUID, BackgroundTaskRegistration]: ...
    def add_background_activated(
        self,
        handler: Callable[[BackgroundTaskRegistrationGroup, BackgroundActivatedEventArgs], object],
    ) -> int:
        """Runs the group's tasks that have no entry point (WinRT ``BackgroundActivated``):
        called as ``handler(group, args)``, the run in ``args.task_instance``."""
    def remove_background_activated(self, token: int) -> None: ...
    def __hash__(self) -> int: ...

def default_system() -> System: ...
def set_default_system(system: System | None) -> None: ...
def _wait_python_idle(timeout: float) -> bool: ...
def _interrupted(mark: bool = False) -> bool: ...
def _ctrl_c_while_closing(system: System) -> None: ...
def signal_event(app_id: str, name: str) -> None:
    """Signals a custom event to the running broker of ``app_id`` (any process of this user).

    Only systems with a file store listen for it: an in-memory (``":memory:"``) system has no
    control socket; signal it with ``system.signal_event(name)`` instead."""

def _host_connect() -> BackgroundTaskInstance: ...
