"""The eval's figures, its verdict in plain words, and report.md (readable on GitHub)."""

import html


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def figures(before: dict, after: dict, samples: list, rows: int, cfg: dict, seconds: float) -> dict:
    def stop_rate(m):
        return _mean(a["stopped"] for a in m["answers"])

    return {
        "base_nll": before["nll"],
        "tuned_nll": after["nll"],
        "tokens": after["tokens"],
        "rows": rows,
        "samples": len(samples),
        "max_new_tokens": cfg["max_new_tokens"],
        "settings": {"rows": cfg["rows"], "samples": cfg["samples"]},  # asked for; rows/samples: had
        "base_stop_rate": stop_rate(before),
        "tuned_stop_rate": stop_rate(after),
        "base_mean_tokens": _mean(a["tokens"] for a in before["answers"]),
        "tuned_mean_tokens": _mean(a["tokens"] for a in after["answers"]),
        "reference_mean_tokens": _mean(s["reference_tokens"] for s in samples),
        "seconds": round(seconds, 1),
    }


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.0f} %"


def _num(x, fmt=".1f") -> str:
    return "n/a" if x is None else format(x, fmt)


def warnings(m: dict) -> list[str]:
    """What the user must hear: the tuned model is worse than its base on NLL, or stops less often."""
    out = []
    if m["tuned_nll"] > m["base_nll"]:
        out.append(
            f"the fine-tuned model is worse than its base on the held-out chats: NLL {m['tuned_nll']:.3f} "
            f"against {m['base_nll']:.3f} (overfitting, too high a learning rate, or too little data)"
        )
    if m["samples"] and m["tuned_stop_rate"] < m["base_stop_rate"]:
        out.append(
            f"the fine-tuned model stops less often than its base: {_pct(m['tuned_stop_rate'])} of its "
            f"answers end within {m['max_new_tokens']} tokens against {_pct(m['base_stop_rate'])} (see the "
            "template audit in the train stage's output)"
        )
    return out


def lines(m: dict, judge: dict | None = None) -> list[str]:
    """Two or three lines for the terminal."""
    out = [
        f"held-out NLL (assistant tokens, {m['rows']} chats, {m['tokens']} tokens): base {m['base_nll']:.3f} -> "
        f"fine-tuned {m['tuned_nll']:.3f}"
    ]
    if m["samples"]:
        out.append(
            f"stops within {m['max_new_tokens']} tokens: base {_pct(m['base_stop_rate'])} -> fine-tuned "
            f"{_pct(m['tuned_stop_rate'])} of {m['samples']} answers; mean length {_num(m['tuned_mean_tokens'])} "
            f"tokens (reference {_num(m['reference_mean_tokens'])}, base {_num(m['base_mean_tokens'])})"
        )
    if judge:
        out.append(judge_line(judge))
    return out


def judge_line(j: dict) -> str:
    lo, hi = j["win_rate_ci95"]
    return (
        f"judge {j['model']}: fine-tuned wins {_pct(j['win_rate'])} (95 % CI {_pct(lo)}-{_pct(hi)}) of "
        f"{j['judged']} samples, {j['ties']} ties, {j['unparsed']} verdicts unreadable; mean length fine-tuned "
        f"{_num(j['tuned_mean_chars'], '.0f')} vs base {_num(j['base_mean_chars'], '.0f')} characters "
        "(judges favour longer answers)"
    )


def _cell(text: str) -> str:
    """Model output as table text: never live HTML, no table breaks."""
    text = html.escape(text or "", quote=False).replace("|", "\\|").replace("\n", "<br>")
    return text if text.strip() else "*(empty)*"


def markdown(m: dict, samples: list, judge: dict | None = None) -> str:
    out = [
        "# Did it learn?",
        "",
        f"The fine-tuned model against the model it started from, on {m['rows']} held-out chats "
        f"({m['tokens']} assistant tokens) and {m['samples']} greedy answers of up to {m['max_new_tokens']} tokens.",
        "",
        "| | base | fine-tuned |",
        "|---|---|---|",
        f"| held-out NLL (assistant tokens; lower is better) | {m['base_nll']:.3f} | {m['tuned_nll']:.3f} |",
        f"| answers that stop (end-of-turn within {m['max_new_tokens']} tokens) | {_pct(m['base_stop_rate'])} | "
        f"{_pct(m['tuned_stop_rate'])} |",
        f"| mean answer length, tokens (reference: {_num(m['reference_mean_tokens'])}) | "
        f"{_num(m['base_mean_tokens'])} | {_num(m['tuned_mean_tokens'])} |",
        "",
    ]
    out += [f"**Warning:** {w}." for w in warnings(m)] or [
        "No warning: the fine-tuned model is at least as good as its base on NLL and stops at least as often."
    ]
    if judge:
        out += ["", "## Judge", "", judge_line(judge) + "."]
    if samples:
        out += ["", "## Side by side", ""]
    for n, s in enumerate(samples, 1):
        question = s["messages"][-1]["content"] if s["messages"] else ""
        out += [
            f"### {n}. {_cell(question[:200])}",
            "",
            "| | answer | tokens | stopped |",
            "|---|---|---|---|",
            f"| reference | {_cell(s['reference'])} | {s['reference_tokens']} | |",
            f"| base | {_cell(s['base']['text'])} | {s['base']['tokens']} | {'yes' if s['base']['stopped'] else 'no'} |",
            f"| fine-tuned | {_cell(s['tuned']['text'])} | {s['tuned']['tokens']} | "
            f"{'yes' if s['tuned']['stopped'] else 'no'} |",
            "",
        ]
    return "\n".join(out) + "\n"
