"""A tiny Phi-3 (or Phi-4-mini): Phi3ForCausalLM with a small config and a BPE tokenizer trained on the chats.

No weights come from anywhere: the model is built from a seed, so tests and the offline default
run need no download. Built in a few seconds, cached by content, saved with save_pretrained so
every later step loads it exactly like a hub model.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

BUILD = 2  # 2: Phi-3's own chat template and <|endoftext|> as eos, as in microsoft/Phi-3-mini-4k-instruct
SPECIAL_TOKENS = {
    # Phi-3-mini's: eos <|endoftext|> is also its pad
    "phi3": ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
    # Phi-4-mini's (bos, eos and pad are all <|endoftext|> there; the fine-tune pads with <|pad|>, which
    # model=tiny_phi4mini names as its pad_token, so the tiny has it from the start), tools included
    "phi4mini": [
        "<|endoftext|>",
        "<|assistant|>",
        "<|end|>",
        "<|user|>",
        "<|system|>",
        "<|tool|>",
        "<|/tool|>",
        "<|pad|>",
    ],
}
# Phi-4-mini-instruct's own chat template (no newlines; tools as a string on the system message)
PHI4_MINI_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and message['tools'] is "
    "not none %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + message['tools'] + '<|/tool|>' "
    "+ '<|end|>' }}{% else %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)


def arch(shape: dict) -> str:
    return shape.get("arch") or "phi3"


def chat_template(kind: str = "phi3") -> str:
    """The model's own chat template. Phi-3-mini's, as TRL ships it: each turn "<|role|>\n{content}<|end|>\n", the
    same text as the real model's, so TRL recognises it and trains on assistant turns only with its training variant
    (generation markers), exactly as it does for microsoft/Phi-3-mini-4k-instruct. Phi-4-mini's, which TRL has no
    training variant of: model=tiny_phi4mini trains with conf/templates/phi4mini.jinja, as model=phi4mini does.
    """
    if kind == "phi4mini":
        return PHI4_MINI_TEMPLATE
    from importlib.resources import files

    return (files("trl") / "chat_templates" / "phi3.jinja").read_text(encoding="utf-8")


def chat_texts(rows) -> list[str]:
    return [m["content"] for r in rows for m in r["messages"]]


def cache_key(shape: dict, texts: list[str]) -> str:
    # BUILD: bumped when the tokenizer or model is built differently, so a stale cached copy is not reused
    h = hashlib.sha256(
        json.dumps({**shape, "build": BUILD}, sort_keys=True).encode() + chat_template(arch(shape)).encode()
    )
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def folder(shape: dict, texts: list[str], cache_dir: Path) -> Path:
    return Path(cache_dir) / f"tiny-{arch(shape)}-{cache_key(shape, texts)}"


def build_tokenizer(texts: list[str], vocab_size: int, kind: str = "phi3"):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = SPECIAL_TOKENS[kind]
    tok = Tokenizer(models.BPE())
    # byte level: any text (Japanese, emoji) encodes, unseen characters included
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    roles = [t for t in special if t not in ("<|endoftext|>", "<|end|>", "<|pad|>")]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",  # as the real models' tokenizers; model.pad_token (phi4mini: <|pad|>) replaces it
        additional_special_tokens=roles,
        **({"bos_token": "<|endoftext|>"} if kind == "phi4mini" else {}),
    )
    fast.chat_template = chat_template(kind)
    fast.model_max_length = 1 << 20
    return fast


def build_model(tokenizer, shape: dict):
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    torch.manual_seed(shape["seed"])
    end_ids = stop_ids(tokenizer)
    phi4 = arch(shape) == "phi4mini"
    rows = len(tokenizer)
    if phi4:  # Phi-4-mini's embedding has spare rows past its tokenizer (200,064 for 200,029 tokens): so does this
        rows = -(-(rows + 1) // 64) * 64
    config = Phi3Config(
        vocab_size=rows,
        hidden_size=shape["hidden_size"],
        num_hidden_layers=shape["num_hidden_layers"],
        num_attention_heads=shape["num_attention_heads"],
        num_key_value_heads=shape.get("num_key_value_heads") or shape["num_attention_heads"],
        intermediate_size=shape["intermediate_size"],
        max_position_embeddings=shape["max_position_embeddings"],
        original_max_position_embeddings=shape["max_position_embeddings"],
        partial_rotary_factor=shape.get("partial_rotary_factor") or 1.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id if phi4 else end_ids[1],
        eos_token_id=tokenizer.eos_token_id if phi4 else end_ids,
        tie_word_embeddings=bool(shape.get("tie_word_embeddings")),
        use_cache=True,
    )
    model = Phi3ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=end_ids, pad_token_id=tokenizer.pad_token_id)
    return model


def build_or_load(rows, shape: dict, cache_dir: Path) -> Path:
    """Folder of the tiny model for these chats and this shape; built once, then reused."""
    texts = chat_texts(rows)
    target = folder(shape, texts, cache_dir)
    if (target / "config.json").exists():
        return target
    tokenizer = build_tokenizer(texts, shape["vocab_size"], arch(shape))
    model = build_model(tokenizer, shape)
    # built aside, then renamed into place: rename(2) is atomic, and fails onto a folder another process (a second
    # torchrun rank, a second run sharing ~/.cache) put there first; the loser uses the winner's (the same bytes)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").exists():
            raise
    return target


def tokenizer_for(rows, shape: dict, cache_dir: Path):
    """The tokenizer build_or_load would give these chats, without writing anything: the cached one, or built in
    memory (the plan's template audit)."""
    texts = chat_texts(rows)
    target = folder(shape, texts, cache_dir)
    if (target / "config.json").exists():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(target)
    return build_tokenizer(texts, shape["vocab_size"], arch(shape))


def stop_ids(tokenizer) -> list:
    """The generation config's eos ids build_model writes: <|end|> and <|endoftext|>."""
    return [tokenizer.convert_tokens_to_ids(t) for t in ("<|end|>", "<|endoftext|>")]
