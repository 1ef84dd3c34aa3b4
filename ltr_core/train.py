"""Run one params file without Jupyter: ``python -m ltr_core.train PARAMS.yaml [--set key=value ...]``.

This is the same code path the notebooks call (``ltr_core.methods.<family>.run``); it is what a bare
GPU box with only torch/torchvision/timm runs, and what torchrun launches.
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import ConfigError, from_params, load_params, parse_overrides
from .methods import get_method


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ltr_core.train", description=__doc__)
    parser.add_argument("params", help="params YAML file (flat key: value)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one parameter (repeatable)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        params.update(parse_overrides(args.overrides))
        cfg = from_params(params)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = get_method(cfg.run.method).run(cfg)
    print(json.dumps({k: results["metrics"].get(k) for k in ("top1", "many", "medium", "few", "ece")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
