"""The audit's checks on labelled rows (a, b, e: see trainer/audit.py) and the fix each problem gets."""

FIXES = {
    "a": "Fix: put the end-of-turn token inside the template's {% generation %}...{% endgeneration %} span "
    "(model.chat_template=<your .jinja>), or set train.assistant_only_loss=false to train on every token",
    "b": "Fix: wrap exactly each assistant message's content and its end-of-turn token in {% generation %}..."
    "{% endgeneration %} in the template (model.chat_template=<your .jinja>), or set train.assistant_only_loss="
    "false",
    "c": "Fix: train with the template the endpoint serves (model.chat_template=<your .jinja> is used for both); the "
    "two must render the prompt identically, whitespace, system turn and generation prompt included",
    "d": "Fix: add the end-of-turn token's id to the model's generation_config.json eos_token_id (a list), or use a "
    "template whose turns end with one of the stop ids",
    "e": "Fix: choose a pad token that is not the end-of-turn or eos token (tokenizer.pad_token, or TRL's "
    "train.pad_token), or a collator that pads labels with -100 instead of masking the pad id",
}


def fix_for(check: str, assistant_only_loss: bool) -> str:
    if check == "a" and not assistant_only_loss:
        return "Fix: end every assistant turn with an end-of-turn token in the template (model.chat_template=...)"
    return FIXES[check]


def _token(tokenizer, i) -> str:
    return repr(tokenizer.decode([i]))


def check_row(tokenizer, row, max_length: int | None, assistant_only_loss: bool) -> list:
    """(check, message) for one analysed row: the end-of-turn tokens (a) and, with assistant-only loss, where the
    loss falls (b). Turns that max_length cuts are left to the count of cut rows."""
    problems = []
    limit = len(row.ids) if max_length is None else min(max_length, len(row.ids))
    for j, turn in enumerate(row.turns):
        if turn.role == "assistant":
            if turn.answer >= limit:
                continue
            if turn.stop < 0:
                if turn.end <= limit:
                    problems.append(
                        (
                            "a",
                            f"messages[{j}] (assistant) is followed by no end-of-turn token: the "
                            "template ends the answer with plain text, so the model cannot learn to stop",
                        )
                    )
                continue
            if turn.stop < limit and row.labels[turn.stop] == -100:
                problems.append(
                    (
                        "a",
                        f"the end-of-turn token {_token(tokenizer, row.ids[turn.stop])} after "
                        f"messages[{j}] (assistant) carries no loss: the model is never taught to stop",
                    )
                )
            if assistant_only_loss and not any(lab != -100 for lab in row.labels[turn.answer : min(turn.end, limit)]):
                problems.append(("b", f"messages[{j}] (assistant) carries no loss: nothing of the answer is trained"))
            prompt_part = range(turn.start, min(turn.answer, limit))
        else:
            prompt_part = range(turn.start, min(turn.end, limit))
        if assistant_only_loss:
            leaked = [i for i in prompt_part if row.labels[i] != -100]
            if leaked:
                what = "the generation prompt of" if turn.role == "assistant" else "the"
                problems.append(
                    (
                        "b",
                        f"{len(leaked)} token(s) of {what} {turn.role} turn messages[{j}] carry loss "
                        f"(first: {_token(tokenizer, row.ids[leaked[0]])} at token {leaked[0]}): the "
                        "model would learn to write the prompt",
                    )
                )
    return problems


def check_collator(tokenizer, labelled, stops: set, collate, max_length: int | None) -> list:
    """(e): collate two rows of different lengths as training does; any trained token whose loss the batch loses.

    The first token of each row is left out: the loss never predicts it (and padding-free batches mask it so that
    one row does not predict the next)."""
    rows = sorted(labelled[:8], key=lambda r: len(r[0]))
    pair = [rows[0], rows[-1]] if len(rows) > 1 else [rows[0], (rows[0][0][:-1], rows[0][1][:-1])]
    cut = (lambda x: x[:max_length]) if max_length else (lambda x: x)
    examples = [{"input_ids": cut(ids), "labels": cut(labels)} for ids, labels in pair]
    batch = collate(examples)
    got = batch["labels"].tolist()
    if len(got) == 1 and len(examples) > 1:  # padding-free: one row holding both
        flat = got[0]
        got, at = [], 0
        for ex in examples:
            got.append(flat[at : at + len(ex["input_ids"])])
            at += len(ex["input_ids"])
    lost_stops, lost = set(), 0
    for ex, after in zip(examples, got):
        for i, (want, have) in enumerate(zip(ex["labels"], after)):
            if i and want != -100 and have == -100:
                lost += 1
                if want in stops:
                    lost_stops.add(want)
    if not lost:
        return []
    pad = tokenizer.pad_token_id
    if lost_stops:
        names = tokenizer.convert_ids_to_tokens(sorted(lost_stops))
        why = (
            f"pad is {tokenizer.pad_token!r}, the same id as the end-of-turn token, and the collator masks pad "
            "ids out of the loss"
            if pad in lost_stops
            else "the collator masks it out of the loss"
        )
        return [
            (
                "e",
                f"the end-of-turn token {names} loses its loss in the training batch: {why}; the model "
                "would never learn to stop",
            )
        ]
    return [
        (
            "e",
            f"the collator masks {lost} token(s) that the template trains (pad id {pad}, "
            f"{tokenizer.pad_token!r}): they carry no loss in the training batch",
        )
    ]
