"""eval (local): the fine-tuned model (the train stage's MLflow model) against its base on the held-out chats,
in this process; then what every backend does with the figures (runner/stages/evaluation.py)."""

from pathlib import Path

from ..errors import UserError
from ..stages import evaluation
from ..stages.evaluation import is_current  # noqa: F401  (the registry's contract: run, is_current, plan)


def run(spec, ctx) -> dict:
    data, train = ctx.upstream("data"), ctx.upstream("train")
    from common.generation import eos_ids
    from trainer import chats, evaluate
    from trainer.hub import go_offline_unless_reachable

    go_offline_unless_reachable()
    base = train.get("base_model") or base_of(spec, data)  # a train record older than the eval stage names none
    folder = ctx.run_dir / "eval"
    tuned, tokenizer = evaluate.load_tuned(train["mlflow_model_dir"])
    evaluate.evaluate(
        tuned,
        lambda: evaluate.load_model(base),
        tokenizer,
        chats.load(data["test_file"]),
        spec["eval"],
        eos_ids(tuned.generation_config.eos_token_id),
        spec["train"]["max_length"],
        folder,
        ctx.log,
    )
    return evaluation.finish(spec, ctx, folder, log_to=(train.get("tracking_uri"), train.get("run_id")))


def base_of(spec, data: dict) -> str:
    """The base model's folder as the train stage found or built it (the tiny one from the same rows)."""
    from trainer import chats
    from trainer.errors import TrainerInputError
    from trainer.hub import base_model_dir

    corpus = chats.load(data.get("pool_file") or data["train_file"]) if spec["model"]["source"] == "tiny" else []
    try:
        return base_model_dir(spec, corpus, Path(spec["run"]["output_root"]).resolve() / "cache")
    except TrainerInputError as exc:
        raise UserError(str(exc)) from None


def plan(spec, ctx) -> list[str]:
    return [*evaluation.plan(spec, ctx), "where:  in this process, after training"]
