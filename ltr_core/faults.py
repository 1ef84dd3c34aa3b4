"""Crash points between file operations, for the fault-injection tests.

Every multi-step write (each atomic file write, each step of a checkpoint, the files of a finished
run, a report's swap) calls :func:`point` between its operations. In normal runs this is a no-op.
With ``LTR_FAULT_LOG=<file>`` each call appends ``<n> <name>`` to that file (to count the points of a
run); with ``LTR_FAULT_AT=<n>`` the n-th call (1-based) ends the process at once with exit code 137,
as a SIGKILL would: no cleanup, no ``finally`` blocks, no flushing.
"""

from __future__ import annotations

import os

_calls = 0


def point(name: str) -> None:
    """A place where a crash must leave the run directory consistent (see the module doc)."""
    at, log = os.environ.get("LTR_FAULT_AT"), os.environ.get("LTR_FAULT_LOG")
    if not at and not log:
        return
    global _calls
    _calls += 1
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{_calls} {name}\n")
    if at and _calls == int(at):
        os._exit(137)
