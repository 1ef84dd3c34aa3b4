"""Unfinished runs that outlive the machine: ``ltr park`` and ``ltr unpark``.

A 200-epoch CPU run outlasts a session, and the next session may get another machine, whose
``results/`` is empty: the run would start again from epoch 0. ``park`` copies what resuming needs of
each unfinished run (config.yaml, inputs.json, split_indices.json, metrics.jsonl, ``checkpoint/LATEST``
and the one epoch directory it names: ~4 MB for ResNet-32) into a folder that can be committed;
``unpark`` puts it back under a results root, where ``ltr run``/``ltr suite`` resume it from that
epoch. Nothing else changes: the resumed run checks its config hash and inputs digest as always
(:mod:`ltr_core.lifecycle`), truncates metrics.jsonl past the checkpoint epoch (:func:`ltr_core.engine.fit`)
and ends with the numbers of an uninterrupted run (``tests/test_park.py``). TensorBoard files are not
carried (they restart with the resumed part).

A run may keep training while it is parked: the epoch named by ``LATEST`` survives one more save
(:attr:`ltr_core.checkpoint.Checkpoint.KEEP`), and a copy whose pointer moved meanwhile is taken again.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .results import RunDir
from .run_lock import ARCHIVE_DIR, archive_run_dir

CARRIED = ("config.yaml", "inputs.json", "split_indices.json", "metrics.jsonl")


class ParkError(RuntimeError):
    """A parked run that cannot be used (no checkpoint, a torn copy)."""


def checkpoint_epoch(run_dir: Path) -> int | None:
    """The epoch ``<run_dir>/checkpoint/LATEST`` commits, or None without a checkpoint."""
    latest = Path(run_dir) / "checkpoint" / "LATEST"
    if not latest.is_file():
        return None
    name = latest.read_text().strip()
    return int(name.split("-")[-1]) if name.startswith("epoch-") else None


def unfinished_runs(results_root: Path, suite: str | None = None) -> list[Path]:
    """Run directories under ``results_root`` (or its ``suite`` folder) with a checkpoint and no
    complete results.json, archived runs left out."""
    base = Path(results_root) / suite if suite else Path(results_root)
    found = []
    for latest in sorted(base.rglob("checkpoint/LATEST")):
        run = latest.parent.parent
        if ARCHIVE_DIR in run.relative_to(results_root).parts:
            continue
        res = RunDir(run).read_results()
        if not (res and res.get("status") == "complete"):
            found.append(run)
    return found


def _copy_once(run: Path, target: Path) -> bool:
    """Copy the carried files and the committed epoch into ``target``; False if that epoch was removed
    meanwhile (a committed epoch directory is never modified, only removed, so a whole copy is consistent).
    LATEST is read first: metrics.jsonl then holds every record up to it (records are logged before the
    checkpoint that follows them; a resume drops the later ones)."""
    name = (run / "checkpoint" / "LATEST").read_text().strip()
    (target / "checkpoint").mkdir(parents=True)
    for f in CARRIED:
        if (run / f).is_file():
            shutil.copy2(run / f, target / f)
    try:
        shutil.copytree(run / "checkpoint" / name, target / "checkpoint" / name)
    except (FileNotFoundError, shutil.Error):
        return False
    (target / "checkpoint" / "LATEST").write_text(name + "\n")
    return True


def park_run(run: Path, results_root: Path, dest: Path) -> Path:
    """Copy one unfinished run's resumable state to ``dest/<its path under results_root>`` (replacing an
    older parked copy in one rename) and return that path."""
    rel = Path(run).resolve().relative_to(Path(results_root).resolve())
    final = Path(dest) / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        tmp = final.with_name(f".{final.name}.park-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        if _copy_once(Path(run), tmp):
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
            return final
    shutil.rmtree(tmp, ignore_errors=True)
    raise ParkError(f"{run}: its checkpoint kept moving while it was copied; park it again")


def park(results_root: str | os.PathLike, dest: str | os.PathLike, suite: str | None = None) -> list[str]:
    """Park every unfinished run under ``results_root`` (or its ``suite``) into ``dest``; parked copies
    of runs that are now complete are removed from ``dest``. Returns one line per run."""
    root, dest = Path(results_root), Path(dest)
    lines = []
    for run in unfinished_runs(root, suite):
        target = park_run(run, root, dest)
        lines.append(f"parked {run.name} at epoch {checkpoint_epoch(target)} -> {target}")
    for parked in unfinished_runs(dest):
        here = root / parked.relative_to(dest)
        res = RunDir(here).read_results()
        if res and res.get("status") == "complete":
            shutil.rmtree(parked)
            lines.append(f"removed {parked} ({here} is complete)")
    return lines


def unpark(src: str | os.PathLike, results_root: str | os.PathLike) -> list[str]:
    """Put the parked runs of ``src`` under ``results_root``: where the run is absent, or has an older
    checkpoint (that partial copy is archived first, nothing deleted); a complete run or a newer
    checkpoint is left as it is. Returns one line per parked run."""
    src, root = Path(src), Path(results_root)
    lines = []
    for parked in unfinished_runs(src):
        epoch = checkpoint_epoch(parked)
        if epoch is None or not (parked / "checkpoint" / f"epoch-{epoch:06d}").is_dir():
            raise ParkError(f"{parked}: checkpoint/LATEST names no epoch directory beside it; "
                            f"park the run again from the machine that trains it, or delete {parked}")
        here = root / parked.relative_to(src)
        res = RunDir(here).read_results()
        if res and res.get("status") == "complete":
            lines.append(f"kept {here}: complete")
            continue
        local = checkpoint_epoch(here)
        if local is not None and local >= epoch:
            lines.append(f"kept {here}: its checkpoint (epoch {local}) is not older than the parked one ({epoch})")
            continue
        moved = archive_run_dir(here, root)
        here.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(parked, here)
        lines.append(f"unparked {here.name} at epoch {epoch}" + (f" (the older copy moved to {moved})" if moved else ""))
    return lines
