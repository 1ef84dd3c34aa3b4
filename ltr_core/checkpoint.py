"""Crash-consistent resume checkpoints: one directory per saved epoch, committed by an atomic pointer.

``<run_dir>/checkpoint/epoch-<e>/`` holds model.safetensors, optim.pt and state.json; ``LATEST`` names
the committed epoch. Every step is fsynced and separated by a crash point (:mod:`ltr_core.faults`), and
``tests/test_integrity.py`` kills the process at each of them: a resumed run always ends with the
numbers of an uninterrupted one. :class:`AsyncCheckpointWriter` writes the same checkpoints from a
background thread after one flat device->host copy per dtype (``checkpoint_async``).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import faults
from .results import RunDir, atomic_write_text

class CheckpointError(RuntimeError):
    """No usable checkpoint: the files are damaged and no older complete one exists."""


class Checkpoint:
    """``<run_dir>/checkpoint/``: one directory per saved epoch and a ``LATEST`` pointer.

    ``save`` writes ``epoch-<e>/`` (model.safetensors, optim.pt, state.json, each fsynced) under a
    temporary name, renames it into place, then atomically rewrites ``LATEST`` (the commit point), then
    removes all but the previous epoch's directory. Whatever instant the process dies, the checkpoint
    is wholly the old epoch or wholly the new one: a directory without ``LATEST`` pointing at it is
    never read, and leftover temporary directories are removed by the next save.
    ``restore`` loads the newest complete epoch; if its files are damaged it says so and falls back
    to the previous one, and with none left raises :class:`CheckpointError` naming the files and the fix.
    """

    KEEP = 2  # the committed epoch and the one before it (the fallback for a damaged file)

    def __init__(self, run_dir: RunDir):
        self.dir = Path(run_dir.path) / "checkpoint"
        self.latest_path = self.dir / "LATEST"
        self.used: Path | None = None  # the epoch directory restore() loaded

    @staticmethod
    def _name(epoch: int) -> str:
        return f"epoch-{epoch:06d}"

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._remove_temporaries()
        final = self.dir / self._name(state["epoch"])
        tmp = self.dir / f".{final.name}.tmp-{os.getpid()}"
        tmp.mkdir()
        _save_weights(model, tmp / "model.safetensors")
        faults.point("checkpoint weights written")
        with open(tmp / "optim.pt", "wb") as f:
            torch.save(optimizer.state_dict(), f)
            f.flush()
            os.fsync(f.fileno())
        faults.point("checkpoint optimizer written")
        atomic_write_text(tmp / "state.json", json.dumps(state, indent=1))
        if final.exists():  # a re-save of the same epoch (never the committed one: that is resumed from)
            shutil.rmtree(final)
        os.replace(tmp, final)
        faults.point("checkpoint directory renamed")
        atomic_write_text(self.latest_path, final.name + "\n")
        for old in self._epoch_dirs()[: -self.KEEP]:
            shutil.rmtree(old, ignore_errors=True)
            faults.point("old checkpoint removed")

    def _remove_temporaries(self) -> None:
        for p in self.dir.glob(".epoch-*.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)

    def _epoch_dirs(self) -> list[Path]:
        """Complete epoch directories (state.json present), oldest first, up to the committed one."""
        dirs = sorted(p for p in self.dir.glob("epoch-*") if (p / "state.json").is_file())
        committed = self._committed()
        return [p for p in dirs if committed is None or p.name <= committed]

    def _committed(self) -> str | None:
        try:
            return self.latest_path.read_text().strip() or None
        except OSError:
            return None

    def _candidates(self) -> list[Path]:
        """Epoch directories to resume from, newest first (only what LATEST committed)."""
        if self._committed() is None:
            return []
        return list(reversed(self._epoch_dirs()))

    def load_state(self) -> dict | None:
        """state.json of the newest committed epoch (None when there is no checkpoint)."""
        for d in self._candidates():
            try:
                return json.loads((d / "state.json").read_text())
            except (OSError, ValueError):
                continue
        return None

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, device: torch.device) -> dict:
        """Load the newest loadable committed epoch into ``model``/``optimizer``; returns its state."""
        errors = []
        for d in self._candidates():
            try:
                state = json.loads((d / "state.json").read_text())
                model.load_state_dict(load_file(str(d / "model.safetensors"), device=str(device)))
                if optimizer is not None:
                    optimizer.load_state_dict(torch.load(d / "optim.pt", map_location=device, weights_only=True))
            except Exception as err:  # noqa: BLE001 - any damage: say so, try the previous epoch
                errors.append(f"{d}: {type(err).__name__}: {str(err)[:200]}")
                print(f"warning: checkpoint {d} is damaged ({type(err).__name__}); trying an older one", flush=True)
                continue
            self.used = d
            return state
        raise CheckpointError(
            f"no loadable checkpoint in {self.dir}: " + "; ".join(errors) +
            f". Delete {self.dir} to train this run from the start (its metrics.jsonl is truncated to match), "
            f"or re-run with `ltr run --force` (the old run directory is moved aside)")


def host_snapshot(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies of ``tensors`` made with one device->host copy per dtype (flatten, copy, split back)."""
    out: dict[str, torch.Tensor] = {}
    by_dtype: dict[torch.dtype, list[str]] = {}
    for k, v in tensors.items():
        by_dtype.setdefault(v.dtype, []).append(k)
    for dtype, keys in by_dtype.items():
        flat = torch.cat([tensors[k].detach().reshape(-1) for k in keys]).cpu()
        offset = 0
        for k in keys:
            n = tensors[k].numel()
            out[k] = flat[offset:offset + n].view(tensors[k].shape)
            offset += n
    return out


class _Snapshot(nn.Module):
    """A frozen copy of a model's state, saveable like the model (``state_dict``)."""

    def __init__(self, state: dict[str, torch.Tensor]):
        super().__init__()
        self._state = state

    def state_dict(self, *args, **kwargs):  # noqa: D102 - the snapshot's tensors
        return self._state


class _OptimizerSnapshot:
    def __init__(self, optimizer: torch.optim.Optimizer):
        sd = optimizer.state_dict()
        tensors = {f"{i}/{k}": v for i, st in sd["state"].items() for k, v in st.items() if torch.is_tensor(v)}
        host = host_snapshot(tensors) if tensors else {}
        state = {i: {k: host.get(f"{i}/{k}", v) for k, v in st.items()} for i, st in sd["state"].items()}
        self._sd = {"state": state, "param_groups": copy.deepcopy(sd["param_groups"])}

    def state_dict(self):
        return self._sd


class AsyncCheckpointWriter:
    """``checkpoint_async``: snapshot model and optimizer (one flat device->host copy per dtype), then
    write the checkpoint in a background thread with :meth:`Checkpoint.save` (the same crash-consistent
    protocol); a save waits for the previous one, and ``close`` for the last."""

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt
        self._thread = None
        self._error: BaseException | None = None

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        import threading

        snap_model, snap_opt = _Snapshot(host_snapshot(model.state_dict())), _OptimizerSnapshot(optimizer)
        self.close()

        def work():
            try:
                self.ckpt.save(snap_model, snap_opt, dict(state))
            except BaseException as err:  # noqa: BLE001 - re-raised in the training thread
                self._error = err

        self._thread = threading.Thread(target=work, name="checkpoint-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err


def _save_weights(model: nn.Module, path: Path) -> None:
    """model.safetensors of ``model`` (CPU copies), fsynced."""
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(path))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
