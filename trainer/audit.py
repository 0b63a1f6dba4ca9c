"""The template audit: which tokens of a chat carry loss, and whether the model can learn to stop.

Run before any training step (the local train stage, the Azure job) and by `plan=true` once the data stage has run.
The rows are labelled as TRL's SFTTrainer labels them (the chat template it trains with, its assistant mask, its
collator); train() also checks the trainer's own first rows against them, so the audit cannot drift from TRL.

What it refuses, each with the fix (a list of problems; empty means the template is sound):
  a. an assistant turn's end-of-turn token (Phi-3: <|end|>) carries no loss: the model never learns to stop;
  b. with assistant_only_loss, a system/user token carries loss, or an assistant turn carries none;
  c. the prompt the endpoint builds (its template with the generation prompt) is not, byte for byte and token for
     token, the training rendering up to the first assistant token;
  d. the model's stop ids (generation config eos) do not include the end-of-turn token;
  e. the collator drops the end-of-turn token's loss (pad == eos and pad masked out of the loss: the Phi-4 trap).
Rows that max_length cuts inside an answer, before its end-of-turn token, are counted (they teach the model not
to stop), not refused.
"""

import re
from dataclasses import dataclass, field

MARK_OPEN, MARK_CLOSE = "\u27e6", "\u27e7"  # ⟦ ⟧ around the tokens that carry loss
CHECKED_ROWS = 32  # rows whose every turn is checked (and whose labels are compared with the trainer's)


def training_template(tokenizer, assistant_only_loss: bool):
    """The chat template SFTTrainer tokenizes with (None: the tokenizer's own), chosen as TRL chooses it."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if not assistant_only_loss or has_generation_markers(tokenizer.chat_template):
        return None
    return get_training_chat_template(tokenizer)


def label(tokenizer, messages, template, assistant_only_loss: bool) -> tuple[list, list]:
    """(input_ids, labels) of one chat as TRL's SFTTrainer builds them (labels -100 where no loss), untruncated."""
    out = tokenizer.apply_chat_template(
        messages,
        chat_template=template,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=assistant_only_loss,
    )
    ids = list(out["input_ids"])
    mask = out.get("assistant_masks") if assistant_only_loss else None
    return ids, [t if mask is None or m else -100 for t, m in zip(ids, mask or ids)]


def _ids(tokenizer, messages, template=None, generation_prompt=False) -> list:
    return list(
        tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=True, return_dict=True, add_generation_prompt=generation_prompt
        )["input_ids"]
    )


def text_of(tokenizer, ids) -> str:
    return tokenizer.decode(list(ids))


def _common(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class Turn:
    role: str
    start: int  # first token of the turn (its header)
    end: int  # one past its last token
    answer: int = -1  # assistant: first token after the generation prompt
    stop: int = -1  # assistant: index of its end-of-turn token (-1: none)


@dataclass
class Row:
    ids: list
    labels: list
    turns: list
    problems: list = field(default_factory=list)


def analyse(tokenizer, messages, template, serving_template, assistant_only_loss: bool) -> Row:
    """Label one chat and find each turn's tokens; check the endpoint's prompt for every assistant turn (c)."""
    ids, labels = label(tokenizer, messages, template, assistant_only_loss)
    text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    added = set(tokenizer.get_added_vocab().values())
    bounds = [0] + [_common(_ids(tokenizer, messages[:j], template), ids) for j in range(1, len(messages))] + [len(ids)]
    row = Row(ids, labels, [])
    for j, m in enumerate(messages):
        turn = Turn(m["role"], bounds[j], max(bounds[j + 1], bounds[j]))
        if m["role"] == "assistant":
            prompt = tokenizer.apply_chat_template(
                messages[:j], chat_template=serving_template, tokenize=False, add_generation_prompt=True
            )
            prompt_ids = _ids(tokenizer, messages[:j], serving_template, generation_prompt=True)
            if not text.startswith(prompt):
                at = _common(text, prompt)
                row.problems.append(
                    (
                        "c",
                        f"the endpoint's prompt for messages[:{j}] differs from the training "
                        f"rendering at character {at}: the endpoint has {prompt[at : at + 30]!r}, "
                        f"training has {text[at : at + 30]!r}",
                    )
                )
            elif ids[: len(prompt_ids)] != prompt_ids:
                row.problems.append(
                    (
                        "c",
                        f"the endpoint's prompt for messages[:{j}] renders the same text but "
                        "tokenizes differently where the answer starts",
                    )
                )
            turn.answer = min(len(prompt_ids), turn.end)
            turn.stop = next((i for i in range(turn.answer, turn.end) if ids[i] in added), -1)
            first = next((i for i in range(turn.start, turn.end) if labels[i] != -100), None)
            if assistant_only_loss and first is not None and first != turn.answer and not row.problems:
                gap = text_of(tokenizer, ids[min(first, turn.answer) : max(first, turn.answer)])
                row.problems.append(
                    (
                        "c",
                        f"the endpoint's prompt for messages[:{j}] ends "
                        f"{'before' if first > turn.answer else 'after'} the first trained token "
                        f"of the answer: {gap!r} lies between them",
                    )
                )
        row.turns.append(turn)
    return row


def _show(tokenizer, ids, labels, limit: int | None = None) -> str:
    """The chat as text with the tokens that carry loss inside ⟦ ⟧; newlines shown as ↵ and kept."""
    out, inside = [], False
    for i, (t, lab) in enumerate(zip(ids, labels)):
        if limit is not None and i == limit:
            out.append(f"{MARK_CLOSE if inside else ''} \u2702 max_length={limit} cuts here; not trained: ")
            inside = False
        trained = lab != -100 and (limit is None or i < limit)
        if trained != inside:
            out.append(MARK_OPEN if trained else MARK_CLOSE)
            inside = trained
        out.append(tokenizer.decode([t]).replace("\n", "\u21b5\n"))
    return "".join(out) + (MARK_CLOSE if inside else "")


@dataclass
class Audit:
    problems: list  # (check letter, message), each naming the problem and the fix
    rows: int  # rows audited
    cut_before_stop: int  # rows max_length cuts inside an answer, before its end-of-turn token
    stop_tokens: list  # the end-of-turn token(s) found after the answers
    first: str  # the first chat, rendered with its loss tokens marked
    report: str  # the first few chats, for a file in the run directory
    labelled: list  # (ids, labels) of the checked rows, for comparing with the trainer's own

    def summary(self, max_length=None) -> str:
        stops = ", ".join(self.stop_tokens) or "none"
        cut = (
            (
                f"; {self.cut_before_stop} row(s) cut by max_length={max_length} before their end-of-turn token (they "
                "teach the model not to stop)"
            )
            if self.cut_before_stop
            else ""
        )
        return f"template audit passed on {self.rows} rows: the end-of-turn token {stops} carries loss and is a stop id{cut}"


def run(
    tokenizer, rows, *, assistant_only_loss: bool, max_length: int | None, stop_ids, collate=None, shown: int = 3
) -> Audit:
    """Audit the training rows: every turn of the first CHECKED_ROWS, and the max_length cut of all of them."""
    from .audit_checks import check_collator, check_row, fix_for

    template = training_template(tokenizer, assistant_only_loss)
    serving = tokenizer.chat_template
    stop_ids = set(stop_ids if isinstance(stop_ids, (list, tuple, set)) else [stop_ids]) - {None}
    problems, stops, cut, labelled, shown_rows = [], set(), 0, [], []
    lengths_fit = max_length is None
    for n, r in enumerate(rows):
        checked = n < CHECKED_ROWS
        if not checked and (lengths_fit or len(_ids(tokenizer, r["messages"], template)) <= max_length):
            continue  # only a row longer than max_length can be cut before its end-of-turn token
        row = analyse(tokenizer, r["messages"], template, serving, assistant_only_loss)
        cut += any(
            t.role == "assistant"
            and max_length is not None
            and t.answer < max_length
            and (t.stop < 0 or t.stop >= max_length)
            for t in row.turns
        )
        if checked:
            problems += [
                (k, f"row {n + 1}: {msg}")
                for k, msg in row.problems + check_row(tokenizer, row, max_length, assistant_only_loss)
            ]
            stops |= {row.ids[t.stop] for t in row.turns if t.role == "assistant" and t.stop >= 0}
            labelled.append((row.ids, row.labels))
            if n < shown:
                cut_here = max_length if max_length is not None and len(row.ids) > max_length else None
                shown_rows.append(_show(tokenizer, row.ids, row.labels, cut_here))
    missing = sorted(stops - stop_ids)
    if missing:
        problems.append(
            (
                "d",
                f"the model's stop ids {sorted(stop_ids)} do not include the end-of-turn token "
                f"{tokenizer.convert_ids_to_tokens(missing)} that ends every answer: generation would "
                "run on past the answer",
            )
        )
    if collate is not None and labelled:
        problems += check_collator(tokenizer, labelled, stops, collate, max_length)
    problems = _dedupe(problems)
    problems = [(k, f"{msg}. {fix_for(k, assistant_only_loss)}") for k, msg in problems]
    names = tokenizer.convert_ids_to_tokens(sorted(stops))
    report = "\n\n".join(f"--- chat {i + 1} ---\n{text}" for i, text in enumerate(shown_rows))
    return Audit(problems, len(rows), cut, names, shown_rows[0] if shown_rows else "", report, labelled)


def _dedupe(problems):
    """One line per check and kind of problem: the first row that shows it, and how many more rows do."""
    first, more = {}, {}
    for k, msg in problems:
        key = (k, re.sub(r"\d+", "#", msg.split(": ", 1)[-1]))  # the message without its row and counts
        if key in first:
            more[key] += 1
        else:
            first[key], more[key] = msg, 0
    return [
        (k, msg + (f" (and {more[(k, key)]} more like it)" if more[(k, key)] else ""))
        for (k, key), msg in first.items()
    ]


def collator_like_trl(tokenizer, train: dict):
    """The collator SFTTrainer builds for these settings (its pad id; padding-free with bfd packing)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    padding_free = bool(train.get("padding_free")) or (train["packing"] and train["packing_strategy"] == "bfd")
    return DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=padding_free)


def for_training(train: dict, tokenizer, stop_ids, rows) -> Audit:
    """The audit of a run's training rows with its train.* settings, as train() and the plan run it."""
    from .audit_checks import FIXES

    try:
        return run(
            tokenizer,
            rows,
            assistant_only_loss=train["assistant_only_loss"],
            max_length=train["max_length"],
            stop_ids=stop_ids,
            collate=collator_like_trl(tokenizer, train),
        )
    except Exception as exc:  # TRL has no training variant of this template, or the template does not render
        from trl.chat_template_utils import has_generation_markers

        if train["assistant_only_loss"] and not has_generation_markers(tokenizer.chat_template or ""):
            return Audit(
                [
                    (
                        "b",
                        f"the chat template has no {{% generation %}} markers and TRL ships no training "
                        f"variant of it ({type(exc).__name__}: {str(exc)[:200]}). {FIXES['b']}",
                    )
                ],
                len(rows),
                0,
                [],
                "",
                "",
                [],
            )
        return Audit(
            [
                (
                    "c",
                    f"the chat template does not render the training chats ({type(exc).__name__}: "
                    f"{str(exc)[:300]}); fix the template (model.chat_template=<your .jinja>)",
                )
            ],
            len(rows),
            0,
            [],
            "",
            "",
            [],
        )


def confirm(trainer, audited: Audit, max_length: int | None) -> list:
    """Problems if the SFTTrainer at hand labels or collates the audited rows otherwise than the audit did."""
    from .audit_checks import check_collator

    problems = []
    data = trainer.train_dataset
    if not trainer.args.packing and "labels" in data.column_names:  # not packed: row i is chat i
        for i, (ids, labels) in enumerate(audited.labelled[: len(data)]):
            got = data[i]
            if list(got["input_ids"]) != ids[:max_length] or list(got["labels"]) != labels[:max_length]:
                problems.append(
                    (
                        "c",
                        f"row {i + 1}: SFTTrainer tokenized or labelled it otherwise than the audit "
                        "(a TRL version this audit does not know?)",
                    )
                )
                break
    stops = {i for ids, _ in audited.labelled for i in ids} & set(
        trainer.processing_class.convert_tokens_to_ids(audited.stop_tokens)
    )
    if audited.labelled:
        problems += check_collator(trainer.processing_class, audited.labelled, stops, trainer.data_collator, max_length)
    return problems


def refusal(audited: Audit) -> str:
    """The error of a refused audit: every problem, lettered as the module docstring lists the checks."""
    return (
        "the chat template would train a model that does not answer and stop as served (template audit, before "
        "any training step):\n" + "\n".join(f"  {k}. {msg}" for k, msg in audited.problems)
    )


def terminal(text: str, width: int = 200) -> str:
    """A rendering for the terminal: each long line cut in the middle (the loss marks it held are kept)."""
    out = []
    for line in text.splitlines():
        if len(line) > width:
            middle = line[width * 2 // 3 : -(width // 3)]
            marks = "".join(ch for ch in middle if ch in (MARK_OPEN, MARK_CLOSE))
            line = f"{line[: width * 2 // 3]} \u2026{marks}\u2026 {line[-(width // 3) :]}"
        out.append(line)
    return "\n".join(out)
