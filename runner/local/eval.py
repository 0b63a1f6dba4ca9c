"""eval (local): the fine-tuned model (the train stage's MLflow model) against its base on the held-out chats,
in this process; then what every backend does with the figures (runner/stages/evaluation.py)."""

from ..errors import UserError
from ..stages import evaluation
from ..stages.evaluation import is_current  # noqa: F401  (the registry's contract: run, is_current, plan)


def run(spec, ctx) -> dict:
    data, train = ctx.upstream("data"), ctx.upstream("train")
    if not train.get("base_model"):
        raise UserError(
            "the train stage's record names no base model (it ran before the eval stage existed): "
            "train again, e.g. python -m runner stages=[train,eval] force=true (same config overrides)"
        )
    from trainer import chats, evaluate
    from trainer.hub import go_offline_unless_reachable

    go_offline_unless_reachable()
    folder = ctx.run_dir / "eval"
    tuned, tokenizer = evaluate.load_tuned(train["mlflow_model_dir"])
    stops = tuned.generation_config.eos_token_id
    holder = {"tuned": tuned}
    evaluate.evaluate(
        tuned,
        lambda: evaluate.load_model(train["base_model"]),
        tokenizer,
        chats.load(data["test_file"]),
        spec["eval"],
        stops if isinstance(stops, list) else [stops],
        spec["train"]["max_length"],
        folder,
        ctx.log,
        free_tuned=holder.clear,
    )
    del tuned
    return evaluation.finish(spec, ctx, folder, log_to=(train.get("tracking_uri"), train.get("run_id")))


def plan(spec, ctx) -> list[str]:
    return [*evaluation.plan(spec, ctx), "where:  in this process, after training (one model in memory at a time)"]
