"""The ``adatt`` command.

    adatt models                          list the registered models
    adatt demo                            train every model on simulated data, print a table
    adatt train --config FILE|NAME [k=v ...]
                                          train one run (a YAML file or a shipped config's name)
    adatt config list                     name the shipped configs (census/adatt_sp, ...)
    adatt config show [--source S] [--model M] [--format text|markdown] [--all]
                                          every config key: type, default, meaning
    adatt tune --config C --space S.yaml [--trials N] [--study-dir D] [--workers W] [k=v ...]
                                          hyperparameter search with Optuna (docs/tuning.md)
    adatt eval --run runs/NAME            re-score a saved run
    adatt data info census|sim|files ...  describe a data set
    adatt data write-shards sim --rows N --shard-rows M --out DIR
                                          write simulator rows as Parquet shards (streaming)
    adatt experiment NAME [--quick]       run one of the paper's experiments (list: names)
    adatt export --run runs/NAME --format torchscript|export|onnx [--output PATH]
                                          export the run's model for serving
    adatt predict --run runs/NAME --input F --output F.parquet [--id-column C]
                                          score a CSV / Parquet file with the run's model

Bad input (a missing file, a bad config key, a malformed data file) is a one
line ``error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main"]


#: --rows floor: fewer leave the 10% validation and test splits too small to score the rare tasks
MIN_SIM_ROWS = 10_000
#: what ``adatt eval --splits`` may name
SPLITS = ("train", "valid", "test")


def _cmd_models(args: argparse.Namespace) -> None:
    from adatt.models import list_models

    models = list_models()
    width = max(map(len, models))
    for name, desc in models.items():
        print(f"{name:<{width}}  {desc}")


def _cmd_config_list(args: argparse.Namespace) -> None:
    from adatt.config import packaged_configs

    configs = packaged_configs()
    width = max(map(len, configs))
    for name, desc in configs.items():
        print(f"{name:<{width}}  {desc}")


def _cmd_config_show(args: argparse.Namespace) -> None:
    from adatt.config import ConfigError, reference_markdown, reference_text

    if args.format not in ("text", "markdown"):
        raise ConfigError(f"--format: {args.format!r} is not text or markdown")
    if args.all:
        if args.format == "markdown":
            print(reference_markdown(), end="")
            return
        print(reference_text(None, None), end="")
        return
    sources = [args.source or "census"]
    models = [args.model or "adatt_sp"]
    if args.format == "markdown":
        print(reference_markdown(sources, models), end="")
    else:
        print(reference_text(sources[0], models[0]), end="")


def _cmd_train(args: argparse.Namespace) -> None:
    from adatt.config import load_config
    from adatt.train.trainer import train

    cfg = load_config(args.config, args.overrides)
    res = train(cfg, resume=args.resume, overwrite=args.overwrite)
    from adatt.train import distributed

    if distributed.is_main():  # under torchrun: rank 0 prints
        print(format_results(res))


def _cmd_tune(args: argparse.Namespace) -> None:
    from adatt.experiments.tune import run_study

    summary = run_study(args.config, args.space, args.study_dir, args.overrides,
                        trials=args.trials, workers=args.workers, seed=args.seed,
                        prune=not args.no_prune)
    best = summary["best"]
    if best is None:
        print(f"no complete trial; wrote {summary['study_dir']}/report.md")
        return
    print(f"best: trial {best['number']} valid {best['value']:.5f} {json.dumps(best['params'])}")
    print(format_results({"test": best["test"]}, splits=["test"]))
    print(f"wrote {summary['study_dir']}/report.md ({summary['wall_time_s']:.0f} s)")


def _cmd_eval(args: argparse.Namespace) -> None:
    from adatt.train.evaluation import evaluate
    from adatt.train.runs import load_run

    names = [x.strip() for x in args.splits.split(",")]
    bad = [x for x in names if x not in SPLITS]
    if bad or not names:
        raise _UsageError(f"--splits: unknown split {bad[0] if bad else ''!r}; "
                          f"known: {', '.join(SPLITS)}")
    args.splits = ",".join(names)
    cfg, model, splits = load_run(args.run)
    res = {"name": cfg.name}
    for split in names:
        res[split] = evaluate(model, getattr(splits, split), splits.schema,
                              cfg.train.eval_batch_size)
    if args.baseline:
        res["relative_to_baseline"] = _relative(res, args.baseline, args.splits.split(","))
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(format_results(res, splits=args.splits.split(",")))
        for split, rel in res.get("relative_to_baseline", {}).items():
            cells = "  ".join(f"{t}={v:+.3f}%" for t, v in rel.items())
            print(f"{split} NE/MSE difference vs {args.baseline}: {cells}")


def _relative(res: dict, baseline_dir: str, splits: list[str]) -> dict[str, dict[str, float]]:
    """Relative NE (binary) / MSE (regression) difference in percent vs a baseline run."""
    from pathlib import Path

    from adatt.train.metrics import relative_to_baseline
    from adatt.train.rundir import RunError

    path = Path(baseline_dir) / "results.json"
    if not path.is_file():
        raise RunError(f"{path} not found: --baseline needs a finished run directory")
    base = json.loads(path.read_text())
    out = {}
    for split in splits:
        if set(base.get(split, {})) != set(res[split]):
            raise RunError(f"--baseline {baseline_dir}: its tasks differ from this run's")
        out[split] = relative_to_baseline(res[split], base[split])
    return out


def format_results(res: dict, splits: tuple[str, ...] | list[str] = ("valid", "test")) -> str:
    """A per-task table of a results dict."""
    lines = []
    for split in splits:
        if split not in res:
            continue
        lines.append(f"{split}:")
        for task, m in res[split].items():
            vals = "  ".join(f"{k}={v:.4f}" for k, v in m.items() if k != "count")
            lines.append(f"  {task:<16} {vals}")
    if "train_examples_per_s" in res:
        lines.append(f"selected: {res['selected']}  params: {res['num_parameters']:,}  "
                     f"train: {res['train_examples_per_s']:,.0f} ex/s  "
                     f"wall: {res['wall_time_s']:.1f} s")
    return "\n".join(lines)


def _data_config_from_args(args: argparse.Namespace):
    from adatt.data.config import DataConfig

    opts = {"source": args.source}
    for key in ("data_dir", "preset", "rows", "seed", "schema", "train", "valid", "test",
                "correlation", "instance_weight"):
        v = getattr(args, key, None)
        if v is not None:
            opts[key] = v
    return DataConfig.from_dict(opts)


def _cmd_data_info(args: argparse.Namespace) -> None:
    from adatt.data.config import load_splits
    from adatt.data.info import describe

    print(describe(load_splits(_data_config_from_args(args))))


def _cmd_data_write_shards(args: argparse.Namespace) -> None:
    from adatt.data.stream import write_sim_shards

    out = write_sim_shards(args.out, args.preset, args.rows, seed=args.seed,
                           shard_rows=args.shard_rows, valid_rows=args.valid_rows,
                           test_rows=args.test_rows, row_group_rows=args.row_group_rows,
                           overwrite=args.overwrite, progress=not args.no_progress)
    n = len(list((out / "train").glob("part-*.parquet")))
    print(f"wrote {n} shards to {out / 'train'}, {out / 'valid.parquet'}, {out / 'test.parquet'} "
          f"and {out / 'schema.yaml'}; train on them with:\n  data.source=stream "
          f"data.schema={out / 'schema.yaml'} data.train={out / 'train'} "
          f"data.valid={out / 'valid.parquet'} data.test={out / 'test.parquet'}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from adatt.experiments.demo import run_demo

    print(run_demo(rows=args.rows, epochs=args.epochs, out_dir=args.out_dir, seed=args.seed))


def _cmd_experiment(args: argparse.Namespace) -> None:
    from adatt.experiments import EXPERIMENTS, get_experiment

    if args.name == "list":
        for name, (_, _, desc) in EXPERIMENTS.items():
            print(f"{name:<15} {desc}")
        return
    try:
        fn = get_experiment(args.name)
    except ValueError as e:
        raise _UsageError(str(e)) from None
    import inspect

    accepts = inspect.signature(fn).parameters
    opts = {"quick": args.quick, "progress": not args.no_progress}
    if args.seeds is not None:
        opts["seeds"] = args.seeds
    for flag, value, low in (("--seeds", args.seeds, 1), ("--workers", args.workers, 1),
                             ("--context-seeds", args.context_seeds, 1),
                             ("--tune-seeds", args.tune_seeds, 1),
                             ("--threads", args.threads, 1),
                             ("--rows", args.rows, MIN_SIM_ROWS)):
        if value is not None and value < low:
            raise _UsageError(f"{flag} must be >= {low:,}, got {value:,}")
    # options only some experiments take: (parameter, value given, flag)
    for param, value, flag in (("workers", args.workers, "--workers"),
                               ("resume", args.resume or None, "--resume"),
                               ("context_seeds", args.context_seeds, "--context-seeds"),
                               ("protocol", args.protocol, "--protocol"),
                               ("tune_seeds", args.tune_seeds, "--tune-seeds"),
                               ("groups", tuple(args.groups.split(",")) if args.groups
                                else None, "--groups"),
                               ("context", False if args.no_context else None,
                                "--no-context"),
                               ("rows", args.rows, "--rows"),
                               ("device", args.device, "--device"),
                               ("threads", args.threads, "--threads"),
                               ("models", tuple(args.models.split(",")) if args.models
                                else None, "--models"),
                               ("census", False if args.no_census else None, "--no-census"),
                               ("sim", False if args.no_sim else None, "--no-sim")):
        if value is not None:
            if param not in accepts:
                raise _UsageError(f"experiment {args.name} has no {flag} option")
            opts[param] = value
    if "groups" in opts:
        if args.name == "census-table5":
            from adatt.experiments.census import GROUPS
        else:
            from adatt.experiments.task_groups import GROUPS
        bad = [g for g in opts["groups"] if g not in GROUPS]
        if bad:
            raise _UsageError(f"--groups: unknown group {bad[0]!r}; known: {', '.join(GROUPS)}")
    if "models" in opts:
        if args.name == "census-table5":
            from adatt.experiments.census import TABLE5_MODELS as MODEL_LABELS
        else:
            from adatt.experiments.task_groups import MODEL_LABELS

        bad = [m for m in opts["models"] if m not in MODEL_LABELS]
        if bad:
            raise _UsageError(f"--models: unknown model {bad[0]!r}; known: "
                              f"{', '.join(MODEL_LABELS)}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise _UsageError("--device cuda: CUDA is not available here")
    if opts.get("census") is False and opts.get("sim") is False:
        raise _UsageError("--no-census and --no-sim together leave nothing to run")
    if args.tune_seeds is not None and args.protocol != "tuned":
        raise _UsageError("--tune-seeds needs --protocol tuned")
    if args.data_dir:
        if "data_dir" not in accepts:
            raise _UsageError(f"experiment {args.name} does not read census (--data-dir)")
        opts["data_dir"] = args.data_dir
    out_dir = args.out_dir or f"results/{args.name}{'-quick' if args.quick else ''}"
    from pathlib import Path

    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise _UsageError(f"--out-dir {out_dir}: exists and is not a directory")
    summary = fn(out_dir, **opts)
    wall = summary.get("wall_time_s")
    print(f"wrote {out_dir}/report.md" + (f" ({wall:.0f} s)" if wall else ""))


def _cmd_export(args: argparse.Namespace) -> None:
    from adatt.serve.export import export_run

    res = export_run(args.run, args.format, args.output)
    print(f"wrote {res.path} and {res.sidecar.name} ({res.format}; max abs difference to the "
          f"eager model {res.max_abs_diff:.2e})")


def _cmd_predict(args: argparse.Namespace) -> None:
    from adatt.serve.predict import predict_file

    res = predict_file(args.run, args.input, args.output, batch_size=args.batch_size,
                       id_column=args.id_column, progress=not args.no_progress)
    print(f"wrote {res.output}: {res.rows:,} rows, columns {', '.join(res.columns)}")


class _UsageError(ValueError):
    """A bad command-line argument."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adatt", description="AdaTT and multi-task baselines")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("models", help="list the registered models")
    s.set_defaults(fn=_cmd_models)

    s = sub.add_parser("demo", help="train every model on simulated data and compare")
    s.add_argument("--rows", type=int, default=200_000)
    s.add_argument("--epochs", type=int, default=2)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out-dir", default="runs/demo")
    s.set_defaults(fn=_cmd_demo)

    s = sub.add_parser("train", help="train one run from a YAML config",
                       epilog="config keys, types, defaults and meanings: adatt config show "
                       "[--source S] [--model M] (docs/config.md)")
    s.add_argument("--config", help="YAML config file, or the name of a shipped config "
                   "(census/adatt_sp; list: adatt config list)")
    s.add_argument("--resume", action="store_true", help="continue a killed run")
    s.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    s.add_argument("overrides", nargs="*", metavar="key=value")
    s.set_defaults(fn=_cmd_train)

    s = sub.add_parser("tune", help="hyperparameter search over config keys with Optuna "
                       "(needs the tune extra; docs/tuning.md)")
    s.add_argument("--config", help="YAML config file or shipped config name")
    s.add_argument("--space", required=True, help="search-space YAML: dotted key -> "
                   "{low, high[, log, step]} or {choices: [...]}")
    s.add_argument("--trials", type=int, default=20, help="finished trials of the study in all "
                   "(a rerun resumes it up to this number; default 20)")
    s.add_argument("--study-dir", help="study.db, trials/ and the report (default "
                   "OUT_DIR/tune_NAME)")
    s.add_argument("--workers", type=int, default=1, help="trials trained at once, each with "
                   "cores / workers torch threads (default 1)")
    s.add_argument("--seed", type=int, default=0, help="sampler seed; trial i trains with a "
                   "seed drawn from it (default 0)")
    s.add_argument("--no-prune", action="store_true", help="train every trial to the end")
    s.add_argument("overrides", nargs="*", metavar="key=value")
    s.set_defaults(fn=_cmd_tune)

    s = sub.add_parser("config", help="the shipped configs")
    csub = s.add_subparsers(dest="config_command", required=True)
    c = csub.add_parser("list", help="name the shipped configs (for train --config NAME)")
    c.set_defaults(fn=_cmd_config_list)
    c = csub.add_parser("show", help="every config key with type, default and meaning")
    c.add_argument("--source", help="data source whose data.* keys are shown "
                   "(census, sim, mmoe_synthetic, files, stream; default census)")
    c.add_argument("--model", help="model whose model.* options are shown (default adatt_sp)")
    c.add_argument("--format", default="text", help="text (default) or markdown")
    c.add_argument("--all", action="store_true", help="every source and every model "
                   "(--format markdown: docs/config.md)")
    c.set_defaults(fn=_cmd_config_show)

    s = sub.add_parser("eval", help="re-score a saved run")
    s.add_argument("--run", required=True, help="run directory (runs/NAME)")
    s.add_argument("--splits", default="valid,test")
    s.add_argument("--json", action="store_true")
    s.add_argument("--baseline", help="a baseline run (e.g. Shared-bottom on the same data): "
                   "also print the relative NE / MSE difference in percent")
    s.set_defaults(fn=_cmd_eval)

    s = sub.add_parser("experiment", help="run one of the paper's experiments (or: list)")
    s.add_argument("name", help="census-table5, ablation, expert-weights, experts-study, "
                   "levels-study, task-groups, or list")
    s.add_argument("--quick", action="store_true", help="few seeds, small data (minutes)")
    s.add_argument("--seeds", type=int, help="seeds per configuration")
    s.add_argument("--out-dir", help="results directory (default results/NAME)")
    s.add_argument("--data-dir", help="census directory (default: ADATT_DATA_DIR)")
    s.add_argument("--workers", type=int, help="parallel training processes (census-table5; "
                   "default: ensemble or workers, whichever a short probe measures faster)")
    s.add_argument("--resume", action="store_true", help="keep finished seed runs in the "
                   "results directory and train only the missing ones")
    s.add_argument("--context-seeds", type=int, help="seeds for the context rows "
                   "(Shared-bottom, MMoE, Cross-stitch; census-table5; default --seeds)")
    s.add_argument("--protocol", choices=["paper", "tuned"], help="census-table5: the "
                   "paper's protocol (default) or the tuned one (z-scored continuous columns, "
                   "learning rate chosen per model on validation)")
    s.add_argument("--tune-seeds", type=int, help="seeds per learning-rate candidate "
                   "(census-table5 --protocol tuned; default 3)")
    s.add_argument("--groups", help="comma list of the groups to run: census-table5 A "
                   "(6 experts per level), B (9; default A,B); task-groups group1, group2, "
                   "group3 (default all)")
    s.add_argument("--no-context", action="store_true", help="census-table5: leave out the "
                   "Shared-bottom, MMoE and Cross-stitch context rows")
    s.add_argument("--rows", type=int, help="simulator rows (simulator experiments; default "
                   "2,000,000, quick mode less)")
    s.add_argument("--models", help="comma list of model names: task-groups, the models to "
                   "compare (Shared-bottom, the reference, is always trained); census-table5, "
                   "the rows to run (every m_s of a family, to rerun part of a table)")
    s.add_argument("--no-census", action="store_true", help="ablation: skip the census half")
    s.add_argument("--no-sim", action="store_true", help="ablation: skip the simulator half")
    s.add_argument("--device", choices=["cpu", "cuda"], help="where to train (default cpu; "
                   "every experiment but census-table5)")
    s.add_argument("--threads", type=int, help="torch threads per training process (default: "
                   "all cores; quick mode 1; every experiment but census-table5)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(fn=_cmd_experiment)

    s = sub.add_parser("export", help="export a run's model for serving (see docs/serving.md)")
    s.add_argument("--run", required=True, help="run directory (runs/NAME)")
    s.add_argument("--format", required=True, choices=["torchscript", "export", "onnx"])
    s.add_argument("--output", help="file to write (default runs/NAME/serving/model.<ext>)")
    s.set_defaults(fn=_cmd_export)

    s = sub.add_parser("predict", help="score a CSV / Parquet file with a run's model")
    s.add_argument("--run", required=True, help="run directory (runs/NAME)")
    s.add_argument("--input", required=True, help="CSV or Parquet file of feature columns")
    s.add_argument("--output", required=True, help=".parquet or .csv file to write")
    s.add_argument("--batch-size", type=int, help="rows per forward pass (default: the run's "
                   "eval batch size)")
    s.add_argument("--id-column", help="input column copied to the output")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(fn=_cmd_predict)

    s = sub.add_parser("data", help="data sets")
    dsub = s.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("info", help="row counts, positive rates, features")
    d.add_argument("source", choices=["census", "sim", "mmoe_synthetic", "files"])
    d.add_argument("--data-dir")
    d.add_argument("--preset")
    d.add_argument("--rows", type=int)
    d.add_argument("--seed", type=int)
    d.add_argument("--correlation", type=float)
    d.add_argument("--instance-weight", dest="instance_weight")
    d.add_argument("--schema")
    d.add_argument("--train")
    d.add_argument("--valid")
    d.add_argument("--test")
    d.set_defaults(fn=_cmd_data_info)
    d = dsub.add_parser("write-shards", help="write simulator rows as Parquet shards for "
                        "data.source=stream (docs/data.md)")
    d.add_argument("source", choices=["sim"])
    d.add_argument("--out", required=True, help="directory: train/part-*.parquet, valid.parquet, "
                   "test.parquet, schema.yaml")
    d.add_argument("--preset", default="group1")
    d.add_argument("--rows", type=int, required=True, help="training rows")
    d.add_argument("--shard-rows", type=int, default=500_000)
    d.add_argument("--row-group-rows", type=int, default=65_536)
    d.add_argument("--valid-rows", type=int, help="default min(rows / 10, 100000)")
    d.add_argument("--test-rows", type=int, help="default min(rows / 10, 100000)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(fn=_cmd_data_write_shards)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pydantic import ValidationError

    from adatt.config import ConfigError
    from adatt.data.errors import DataError
    from adatt.train.rundir import RunError

    try:
        args.fn(args)
    except (ConfigError, DataError, RunError, _UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        print(f"error: {loc}: {err['msg']}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
