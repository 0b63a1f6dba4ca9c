"""Packing never lets one conversation see another: a chat's per-token loss is the same packed as alone.

TRL's bfd packing is padding-free: rows are concatenated and position_ids restart at each chat, with no attention
mask. The model must then attend within each chat only, under every attention implementation the spec offers.
"""

import pytest
import torch

from runner.spec.validate import schema

IMPLEMENTATIONS = schema()["properties"]["model"]["properties"]["attn_implementation"]["enum"]
SHAPE = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    vocab_size=300,
    max_position_embeddings=128,
    seed=0,
)
CHATS = [
    [{"role": "user", "content": "what is the capital of france"}, {"role": "assistant", "content": "paris"}],
    [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "two plus two"},
        {"role": "assistant", "content": "four, as always"},
    ],
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.tiny import build_or_load

    folder = build_or_load([{"messages": c} for c in CHATS], SHAPE, tmp_path_factory.mktemp("tiny"))
    return folder, AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM


def token_losses(model, ids, position_ids=None):
    with torch.no_grad():  # as in training: no KV cache (with one, transformers does not look for packed rows)
        logits = model(input_ids=ids, position_ids=position_ids, use_cache=False).logits[0, :-1]
    return torch.nn.functional.cross_entropy(logits.float(), ids[0, 1:], reduction="none")


@pytest.mark.parametrize("attn", [a for a in IMPLEMENTATIONS if a != "flash_attention_2"])
def test_a_packed_chat_scores_as_it_does_alone(tiny, attn):
    folder, tok, auto = tiny
    model = auto.from_pretrained(folder, attn_implementation=attn).eval()
    rows = [tok.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"] for c in CHATS]
    packed = torch.tensor([rows[0] + rows[1]])
    positions = torch.tensor([list(range(len(rows[0]))) + list(range(len(rows[1])))])
    packed_losses = token_losses(model, packed, positions)
    for i, row in enumerate(rows):
        alone = token_losses(model, torch.tensor([row]))
        start = 0 if i == 0 else len(rows[0])
        # the tokens of chat i, predicted from chat i alone (the first token of chat 1 follows chat 0: not compared)
        got = packed_losses[start : start + len(row) - 1]
        assert torch.allclose(got, alone, atol=1e-5), (attn, i, (got - alone).abs().max())


def test_flash_attention_is_offered_only_where_it_installs():
    """flash_attention_2 needs the flash-attn package and a GPU; it is in the schema for GPU clusters."""
    assert "flash_attention_2" in IMPLEMENTATIONS and "sdpa" in IMPLEMENTATIONS and "eager" in IMPLEMENTATIONS


def test_with_a_kv_cache_packed_chats_would_see_each_other(tiny):
    """Why the trainer turns the cache off: transformers looks for packed rows only when there is no cache."""
    folder, tok, auto = tiny
    model = auto.from_pretrained(folder, attn_implementation="sdpa").eval()
    rows = [tok.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"] for c in CHATS]
    packed = torch.tensor([rows[0] + rows[1]])
    positions = torch.tensor([list(range(len(rows[0]))) + list(range(len(rows[1])))])
    with torch.no_grad():
        cached = model(input_ids=packed, position_ids=positions, use_cache=True).logits[0, len(rows[0]) :]
        alone = model(input_ids=torch.tensor([rows[1]]), use_cache=False).logits[0]
    assert not torch.allclose(cached, alone, atol=1e-3)


@pytest.mark.slow
def test_the_trainer_trains_packed_rows_without_a_kv_cache(compose_spec, tmp_path):
    import json

    from trainer.fit import setup

    spec = compose_spec("train.packing=true", "train.activation_checkpointing=false")
    spec["model"]["tiny"] = dict(SHAPE)
    rows = "".join(json.dumps({"messages": c}) + "\n" for c in CHATS * 3)
    for name in ("train.jsonl", "eval.jsonl"):
        (tmp_path / name).write_text(rows)
    job = setup(
        spec,
        tmp_path / "train.jsonl",
        tmp_path / "eval.jsonl",
        tmp_path / "out",
        tmp_path / "ckpt",
        tmp_path / "cache",
        lambda *_: None,
    )
    assert job.trainer.padding_free and job.trainer.model.config.use_cache is False


@pytest.mark.parametrize("window", [2047, 262144])  # Phi-3-mini-4k's config; Phi-3.5-mini's and Phi-4-mini's
def test_sdpa_attends_as_eager_does_at_the_real_configs_sliding_window_packed_or_not(window):
    """The default attention (SDPA) at the attention settings of the real models' config.json: a sequence longer than
    Phi-3-mini-4k's 2,047-token window scores the same under SDPA as under eager attention (both mask the window),
    and so do two packed chats of 1,100 tokens whose positions restart (each sees only itself)."""
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    config = Phi3Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=128,
        vocab_size=500,
        max_position_embeddings=4096,
        original_max_position_embeddings=4096,
        sliding_window=window,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    weights = Phi3ForCausalLM(config).state_dict()
    models = {}
    for attn in ("eager", "sdpa"):
        models[attn] = Phi3ForCausalLM(Phi3Config(**config.to_dict(), attn_implementation=attn)).eval()
        models[attn].load_state_dict(weights)
    ids = torch.randint(3, 500, (1, 2300))
    long = {attn: token_losses(m, ids) for attn, m in models.items()}
    assert torch.allclose(long["sdpa"], long["eager"], atol=1e-4), (long["sdpa"] - long["eager"]).abs().max()
    rows = [ids[0, :1100].tolist(), ids[0, 1100:2200].tolist()]
    packed = torch.tensor([rows[0] + rows[1]])
    positions = torch.tensor([list(range(1100)) * 2])
    got = token_losses(models["sdpa"], packed, positions)[1100:]
    alone = token_losses(models["sdpa"], torch.tensor([rows[1]]))
    assert torch.allclose(got, alone, atol=1e-4), (got - alone).abs().max()
    if window == 2047:  # the window does mask: without it, the last tokens would see all 2,300
        no_window = Phi3ForCausalLM(Phi3Config(**{**config.to_dict(), "sliding_window": None})).eval()
        no_window.load_state_dict(weights)
        assert not torch.allclose(token_losses(no_window, ids)[-10:], long["sdpa"][-10:], atol=1e-4)
