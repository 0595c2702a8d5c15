"""The child's side of an out-of-process host (SPEC §5).

A manifest entry point declared with ``exec`` runs as a child process of the broker. Inside it::

    import btb.host

    instance = btb.host.connect()
    instance.progress = 50
    if instance.canceled: ...

``connect()`` returns a :class:`HostInstance` with the surface of
:class:`btb.BackgroundTaskInstance`. The run ends when the process exits: exit status 0 is
``SUCCEEDED`` unless ``report_failure`` was called; anything else is ``FAILED`` with the status and
the end of stderr. A process that never connects works too.
"""

from __future__ import annotations

from ._btb import HostInstance, HostInstanceDeferral
from ._btb import _host_connect as connect

__all__ = ["HostInstance", "HostInstanceDeferral", "connect"]
