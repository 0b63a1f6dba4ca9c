"""python -m trainer --spec spec.yaml --train-file train.jsonl --eval-file test.jsonl --output-dir out/"""

import argparse
import sys
from pathlib import Path

from .errors import TrainerInputError


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m trainer", description="Fine-tune a Phi-3 model on JSONL chats.")
    p.add_argument("--spec", required=True, type=Path, help="run spec YAML (model, train and compute sections)")
    p.add_argument("--train-file", required=True, type=Path, help="JSONL chats to train on")
    p.add_argument("--eval-file", required=True, type=Path, help="JSONL chats to evaluate on")
    p.add_argument("--output-dir", required=True, type=Path, help="checkpoints, MLflow model copy, summary.json")
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI (MLFLOW_TRACKING_URI wins; default: SQLite in output-dir)"
    )
    p.add_argument("--experiment", help="MLflow experiment name (default: the spec's run.experiment_name)")
    p.add_argument("--cache-dir", type=Path, help="where the tiny model is built and cached")
    p.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="checkpoints (default: <output-dir>/checkpoints); a re-run resumes from the last one",
    )
    p.add_argument(
        "--save-model-only",
        action="store_true",
        help="write the MLflow model to <output-dir>/mlflow_model instead of logging it to the tracking "
        "server (Azure ML jobs: the workspace registers that folder)",
    )
    p.add_argument(
        "--delete-checkpoints-when-done",
        action="store_true",
        help="remove --checkpoint-dir once the model is saved (they exist to resume an interrupted run)",
    )
    p.add_argument(
        "--summary-file",
        type=Path,
        help="also write the run's figures here (Azure ML jobs: outputs/summary.json, read by the runner)",
    )
    p.add_argument(
        "--tiny-corpus",
        type=Path,
        help="JSONL chats the tiny model's tokenizer is learnt from (default: the training rows)",
    )
    p.add_argument(
        "--eval-dir",
        type=Path,
        help="after training, compare the model with its base on the eval file into this folder "
        "(metrics.json, report.md, answers.jsonl; the spec's eval section) and log them to MLflow",
    )
    p.add_argument("--run-name", help="the MLflow run's name (the runner passes its run directory)")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="an MLflow run tag (repeatable)")
    p.add_argument("--parent-run-id", help="nest the MLflow run under this one (a sweep's run)")
    args = p.parse_args(argv)
    bad = [t for t in args.tag if "=" not in t]
    if bad:
        p.error(f"--tag {bad[0]!r}: expected KEY=VALUE")
    return args


def empty(folder: Path):
    """Remove what is inside folder, not folder itself: in an Azure ML job it is a mounted output."""
    import shutil

    for child in folder.iterdir() if folder.is_dir() else ():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def main(argv=None) -> int:
    args = parse(argv)
    from .distributed import die_with_launcher

    die_with_launcher()
    import yaml

    try:
        if not args.spec.is_file():
            raise TrainerInputError(f"--spec {args.spec}: no such file")
        spec = yaml.safe_load(args.spec.read_text())
        from .distributed import is_main
        from .fit import train

        mlflow_run = {
            "run_name": args.run_name,
            "tags": dict(t.split("=", 1) for t in args.tag) or None,
            "parent_run_id": args.parent_run_id,
        }
        summary = train(
            spec,
            args.spec,
            args.train_file,
            args.eval_file,
            args.output_dir,
            args.tracking_uri,
            args.experiment,
            args.cache_dir,
            checkpoint_dir=args.checkpoint_dir,
            save_model_only=args.save_model_only,
            mlflow_run=mlflow_run,
            tiny_corpus=args.tiny_corpus,
            eval_dir=args.eval_dir,
        )
        rank0 = is_main()  # with several processes, rank 0 alone writes
        if args.summary_file and rank0:
            import json

            from common.files import write_atomic

            args.summary_file.parent.mkdir(parents=True, exist_ok=True)
            # the figures alone: in an Azure ML job the tracking URI names the subscription, and this file is downloaded
            figures = {
                k: v
                for k, v in summary.items()
                if k not in ("tracking_uri", "model_uri", "mlflow_model_dir", "loss_plot")
            }
            write_atomic(args.summary_file, json.dumps(figures, indent=2))
        # rank 0 alone, after it saved the model: other ranks return from train() as soon as they finish
        if args.delete_checkpoints_when_done and args.checkpoint_dir and rank0:
            empty(args.checkpoint_dir)
    except TrainerInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
