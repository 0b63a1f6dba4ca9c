"""Where the base model and its tokenizer come from: the hub (reached or not), a local folder, or the tiny build.

Whether the hub can be reached is decided before any huggingface library is imported: without it, every hub call
on an offline machine retries for tens of seconds before failing.
"""

import os
import socket
from functools import lru_cache
from pathlib import Path

from common.generation import eos_ids

from .errors import TrainerInputError


@lru_cache(maxsize=1)
def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def go_offline_unless_reachable() -> bool:
    """Set HF_HUB_OFFLINE=1 when the hub is out of reach; returns whether we are online.

    Must run before transformers/datasets/huggingface_hub are imported: they read the variable once.
    """
    online = hub_reachable()
    if not online:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    return online


def base_model_dir(spec: dict, train_rows, cache_dir: Path) -> str:
    """Folder or hub id of the base model; a clear error when its weights are not on this machine."""
    model = spec["model"]
    if model["source"] == "tiny":
        from .tiny import build_or_load

        return str(build_or_load(train_rows, model["tiny"], cache_dir))
    ident = model["id"]
    looks_local = ident.startswith((".", "/", "~")) or Path(ident).expanduser().exists()
    if looks_local:
        path = Path(ident).expanduser()
        if not (path / "config.json").is_file():
            raise TrainerInputError(
                f"model.id: {path} is not a model folder (no config.json there); "
                "point model.id at a folder written by save_pretrained"
            )
        return str(path)
    from huggingface_hub import snapshot_download

    online = go_offline_unless_reachable()
    try:
        return snapshot_download(
            ident,
            local_files_only=not online,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.py", "*.jinja"],
        )
    except Exception as exc:
        if online:
            raise TrainerInputError(f"could not fetch {ident} from the hub: {exc}") from None
        raise TrainerInputError(
            f"the weights of {ident} are not available locally and the hub cannot be reached: download them on a "
            f"machine with access (hf download {ident}) into this machine's Hugging Face cache, or set "
            "model.id=/path/to/a/local/copy"
        ) from None


def chat_template_file(spec: dict, spec_path: Path | None = None) -> Path | None:
    """model.chat_template: a Jinja file the user brings, as given (the runner makes it absolute), or beside the
    spec file (the Azure job's code folder holds a copy there)."""
    name = spec["model"].get("chat_template")
    if not name:
        return None
    path = Path(name).expanduser()
    if not path.is_file() and spec_path is not None and (Path(spec_path).parent / path.name).is_file():
        path = Path(spec_path).parent / path.name
    if not path.is_file():
        raise TrainerInputError(f"model.chat_template: {name} is not a file; point it at a Jinja chat template")
    return path


def load_tokenizer(base: str, spec: dict, spec_path: Path | None = None):
    """The base model's tokenizer, prepared for training (prepare_tokenizer)."""
    from transformers import AutoTokenizer

    return prepare_tokenizer(AutoTokenizer.from_pretrained(base), spec, spec_path)


def prepare_tokenizer(tokenizer, spec: dict, spec_path: Path | None = None):
    """tokenizer with model.chat_template in place of its own template when one is given (it is saved with the
    fine-tuned model, so the endpoint prompts with it too), and a pad token: what training and the audit use."""
    template = chat_template_file(spec, spec_path)
    if template is not None:
        tokenizer.chat_template = template.read_text(encoding="utf-8")
    pad = spec["model"].get("pad_token")
    if pad:  # e.g. Phi-4-mini, whose pad is its eos: a token of its own, added when the vocabulary lacks it
        if pad in tokenizer.get_vocab():
            tokenizer.pad_token = pad
        else:
            tokenizer.add_special_tokens({"pad_token": pad})
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def fit_embeddings(model, tokenizer):
    """The model with an embedding row for every token of tokenizer (a pad token added by prepare_tokenizer lands in
    the spare rows Phi-4-mini and Phi-3 have, so usually nothing changes), and the tokenizer's pad id in its configs,
    so generation pads with it too."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def stop_ids(base: str) -> list:
    """The ids generation stops at: the model's generation config eos_token_id (a list or one id)."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(base).eos_token_id
    except OSError:  # no generation_config.json: generation falls back to the model config's
        from transformers import AutoConfig

        eos = AutoConfig.from_pretrained(base).eos_token_id
    return eos_ids(eos)
