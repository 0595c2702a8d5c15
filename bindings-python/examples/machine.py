"""Watch btb read the real machine: every state a condition can ask for, with the source it comes
from (NetworkManager, netlink, UPower, sysfs, logind, statvfs — or unknown, with the reason logged),
and every system trigger as it fires.

A system opened without ``simulated=True`` reads the machine as it is. Pull a network cable, unplug
the charger, lock the screen or change the time zone while it runs, and the triggers print.

    python examples/machine.py              # watch until Ctrl-C
    python examples/machine.py --seconds 3  # what ``make demo`` runs

So that something fires even on a machine where nothing changes (a server, CI), the demo points
the time-zone source at a localtime link of its own and replaces it once, as timedated would: a
real inotify event, a real TIME_ZONE_CHANGE trigger. ``--system-zone`` watches /etc/localtime
instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time

import btb

_print_lock = threading.Lock()


def say(text: str) -> None:
    """Prints one line: triggers print from btb's threads, so lines must not interleave."""
    with _print_lock:
        print(text, flush=True)


def show_states(system: btb.System) -> None:
    for condition in btb.SystemConditionType:
        value = system.state(condition)
        shown = {True: "yes", False: "no", None: "unknown"}[value]
        say(f"  {condition.name:<32} {shown:<8} from {system.state_source(condition)}")
    cost = system.background_work_cost
    say(f"  {'background work cost':<32} {cost.name if cost is not None else 'unknown'}")


def point_link(link: str, zone: str) -> None:
    """Replaces ``link`` with one to ``zone``, atomically (a new link renamed over the old)."""
    tmp = link + ".new"
    os.symlink(f"/usr/share/zoneinfo/{zone}", tmp)
    os.replace(tmp, link)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long (default: Ctrl-C)")
    parser.add_argument("--system-zone", action="store_true", help="watch /etc/localtime itself")
    args = parser.parse_args()
    # A missing daemon or bus is logged once on the "btb" logger, saying which states read unknown.
    logging.basicConfig(level=logging.INFO, format="log: %(name)s: %(message)s")

    manifest = btb.Manifest(
        app_id="org.example.machine",
        version="1.0",
        tasks=[btb.TaskDeclaration("machine.OnTrigger", ["systemEvent"])],
    )
    with tempfile.TemporaryDirectory(prefix="btb-machine-") as scratch:
        localtime = "/etc/localtime"
        if not args.system_zone:
            localtime = os.path.join(scratch, "localtime")
            point_link(localtime, "Etc/UTC")
        fired = threading.Event()
        with btb.System(manifest, ":memory:", localtime=localtime) as system:

            @system.entry_point("machine.OnTrigger")
            def on_trigger(instance: btb.BackgroundTaskInstance) -> None:
                name = instance.task.name
                say(f"{time.strftime('%H:%M:%S')} trigger {name} fired")
                if name == "TIME_ZONE_CHANGE":
                    fired.set()

            watched = [
                btb.SystemTriggerType.INTERNET_AVAILABLE,
                btb.SystemTriggerType.NETWORK_STATE_CHANGE,
                btb.SystemTriggerType.USER_PRESENT,
                btb.SystemTriggerType.USER_AWAY,
                btb.SystemTriggerType.SESSION_CONNECTED,
                btb.SystemTriggerType.TIME_ZONE_CHANGE,
                btb.SystemTriggerType.BACKGROUND_WORK_COST_CHANGE,
                btb.SystemTriggerType.POWER_STATE_CHANGE,
            ]
            for trigger_type in watched:
                builder = btb.BackgroundTaskBuilder()
                builder.name = trigger_type.name
                builder.task_entry_point = "machine.OnTrigger"
                builder.set_trigger(btb.SystemTrigger(trigger_type, one_shot=False))
                builder.register(system)

            say("the machine as btb reads it:")
            show_states(system)
            say(f"watching {len(watched)} system triggers" + (f" for {args.seconds:g} s" if args.seconds else " (Ctrl-C stops)"))
            if not args.system_zone:
                point_link(localtime, "Asia/Tokyo")
                say(f"replaced {localtime} -> Asia/Tokyo")
                if not fired.wait(10):
                    say("TIME_ZONE_CHANGE did not fire within 10 s")
                    return 1
            try:
                deadline = None if args.seconds is None else time.monotonic() + args.seconds
                while deadline is None or time.monotonic() < deadline:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    # Nothing to do here: btb's threads run the triggers. Sleep in slices so that
                    # Ctrl-C is seen.
                    time.sleep(min(left, 0.5) if left is not None else 0.5)
            except KeyboardInterrupt:
                pass
            say("the machine now:")
            show_states(system)
    return 0


if __name__ == "__main__":
    sys.exit(main())
