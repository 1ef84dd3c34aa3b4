"""Run one params file without Jupyter: ``python -m ltr_core.train PARAMS.yaml [--set key=value ...]``.

This is the same code path the notebooks call (``ltr_core.methods.<family>.run``); it is what a bare
GPU box with only torch/torchvision/timm runs, and what torchrun launches: under torchrun (or srun
with one task per GPU) the process group is initialised from the environment (:mod:`ltr_core.dist`)
and the run is data-parallel; only rank 0 writes the run directory and prints the summary line.

The params resolve exactly as for ``ltr run`` (:func:`ltr_core.params.resolve`: ``base`` layering, the run
named after the file's stem plus a digest of the overrides, results under the project folder), so
``python -m ltr_core.train X.yaml`` and ``ltr run X.yaml`` are the same run.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import dist
from .config import ConfigError, parse_overrides
from .methods import get_method
from .params import resolve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ltr_core.train", description=__doc__)
    parser.add_argument("params", help="params YAML file (flat key: value)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one parameter (repeatable)")
    args = parser.parse_args(argv)
    try:
        params, cfg = resolve(args.params, parse_overrides(args.overrides))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if cfg.dist.dist_nproc > 1 and dist.env_ranks().world_size == 1:  # not under torchrun yet: re-invoke through it
        from .launch import run_distributed

        results = run_distributed(params, cfg.dist.dist_nproc)
        print(json.dumps({k: results["metrics"].get(k) for k in ("top1", "many", "medium", "few", "ece")}))
        return 0
    distributed = dist.init_from_env(cfg.run.device, cfg.dist.dist_backend)
    try:
        results = get_method(cfg.run.method).run(cfg)
        main = dist.is_main()
    finally:
        if distributed:
            dist.destroy()
    if main:
        print(json.dumps({k: results["metrics"].get(k) for k in ("top1", "many", "medium", "few", "ece")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
