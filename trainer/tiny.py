"""A tiny Phi-3: Phi3ForCausalLM with a small config and a BPE tokenizer trained on the chats.

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
SPECIAL_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def chat_template() -> str:
    """Phi-3-mini's own chat template, as TRL ships it: each turn "<|role|>\n{content}<|end|>\n".

    The same text as the real model's, so TRL recognises it and trains on assistant turns only with its
    training variant (generation markers), exactly as it does for microsoft/Phi-3-mini-4k-instruct.
    """
    from importlib.resources import files

    return (files("trl") / "chat_templates" / "phi3.jinja").read_text(encoding="utf-8")


def chat_texts(rows) -> list[str]:
    return [m["content"] for r in rows for m in r["messages"]]


def cache_key(shape: dict, texts: list[str]) -> str:
    # BUILD: bumped when the tokenizer or model is built differently, so a stale cached copy is not reused
    h = hashlib.sha256(json.dumps({**shape, "build": BUILD}, sort_keys=True).encode() + chat_template().encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def build_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # byte level: any text (Japanese, emoji) encodes, unseen characters included
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:4],
    )
    fast.chat_template = chat_template()
    fast.model_max_length = 1 << 20
    return fast


def build_model(tokenizer, shape: dict):
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    torch.manual_seed(shape["seed"])
    end_ids = stop_ids(tokenizer)
    config = Phi3Config(
        vocab_size=len(tokenizer),
        hidden_size=shape["hidden_size"],
        num_hidden_layers=shape["num_hidden_layers"],
        num_attention_heads=shape["num_attention_heads"],
        num_key_value_heads=shape["num_attention_heads"],
        intermediate_size=shape["intermediate_size"],
        max_position_embeddings=shape["max_position_embeddings"],
        original_max_position_embeddings=shape["max_position_embeddings"],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=end_ids[1],
        eos_token_id=end_ids,
        tie_word_embeddings=False,
        use_cache=True,
    )
    model = Phi3ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=end_ids, pad_token_id=tokenizer.pad_token_id)
    return model


def build_or_load(rows, shape: dict, cache_dir: Path) -> Path:
    """Folder of the tiny model for these chats and this shape; built once, then reused."""
    texts = chat_texts(rows)
    target = Path(cache_dir) / f"tiny-phi3-{cache_key(shape, texts)}"
    if (target / "config.json").exists():
        return target
    tokenizer = build_tokenizer(texts, shape["vocab_size"])
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
    target = Path(cache_dir) / f"tiny-phi3-{cache_key(shape, texts)}"
    if (target / "config.json").exists():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(target)
    return build_tokenizer(texts, shape["vocab_size"])


def stop_ids(tokenizer) -> list:
    """The generation config's eos ids build_model writes: <|end|> and <|endoftext|>."""
    return [tokenizer.convert_tokens_to_ids(t) for t in ("<|end|>", "<|endoftext|>")]
