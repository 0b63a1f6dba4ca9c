"""eval.judge: an OpenAI-compatible chat endpoint judges each sample pairwise, in both orders.

A sample is a win for the fine-tuned model when both verdicts pick it, a loss when both pick the base, a tie when
they disagree (position bias cancels out); a verdict that names neither answer is counted as unreadable and its
sample left out. The win rate counts a tie as half, with a bootstrap 95 % interval over the samples. Both mean
lengths are reported beside it: judges favour longer answers. Off by default; the key is read from the environment
variable eval.judge.api_key_env names, and never written anywhere.
"""

import os
import random
import re

from ..errors import UserError

SYSTEM = (
    "You compare two answers to the same request. Reply with exactly one letter: A if Answer A is better, "
    "B if Answer B is better. No other text."
)
RESAMPLES = 2000


def prompt(messages: list, first: str, second: str) -> str:
    request = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    return f"Request:\n{request}\n\nAnswer A:\n{first}\n\nAnswer B:\n{second}\n\nWhich answer is better, A or B?"


def parse(reply: str | None) -> str | None:
    """'A' or 'B' when the reply names one answer, else None (counted as unreadable)."""
    m = re.match(r"\W*(?:answer\s+)?([AB])(?![A-Za-z])", reply or "", re.I)
    return m.group(1).upper() if m else None


def outcome(tuned_first: str | None, base_first: str | None) -> float | None:
    """1 win, 0 loss, 0.5 tie (the orders disagree) for the fine-tuned model; None when a verdict is unreadable.

    tuned_first: the verdict with the fine-tuned answer as A; base_first: with it as B."""
    if tuned_first is None or base_first is None:
        return None
    picks = (tuned_first == "A", base_first == "B")
    return 1.0 if all(picks) else 0.0 if not any(picks) else 0.5


def interval(scores: list, seed: int = 0) -> tuple:
    """Bootstrap 95 % interval of the mean score (percentiles 2.5 and 97.5 of RESAMPLES resampled means)."""
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(scores, k=len(scores))) / len(scores) for _ in range(RESAMPLES))
    return means[int(0.025 * RESAMPLES)], means[int(0.975 * RESAMPLES) - 1]


def summarize(cfg: dict, samples: list, verdicts: list) -> dict:
    scores = [outcome(a, b) for a, b in verdicts]
    judged = [s for s in scores if s is not None]
    rate = sum(judged) / len(judged) if judged else None
    return {
        "model": cfg["model"],
        "base_url": cfg["base_url"],
        "samples": len(samples),
        "judged": len(judged),
        "wins": judged.count(1.0),
        "losses": judged.count(0.0),
        "ties": judged.count(0.5),
        "unparsed": sum(v is None for pair in verdicts for v in pair),
        "win_rate": rate,
        "win_rate_ci95": list(interval(judged)) if judged else [None, None],
        "tuned_mean_chars": sum(len(s["tuned"]["text"]) for s in samples) / max(len(samples), 1),
        "base_mean_chars": sum(len(s["base"]["text"]) for s in samples) / max(len(samples), 1),
        "verdicts": [list(v) for v in verdicts],
    }


def judge(cfg: dict, samples: list, log=print) -> dict:
    """Ask the judge twice per sample (the fine-tuned answer as A, then as B) and summarize."""
    import httpx

    name = cfg.get("api_key_env")
    key = os.environ.get(name) if name else None
    if name and not key:
        raise UserError(
            f"eval.judge.api_key_env: ${name} is not set; export {name}=<the judge's key>, or set "
            "eval.judge=null to skip the judge"
        )
    url = cfg["base_url"].rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    log(f"[eval] judge {cfg['model']} at {cfg['base_url']}: {2 * len(samples)} verdicts (each sample in both orders)")

    def ask(client, text: str) -> str | None:
        body = {
            "model": cfg["model"],
            "max_tokens": 8,
            "temperature": 0,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
        }
        try:
            r = client.post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise UserError(
                f"eval.judge: {url} did not answer ({type(exc).__name__}: {exc}); start it or fix "
                "eval.judge.base_url (the eval's own figures are written already)"
            ) from None
        if r.status_code != 200:
            raise UserError(
                f"eval.judge: {url} answered {r.status_code}: {r.text[:300]}; fix eval.judge "
                "(model, key) or set eval.judge=null"
            )
        choices = r.json().get("choices") or [{}]
        return parse((choices[0].get("message") or {}).get("content"))

    verdicts = []
    with httpx.Client(timeout=cfg.get("timeout_s") or 120) as client:
        for s in samples:
            tuned, base = s["tuned"]["text"], s["base"]["text"]
            verdicts.append(
                (ask(client, prompt(s["messages"], tuned, base)), ask(client, prompt(s["messages"], base, tuned)))
            )
    return summarize(cfg, samples, verdicts)
