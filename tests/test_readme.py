"""Every command of the README's "Using it" block runs as written, in a fresh project folder (a copy of
params/ and notebooks/, as a checkout has them; nothing is written into this repository), with small
settings appended (``--set epochs=1`` and the like). Their output carries no kernel noise."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SMALL = ["--set", "epochs=1", "--set", "max_steps_per_epoch=2"]
SUITE = [*SMALL, "--set", "oltr_stage1_epochs=1", "--set", "livt_mgp_epochs=1"]
VARIANTS = {  # appended to each command: small data, as few steps as will do
    ("ltr", "run"): SMALL,
    ("python", "-m"): SMALL,
    ("papermill",): ["-p", "epochs", "1", "-p", "max_steps_per_epoch", "2"],
    ("ltr", "suite"): [*SUITE, "--workers", "2"],
    ("ltr", "report"): SUITE,
    ("ltr", "bench"): ["--image-size", "32", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--device", "cpu",
                       "--no-peer"],
}
NOISE = ("Kernel is running over TCP without encryption", "KeyboardInterrupt caught in kernel")


def readme_commands() -> list[str]:
    """The command lines of the first bash block under "## Using it" (comments dropped)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Using it", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [" ".join(shlex.split(line, comments=True)) for line in block.splitlines() if line.strip()]


def _variant(argv: list[str]) -> list[str]:
    for prefix, extra in VARIANTS.items():
        if tuple(argv[: len(prefix)]) == prefix:
            return extra
    raise AssertionError(f"no small-data variant for README command {' '.join(argv)}")


def test_readme_lists_the_commands():
    cmds = readme_commands()
    assert cmds[0] == "ltr run params/digits_lt/ce.yaml" and any(c.startswith("papermill ") for c in cmds)
    assert all(_variant(shlex.split(c)) is not None for c in cmds)


def test_every_readme_command_runs_as_written(tmp_path):
    for name in ("params", "notebooks"):
        shutil.copytree(REPO / name, tmp_path / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    outputs = {}
    for cmd in readme_commands():
        argv = shlex.split(cmd)
        out = subprocess.run(argv + _variant(argv), cwd=tmp_path, env=env, capture_output=True, text=True)
        text = out.stdout + out.stderr
        assert out.returncode == 0, f"`{cmd}` failed ({out.returncode}):\n{text[-4000:]}"
        if argv[0] == "ltr":  # (plain papermill's own kernel start-up warning is papermill's)
            assert not [n for n in NOISE if n in text], f"`{cmd}` printed kernel noise:\n{text[-2000:]}"
        outputs[cmd] = text
    by = lambda start: next(t for c, t in outputs.items() if c.startswith(start))  # noqa: E731
    runs = tmp_path / "results" / "interactive"
    assert by("ltr run params/digits_lt/ce.yaml --no-notebook").startswith("skip")  # the same run as the first
    assert "skip: " in by("python -m ltr_core.train")  # ... and so is python -m ltr_core.train
    assert len(list(runs.glob("digits_lt-decouple-crt-*-s0/results.json"))) == 1  # cRT found its CE run
    assert (tmp_path / "out.ipynb").is_file() and len(list(runs.glob("digits_lt-erm-la-*-s0/results.json"))) == 1
    assert "21 ok, 0 failed" in by("ltr suite")  # every cRT row found its CE run made with the same overrides


def _rows(text: str, first_cell: str) -> list[list[str]]:
    """The body rows of markdown tables whose rows start with ``first_cell`` (cells stripped of bold)."""
    return [[c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith(f"| {first_cell}")]


def test_readme_quickstart_table_is_what_make_study_wrote():
    """The README's quickstart numbers are the committed figures/quickstart/summary.md, row for row."""
    readme = (REPO / "README.md").read_text().split("### Quickstart", 1)[1].split("###", 1)[0]
    ours = [r for r in _rows(readme, "") if r[0] not in ("Method", ":--")]
    written = _rows((REPO / "figures" / "quickstart" / "summary.md").read_text(), "digits_lt")
    assert len(ours) == len(written) > 0
    for mine, theirs in zip(ours, written):
        assert mine[1:5] == theirs[3:7] and mine[5].rstrip(" *") == theirs[7] and mine[6:] == theirs[8:], (mine, theirs)


@pytest.mark.parametrize("heading, folder", [
    ("### CIFAR-10-LT IR 100 at the published recipe", "cifar10_lt_ir100"),
    ("### CIFAR-10-LT IR 100 on the lossless CIFAR-10", "cifar10_lt_ir100_lossless"),
])
def test_readme_cifar10_lt_ir100_tables_are_the_committed_reports(heading, folder):
    """The README's 200-epoch CIFAR-10-LT rows are figures/<folder>/summary.md's, row for row."""
    readme = (REPO / "README.md").read_text().split(heading, 1)[1]
    ours = [r for r in _rows(readme.split("###", 1)[0], "") if r[0] not in ("Method",) and not r[0].startswith("*")]
    summary = (REPO / "figures" / folder / "summary.md").read_text()
    written = _rows(summary, "erm") + _rows(summary, "decouple")
    assert sorted(r[1:6] for r in written) == sorted(r[:5] for r in ours) and ours
