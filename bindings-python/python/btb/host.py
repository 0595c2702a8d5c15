"""The child's side of an out-of-process host (SPEC §5).

A manifest entry point declared with ``exec`` runs as a child process of the broker. Inside it::

    import btb.host

    instance = btb.host.connect()
    instance.progress = 50
    if instance.canceled: ...

``connect()`` returns a :class:`btb.BackgroundTaskInstance`, the same type a run function gets
in-process: ``instance.task`` is the registration the broker started it for (on which what needs
the app's system — ``unregister``, ``request``, handlers, ``history`` — raises
``UnsupportedError``: the app's process does that). The run ends when the process exits: exit
status 0 is ``SUCCEEDED`` unless ``report_failure`` was called; anything else is ``FAILED`` with
the status and the end of stderr. ``report_failure``, ``request_retry`` and ``output`` reach the
broker at once; a deferral keeps nothing alive. A process that never connects works too.
"""

from __future__ import annotations

from ._btb import _host_connect as connect

__all__ = ["connect"]
