"""The template audit (trainer/audit.py): one broken template per check is refused with a message naming the
problem, before any training step; the shipped templates pass; model.chat_template trains and serves as given."""

import json
from pathlib import Path

import pytest

from trainer import audit, chats, tiny

from ..support.helpers import SAMPLE, first_turn, runner_cli

# Phi-3's turns, with generation markers placed wrongly in each broken variant (each a real Jinja file in the tests)
TURN = "{{- '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
LOOP = (
    "{%- for message in messages %}{%- if message['role'] == 'assistant' %}ASSISTANT{%- else %}OTHER{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}PROMPT{%- endif %}"
)


def template(assistant: str, other: str = TURN, prompt: str = "{{- '<|assistant|>\\n' }}") -> str:
    return LOOP.replace("ASSISTANT", assistant).replace("OTHER", other).replace("PROMPT", prompt)


GOOD = template(
    "{{- '<|assistant|>\\n' }}{%- generation %}{{- message['content'] + '<|end|>\\n' }}{%- endgeneration %}"
)
BROKEN = {
    # a: the end-of-turn token outside the trained span
    "a": (
        template(
            "{{- '<|assistant|>\\n' }}{%- generation %}{{- message['content'] }}{%- endgeneration %}{{- '<|end|>\\n' }}"
        ),
        "carries no loss: the model is never taught to stop",
    ),
    # a: no end-of-turn token after an answer at all
    "a-none": (
        template("{{- '<|assistant|>\\n' }}{%- generation %}{{- message['content'] + '\\n' }}{%- endgeneration %}"),
        "is followed by no end-of-turn token",
    ),
    # b: the user's turns trained too
    "b": (
        template(
            "{{- '<|assistant|>\\n' }}{%- generation %}{{- message['content'] + '<|end|>\\n' }}{%- endgeneration %}",
            other="{%- generation %}" + TURN + "{%- endgeneration %}",
        ),
        "of the user turn messages[0] carry loss",
    ),
    # b: an assistant turn with no trained token
    "b-none": (
        template("{{- '<|assistant|>\\n' + message['content'] + '<|end|>\\n' }}{%- generation %}{%- endgeneration %}"),
        "carries no loss: nothing of the answer is trained",
    ),
    # c: the endpoint prompts without the newline the answers were trained after
    "c": (
        template(
            "{{- '<|assistant|>\\n' }}{%- generation %}{{- message['content'] + '<|end|>\\n' }}{%- endgeneration %}",
            prompt="{{- '<|assistant|>' }}",
        ),
        "ends before the first trained token of the answer: '\\n' lies between them",
    ),
}


@pytest.fixture(scope="module")
def rows():
    return chats.load(SAMPLE)


@pytest.fixture(scope="module")
def tokenizer(rows):
    """The tiny model's tokenizer (Phi-3's special tokens), learnt from the shipped sample."""
    return tiny.build_tokenizer(tiny.chat_texts(rows), 600)


def stops(tok, *names):
    return [tok.convert_tokens_to_ids(n) for n in names or ("<|end|>", "<|endoftext|>")]


def run_audit(tok, rows, chat_template=None, stop_ids=None, collate=None, assistant_only_loss=True, max_length=256):
    original = tok.chat_template
    tok.chat_template = chat_template or original
    try:
        train = {
            "assistant_only_loss": assistant_only_loss,
            "max_length": max_length,
            "packing": False,
            "packing_strategy": "bfd",
        }
        if collate is None:
            return audit.for_training(train, tok, stop_ids or stops(tok), rows)
        return audit.run(
            tok,
            rows,
            assistant_only_loss=assistant_only_loss,
            max_length=max_length,
            stop_ids=stop_ids or stops(tok),
            collate=collate,
        )
    finally:
        tok.chat_template = original


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_broken_template_is_refused_naming_the_problem_and_the_fix(tokenizer, rows, case):
    text, phrase = BROKEN[case]
    found = run_audit(tokenizer, rows, text)
    letters = {k for k, _ in found.problems}
    assert case[0] in letters, found.problems
    message = next(m for k, m in found.problems if k == case[0])
    assert phrase in message and "Fix:" in message and message.startswith("row ")
    assert audit.refusal(found).startswith("the chat template would train a model that does not answer and stop")


def test_stop_ids_without_the_end_of_turn_token_are_refused(tokenizer, rows):
    found = run_audit(tokenizer, rows, stop_ids=stops(tokenizer, "<|endoftext|>"))
    assert [k for k, _ in found.problems] == ["d"]
    assert "do not include the end-of-turn token ['<|end|>']" in found.problems[0][1]


def test_pad_equal_to_the_end_of_turn_token_masked_by_the_collator_is_refused(tokenizer, rows):
    """The Phi-4 trap: pad is the end-of-turn token, and a collator that masks pad ids takes its loss away."""
    from transformers import DataCollatorForLanguageModeling

    pad = tokenizer.pad_token
    tokenizer.pad_token = "<|end|>"
    try:
        masks_pad = DataCollatorForLanguageModeling(tokenizer, mlm=False)  # labels = ids, pad ids set to -100
        found = run_audit(tokenizer, rows, collate=lambda exs: masks_pad([{"input_ids": e["input_ids"]} for e in exs]))
        assert [k for k, _ in found.problems] == ["e"], found.problems
        assert "pad is '<|end|>', the same id as the end-of-turn token" in found.problems[0][1]
        # TRL's own collator pads labels with -100 instead: the same pad is harmless there
        assert run_audit(tokenizer, rows).problems == []
    finally:
        tokenizer.pad_token = pad


@pytest.mark.parametrize("name", ["phi3", "phi3_5"])
def test_the_shipped_models_templates_pass(tokenizer, rows, name):
    """Phi-3-mini's and Phi-3.5-mini's own templates (as TRL ships them; it swaps in their training variants) with
    their generation configs' stop ids (<|endoftext|>, <|assistant|>, <|end|>), on the tiny model's vocabulary."""
    from importlib.resources import files

    text = (files("trl") / "chat_templates" / f"{name}.jinja").read_text()
    found = run_audit(tokenizer, rows, text, stops(tokenizer, "<|endoftext|>", "<|assistant|>", "<|end|>"))
    assert found.problems == [] and found.stop_tokens == ["<|end|>"] and found.rows == len(rows)
    assert run_audit(tokenizer, rows, text, assistant_only_loss=False).problems == []


def test_the_rendering_marks_the_trained_tokens_and_counts_rows_cut_before_their_stop(tokenizer, rows):
    found = run_audit(tokenizer, rows, GOOD)
    first = rows[0]["messages"]
    assert found.problems == [] and found.cut_before_stop == 1  # the sample's one row over 256 tokens
    assert found.first.startswith("<|user|>\u21b5\n" + first[0]["content"] + "<|end|>")
    assert "\u27e6" + first[1]["content"] + "<|end|>\u21b5\n\u27e7" in found.first
    short = run_audit(tokenizer, rows, GOOD, max_length=24)
    # cut inside an answer: counted, not refused (a row cut before its answer starts teaches nothing, and is not)
    inside = sum(
        len(tokenizer.apply_chat_template(first_turn(r)[0], add_generation_prompt=True, return_dict=True)["input_ids"])
        < 24
        for r in rows
    )
    assert short.problems == [] and short.cut_before_stop == inside > 0
    assert "max_length=24 cuts here" in short.first


def write_template(tmp_path, text) -> Path:
    path = tmp_path / "template.jinja"
    path.write_text(text)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("case", ["a", "b", "c"])
def test_the_runner_refuses_a_broken_template_before_training(tmp_path, case):
    r = runner_cli(
        "stages=[data,train]", f"model.chat_template={write_template(tmp_path, BROKEN[case][0])}", cwd=tmp_path
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"  {case}. row " in r.stderr and BROKEN[case][1] in r.stderr
    run_dir = tmp_path / "outputs" / "default" / "local_tiny_sample"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["train"]["status"] == "failed"
    assert not list((run_dir / "train").glob("*/checkpoints")) and "eval loss before" not in r.stdout
    # the plan refuses it too, once the data stage has run
    plan = runner_cli("plan=true", f"model.chat_template={tmp_path / 'template.jinja'}", cwd=tmp_path)
    assert plan.returncode == 2 and BROKEN[case][1] in plan.stderr and "Traceback" not in plan.stderr


@pytest.mark.slow
def test_a_model_whose_stop_ids_miss_the_end_of_turn_token_is_refused(tmp_path, rows):
    """A local model folder (model.id=<folder>) whose generation config stops at <|endoftext|> only."""
    tok = tiny.build_tokenizer(tiny.chat_texts(rows), 600)
    model = tiny.build_model(
        tok,
        {
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "max_position_embeddings": 512,
            "seed": 0,
        },
    )
    model.generation_config.eos_token_id = [tok.eos_token_id]
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    r = runner_cli("stages=[data,train]", "model.source=hub", f"model.id={folder}", "model.tiny=null", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "  d. the model's stop ids" in r.stderr and "['<|end|>']" in r.stderr


@pytest.mark.slow
def test_a_template_of_ones_own_trains_and_serves(tmp_path):
    """model.chat_template with a default system turn: trained with it, saved with the model, prompted with it."""
    own = GOOD.replace(
        "{%- for message in messages %}",
        "{%- if messages[0]['role'] != 'system' %}{{- '<|system|>\\nBe brief.<|end|>\\n' }}{%- endif %}"
        "{%- for message in messages %}",
        1,
    )
    r = runner_cli("stages=[data,train]", f"model.chat_template={write_template(tmp_path, own)}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "template audit passed" in r.stdout and "<|system|>\u21b5\nBe brief.<|end|>" in r.stdout
    manifest = json.loads((tmp_path / "outputs" / "default" / "local_tiny_sample" / "manifest.json").read_text())
    from serving import scoring

    scorer = scoring.Scorer(manifest["stages"]["train"]["outputs"]["mlflow_model_dir"])
    assert scorer.tokenizer.chat_template == own
    prompt, _ = scorer.encode([{"role": "user", "content": "hi"}], {"max_new_tokens": 8})
    assert prompt == "<|system|>\nBe brief.<|end|>\n<|user|>\nhi<|end|>\n<|assistant|>\n"
    row = chats.load(manifest["stages"]["data"]["outputs"]["train_file"])[0]["messages"]
    answer = scoring.score_body(scorer, {"input_data": [row[:-1]], "params": {"max_new_tokens": 96}})[0]
    assert answer == row[-1]["content"]
    # an edited template is a changed input: train runs again
    write_template(tmp_path, own.replace("Be brief.", "Be kind."))
    plan = runner_cli("stages=[train]", "plan=true", f"model.chat_template={tmp_path / 'template.jinja'}", cwd=tmp_path)
    assert "train: would run (inputs changed or outputs missing)" in plan.stdout, plan.stdout


def test_a_template_without_generation_markers_that_trl_does_not_know_is_refused(tokenizer, rows):
    """Assistant-only loss needs {% generation %} markers; TRL swaps in a training variant only of templates it knows."""
    unknown = TURN.join(
        [
            "{%- for message in messages %}",
            "{%- endfor %}{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}",
        ]
    )
    found = run_audit(tokenizer, rows, unknown)
    assert [k for k, _ in found.problems] == ["b"], found.problems
    assert "has no {% generation %} markers and TRL ships no training variant" in found.problems[0][1]
    assert "Fix: wrap exactly each assistant message" in found.problems[0][1]
    assert run_audit(tokenizer, rows, unknown, assistant_only_loss=False).problems == []  # every token trained


# ---- Phi-4-mini: its own template (no training variant in TRL), the one this project ships, its pad ----------------

PHI4_TEMPLATE = Path(__file__).resolve().parents[2] / "conf" / "templates" / "phi4mini.jinja"
TOOLS = '[{"name": "get_weather", "description": "The weather in a city", "parameters": {"city": {"type": "str"}}}]'
CHATS = [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi\nthere"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "And now?"},
        {"role": "assistant", "content": "Still here."},
    ],
    [
        {"role": "system", "content": "You may call tools.", "tools": TOOLS},
        {"role": "user", "content": "Weather in Kyoto?"},
        {"role": "assistant", "content": '[{"name": "get_weather", "arguments": {"city": "Kyoto"}}]'},
    ],
]


@pytest.fixture(scope="module")
def phi4_tokenizer(rows):
    """The tiny_phi4mini tokenizer (Phi-4-mini's special tokens and own template), learnt from the shipped sample."""
    return tiny.build_tokenizer(tiny.chat_texts(rows), 600, "phi4mini")


@pytest.mark.parametrize("chat", range(len(CHATS)))
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_the_shipped_phi4mini_template_renders_exactly_what_phi4minis_own_renders(
    phi4_tokenizer, chat, generation_prompt
):
    """No newlines, tools as a string on the system message, eos after the chat: byte for byte, token for token."""
    messages = CHATS[chat][:-1] if generation_prompt else CHATS[chat]
    own = phi4_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    ours = phi4_tokenizer.apply_chat_template(
        messages, chat_template=PHI4_TEMPLATE.read_text(), tokenize=False, add_generation_prompt=generation_prompt
    )
    assert ours == own and "\n" not in own.replace("Hi\nthere", "")
    assert own.endswith("<|assistant|>" if generation_prompt else "<|end|><|endoftext|>")
    if chat == 2:
        assert own.startswith(f"<|system|>You may call tools.<|tool|>{TOOLS}<|/tool|><|end|><|user|>")


def test_phi4minis_own_template_cannot_train_assistant_only_and_the_shipped_one_passes(phi4_tokenizer, rows):
    """TRL has no training variant of Phi-4-mini's template: refused. The shipped one, with its generation markers,
    passes with Phi-4-mini's stop ids (<|end|>, <|endoftext|>): the answer and its <|end|> carry loss, nothing else."""
    from trainer.hub import prepare_tokenizer

    found = run_audit(phi4_tokenizer, rows, tiny.PHI4_MINI_TEMPLATE)
    assert [k for k, _ in found.problems] == ["b"] and "TRL ships no training variant" in found.problems[0][1]
    spec = {"model": {"chat_template": str(PHI4_TEMPLATE), "pad_token": "<|pad|>"}}
    tok = prepare_tokenizer(tiny.build_tokenizer(tiny.chat_texts(rows), 600, "phi4mini"), spec)
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id not in stops(tok)
    found = run_audit(tok, rows)
    assert found.problems == [] and found.stop_tokens == ["<|end|>"] and found.rows == len(rows)
    assert "<|end|><|assistant|>\u27e6" in found.first and "<|end|>\u27e7<|endoftext|>" in found.first
    assert run_audit(tok, rows, assistant_only_loss=False).problems == []


def test_with_phi4minis_pad_the_stop_token_keeps_its_loss_even_under_a_collator_that_masks_pad(rows):
    """Phi-4-mini's config pads with <|endoftext|>, its eos and a stop id: a collator that masks pad ids would take
    the loss of every eos the chat ends with. model.pad_token=<|pad|> gives padding an id of its own."""
    from transformers import DataCollatorForLanguageModeling

    from trainer.hub import prepare_tokenizer

    spec = {"model": {"chat_template": str(PHI4_TEMPLATE), "pad_token": "<|pad|>"}}
    tok = prepare_tokenizer(tiny.build_tokenizer(tiny.chat_texts(rows), 600, "phi4mini"), spec)
    masks_pad = DataCollatorForLanguageModeling(tok, mlm=False)
    collate = lambda exs: masks_pad([{"input_ids": e["input_ids"]} for e in exs])  # noqa: E731
    assert run_audit(tok, rows, collate=collate, assistant_only_loss=False).problems == []
    batch = collate([{"input_ids": tok.apply_chat_template(CHATS[0], tokenize=True, return_dict=True)["input_ids"]}])
    assert batch["labels"][0][-1] == tok.convert_tokens_to_ids("<|endoftext|>")  # the eos keeps its loss


def test_a_pad_token_the_vocabulary_lacks_is_added_into_the_spare_rows_or_the_embeddings_grow(rows):
    """Phi-4-mini's tokenizer has no <|pad|>: it is added, and lands in the embedding's spare rows (200,064 rows for
    200,029 tokens there); a model without spare rows grows to the next multiple of 64. The configs pad with it."""
    from transformers import Phi3Config, Phi3ForCausalLM

    from trainer.hub import fit_embeddings, prepare_tokenizer

    tok = tiny.build_tokenizer(tiny.chat_texts(rows), 600, "phi3")
    before = len(tok)
    tok = prepare_tokenizer(tok, {"model": {"pad_token": "<|pad|>"}})
    assert len(tok) == before + 1 and tok.pad_token_id == before and tok.pad_token_id != tok.eos_token_id
    for rows_, grown in ((before + 30, before + 30), (before, -(-(before + 1) // 64) * 64)):
        config = Phi3Config(
            vocab_size=rows_,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            pad_token_id=tok.eos_token_id,  # as the base model's config has it, before fit_embeddings
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.eos_token_id,
        )
        model = fit_embeddings(Phi3ForCausalLM(config), tok)
        assert model.get_input_embeddings().weight.shape[0] == grown
        assert model.config.pad_token_id == model.generation_config.pad_token_id == tok.pad_token_id
