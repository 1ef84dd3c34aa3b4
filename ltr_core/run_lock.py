"""One writer per run directory (:func:`acquire_run_lock`, ``fcntl.flock`` on ``<run_dir>/.lock``) and
moving a run aside instead of deleting it (:func:`archive_run_dir`)."""

from __future__ import annotations

import os
import socket
from pathlib import Path


class RunBusy(RuntimeError):
    """Another live process holds this run directory's lock."""


_HELD_LOCKS: dict[str, int] = {}  # resolved run dir -> open lock-file descriptor (this process)


def acquire_run_lock(path: str | os.PathLike) -> None:
    """Make this process the one writer of the run directory ``path`` (re-entrant within a process).

    ``fcntl.flock`` on ``<path>/.lock``: the kernel releases it when the holder dies (also on SIGKILL),
    so a crashed run never blocks the next one. The file records the holder (pid, host, start time,
    command); a second process gets :class:`RunBusy` naming it. No-op where ``fcntl`` is missing.
    """
    key = str(Path(path).resolve())
    if key in _HELD_LOCKS:
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        return
    Path(path).mkdir(parents=True, exist_ok=True)
    lock_path = Path(path) / ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode(errors="replace").strip() or "unknown process"
        os.close(fd)
        raise RunBusy(f"{path} is being written by another process ({holder}); wait for it to finish "
                      f"(or stop it), then run again: a run directory has one writer at a time") from None
    import sys
    import time

    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                 f"{' '.join(sys.argv)[:300]}\n".encode())
    _HELD_LOCKS[key] = fd


def release_run_lock(path: str | os.PathLike) -> None:
    """Release this process's lock on ``path`` (no-op if not held)."""
    fd = _HELD_LOCKS.pop(str(Path(path).resolve()), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


def release_all_run_locks() -> None:
    for key in list(_HELD_LOCKS):
        release_run_lock(key)


ARCHIVE_DIR = ".archive"  # <results_root>/.archive/: runs moved aside (--force, stale inputs); never collected


def held_elsewhere(path: str | os.PathLike) -> str:
    """The holder of ``path``'s lock when another live process is writing that run, else ""."""
    if not (Path(path) / ".lock").exists():
        return ""
    try:
        acquire_run_lock(path)
    except RunBusy as err:
        return str(err)
    release_run_lock(path)
    return ""


def archive_run_dir(path: str | os.PathLike, results_root: str | os.PathLike) -> Path | None:
    """Move a run directory to ``<results_root>/.archive/<its path under results_root>-<time>/`` (one
    rename; nothing is deleted) and return the new path; None if ``path`` does not exist. Reports never
    look there, so an archived run is never counted in a table."""
    import time

    path, root = Path(path), Path(results_root)
    if not path.exists():
        return None
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        rel = Path(path.name)
    target = root / ARCHIVE_DIR / rel.parent / f"{rel.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while target.exists():
        target = target.with_name(f"{target.name.split('~')[0]}~{n}")
        n += 1
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    return target
