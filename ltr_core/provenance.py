"""Software and machine provenance of a run: :func:`versions` (config.yaml, results.json) and :func:`git_sha`."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None


def git_sha(path: str | os.PathLike | None = None) -> str:
    """``git rev-parse HEAD`` of the checkout holding ``path`` (default: the ltr_core package).

    "+dirty" is appended when ``git status --porcelain`` is non-empty; "unknown" when the package is
    not in a git checkout (installed wheel, ignored folder such as a venv, no commit yet, no git).
    """
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    head = _run(["git", "rev-parse", "HEAD"], where)
    if head is None or head.returncode != 0:
        return "unknown"
    ignored = _run(["git", "check-ignore", "-q", str(where)], where)
    if ignored is not None and ignored.returncode == 0:  # e.g. site-packages inside a repo's .venv
        return "unknown"
    sha = head.stdout.strip()
    status = _run(["git", "status", "--porcelain"], where)
    if status is not None and status.returncode == 0 and status.stdout.strip():
        sha += "+dirty"
    return sha


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, Any]:
    """Software and machine provenance for config.yaml / results.json.

    Keys: python, torch, torchvision, timm, open_clip (None when not installed), numpy, cuda
    (``torch.version.cuda``), cuda_device (name, only when CUDA is already initialised in this process,
    so calling this never initialises CUDA), ltr_core (package version), git_sha, hostname, platform.
    Package versions are read from installed metadata, not by importing the packages.
    """
    import torch

    from . import __version__

    device = None
    if torch.cuda.is_initialized():
        with contextlib.suppress(Exception):
            device = torch.cuda.get_device_name(torch.cuda.current_device())
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": _dist_version("torchvision"),
        "timm": _dist_version("timm"),
        "open_clip": _dist_version("open_clip_torch"),
        "numpy": np.__version__,
        "cuda": torch.version.cuda,
        "cuda_device": device,
        "ltr_core": __version__,
        "git_sha": git_sha(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
    }
