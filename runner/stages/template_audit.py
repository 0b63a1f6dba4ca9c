"""The template audit in the plan (trainer/audit.py), once the data stage has written the training rows: the same
tokenizer, template, stop ids and collator the trainer will use, read from this machine without writing anything
but <run dir>/template_audit.txt. A template the audit refuses refuses the plan too (exit 2), before anything runs."""

from pathlib import Path

from ..errors import UserError


def tokenizer_and_stops(spec, data: dict):
    """(tokenizer, stop ids), or (None, why) when the base model's tokenizer is not on this machine."""
    from trainer import chats, tiny
    from trainer.errors import TrainerInputError
    from trainer.hub import base_model_dir, go_offline_unless_reachable, load_tokenizer, prepare_tokenizer, stop_ids

    go_offline_unless_reachable()
    model = spec["model"]
    if model["source"] == "tiny":
        corpus = chats.load(data.get("pool_file") or data["train_file"])
        tokenizer = tiny.tokenizer_for(corpus, model["tiny"], Path(spec["run"]["output_root"]).resolve() / "cache")
        return prepare_tokenizer(tokenizer, spec), tiny.stop_ids(tokenizer)
    try:
        base = base_model_dir(spec, [], Path("."))
    except TrainerInputError:
        return None, f"the tokenizer of {model['id']} is not on this machine"
    return load_tokenizer(base, spec), stop_ids(base)


def plan_lines(spec, ctx) -> list[str]:
    data = ctx.manifest.outputs("data")
    if not data.get("train_file") or not Path(data["train_file"]).is_file():
        return ["template audit: at the start of train (and here, once the data stage has run: stages=[data])"]
    from trainer import audit, chats

    tokenizer, stops = tokenizer_and_stops(spec, data)
    if tokenizer is None:
        return [f"template audit: at the start of train ({stops})"]
    audited = audit.for_training(spec["train"], tokenizer, stops, chats.load(data["train_file"]))
    if audited.problems:
        raise UserError(audit.refusal(audited))
    report = Path(ctx.run_dir) / "template_audit.txt"
    from common.files import write_atomic

    write_atomic(report, audited.report + "\n")
    return [
        audited.summary(spec["train"]["max_length"]),
        f"the first chat as it would be trained (loss on the tokens in \u27e6 \u27e7; the first few in {report}):",
        *("  " + line for line in audit.terminal(audited.first).splitlines()),
    ]
