"""Rules of the run spec about the model: its context and the chat template a user brings (see rules.py)."""

from pathlib import Path


def max_length_fits_model(spec):
    if spec["train"]["max_length"] > _context_of(spec):
        yield (
            "train.max_length",
            (
                f"{spec['train']['max_length']} exceeds the model's context "
                f"({_context_of(spec)}), e.g. train.max_length={_context_of(spec)}"
            ),
        )


def chat_template_is_a_file(spec):
    path = spec["model"].get("chat_template")
    if not path:
        return
    p = Path(path)
    if not p.is_file():
        yield (
            "model.chat_template",
            (
                f"{path} is not a file; point it at a Jinja chat template, e.g. "
                "model.chat_template=conf/templates/my_template.jinja, or null for the model's own"
            ),
        )
        return
    try:
        p.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        yield "model.chat_template", f"{path} cannot be read as UTF-8 text ({exc}); save it as UTF-8"


def _context_of(spec):
    tiny = spec["model"]["tiny"]
    return tiny["max_position_embeddings"] if spec["model"]["source"] == "tiny" and tiny else 1 << 30
