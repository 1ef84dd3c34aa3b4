"""The ``ltr`` command: ``run``, ``suite``, ``report`` and ``bench``.

    ltr run PARAMS.yaml [--set key=value ...] [--seed N] [--data-root DIR] [--force] [--no-notebook]
    ltr suite SUITE.yaml [--set key=value ...] [--data-root DIR] [--no-report]
    ltr report SUITE.yaml
    ltr bench [--model resnet32] [--image-size 32] [--batch-size 128] [--steps 20] [--device auto]

Runs go through papermill (``notebooks/<family>.ipynb``, executed copy in the run directory);
``--no-notebook`` runs the same code path in-process, like ``python -m ltr_core.train``.
Exit status: 0 when every run succeeded or was skipped, 1 when one failed, 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, parse_overrides


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter (repeatable); values are read as YAML")
    p.add_argument("--data-root", default=None,
                   help="dataset root (default: params data_root, then $LTR_DATA_ROOT, then data/<dataset>)")
    p.add_argument("--results-root", default=None, help="where run directories go (default: results)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")


def _overrides(args) -> dict:
    ov = parse_overrides(args.overrides)
    for key in ("data_root", "results_root", "device"):
        value = getattr(args, key, None)
        if value is not None:
            ov[key] = value
    if getattr(args, "seed", None) is not None:
        ov["seed"] = args.seed
    return ov


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ltr", description="ltr-study: long-tailed recognition runs, suites, reports.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run one params file through its notebook")
    p.add_argument("params")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--suite", default=None, help="group the run under results/<suite>/ (default: interactive)")
    p.add_argument("--force", action="store_true", help="re-run; the old run directory is moved aside, not deleted")
    p.add_argument("--no-notebook", action="store_true", help="run in-process instead of through papermill")
    _common(p)

    p = sub.add_parser("suite", help="run every run x seed of a suite, then its report")
    p.add_argument("suite")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--no-notebook", action="store_true", help="runs in-process (the report still uses its notebook)")
    _common(p)

    p = sub.add_parser("report", help="tables and figures of a suite from its results")
    p.add_argument("suite")
    p.add_argument("--results-root", default=None)

    p = sub.add_parser("bench", help="images/s of the full training step vs the model step alone")
    p.add_argument("--model", default="resnet32")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    p.add_argument("--out", default=None, help="also write the table as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import runner

    try:
        if args.command == "run":
            ov = _overrides(args)
            if args.suite:
                ov["suite"] = args.suite
            if not args.no_notebook:
                runner.ensure_kernel()
            outcome = runner.run_params(args.params, ov, force=args.force, use_notebook=not args.no_notebook)
            return 1 if outcome.status == "failed" else 0
        if args.command == "suite":
            runner.ensure_kernel()
            outcomes = runner.run_suite(args.suite, _overrides(args), report=not args.no_report,
                                        use_notebook=not args.no_notebook)
            return 1 if any(o.status == "failed" for o in outcomes) else 0
        if args.command == "report":
            runner.ensure_kernel()
            ov = {"results_root": args.results_root} if args.results_root else {}
            return 1 if runner.run_report(args.suite, ov).status == "failed" else 0
        if args.command == "bench":
            from .bench import main as bench_main

            return bench_main(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
