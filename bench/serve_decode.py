"""How fast does the endpoint decode, against the bound the plan prints? The plan's serving estimate at CPU scale.

A model of Phi-3-mini's width (hidden 3072, 32 heads, MLP 8192; a few layers; built locally, random weights, the
shipped chats' tokenizer) is saved as an MLflow model and served by `python -m serving.serve`, as the deploy stage
serves one, in float32 as the scoring script serves on a CPU. Greedy answers of a fixed length are asked for
through the OpenAI route (its usage says how many tokens were generated): one stream, then three at once. This
machine's memory bandwidth is measured by reading a tensor larger than its caches, with the server's thread count;
the bound is that bandwidth over the bytes one decoded token reads (every weight once: runner/spec/estimates.py's
arithmetic), and the ratio of measured to bound is the figure.
Usage: .venv/bin/python bench/serve_decode.py [layers] [tokens]
"""

import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WIDTH = dict(hidden_size=3072, num_attention_heads=32, num_key_value_heads=32, intermediate_size=8192)


def build(folder: Path, layers: int) -> int:
    """An MLflow model of Phi-3-mini's width in folder; returns the bytes one decoded token reads (fp32 weights
    less the input embedding, of which a token reads one row)."""
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    from runner.stages.data import resolve_path
    from trainer import chats, tracking
    from trainer.tiny import build_tokenizer, chat_texts, stop_ids

    tok = build_tokenizer(chat_texts(chats.load(resolve_path("runner/samples/chat_sample.jsonl"))), 600)
    torch.manual_seed(0)
    config = Phi3Config(
        **WIDTH,
        num_hidden_layers=layers,
        vocab_size=len(tok),
        max_position_embeddings=4096,
        pad_token_id=tok.pad_token_id,
        eos_token_id=stop_ids(tok),
        bos_token_id=tok.eos_token_id,
    )
    model = Phi3ForCausalLM(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=stop_ids(tok), pad_token_id=tok.pad_token_id)
    tracking.save_model(model, tok, folder)  # as the trainer saves the model it registers
    weights = sum(p.numel() for p in model.parameters()) * 4
    return weights - model.get_input_embeddings().weight.numel() * 4


def bandwidth(threads: int, gib: float = 2.0, repeats: int = 5) -> float:
    """Bytes per second this machine reads from memory: the best of a few sums over a tensor far larger than any
    cache, on as many threads as the server uses."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(int(gib * 2**30 / 4), dtype=torch.float32)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = max(best, x.numel() * 4 / (time.perf_counter() - t0))
    return best


def ask(base: str, key: str, tokens: int) -> tuple[int, float]:
    """(tokens generated, seconds) of one greedy answer through the OpenAI route."""
    body = {
        "model": "decode-bench",
        "messages": [{"role": "user", "content": "Tell me about the planets."}],
        "max_tokens": tokens,
        "temperature": 0,
    }
    req = urllib.request.Request(
        base + "/v1/chat/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as resp:
        usage = json.loads(resp.read())["usage"]
    return usage["completion_tokens"], time.perf_counter() - t0


def main(layers: int = 2, tokens: int = 48) -> dict:
    threads = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"[decode] building a {layers}-layer model of Phi-3-mini's width (3072 x 8192, 32 heads)", flush=True)
        per_token = build(tmp / "model", layers)
        key_file = tmp / "key"
        key_file.write_text(secrets.token_urlsafe(24))
        key_file.chmod(0o600)
        ready = tmp / "ready.json"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        server = subprocess.Popen(
            [sys.executable, "-m", "serving.serve", "--model-dir", str(tmp / "model"), "--key-file", str(key_file)]
            + ["--model-name", "decode-bench", "--ready-file", str(ready), "--max-new-tokens-limit", str(tokens)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 300
            while not ready.exists():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("error: the endpoint did not start")
                time.sleep(0.2)
            base = f"http://127.0.0.1:{json.loads(ready.read_text())['port']}"
            key = key_file.read_text()
            ask(base, key, 4)  # warm-up
            one = [ask(base, key, tokens) for _ in range(3)]
            single = sum(n for n, _ in one) / sum(s for _, s in one)
            results, t0 = [], time.perf_counter()
            workers = [threading.Thread(target=lambda: results.append(ask(base, key, tokens))) for _ in range(3)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            wall = time.perf_counter() - t0
        finally:
            server.terminate()
            server.wait(timeout=30)
    bw = bandwidth(threads)
    bound = bw / per_token
    together = sum(n for n, _ in results) / wall
    last = min(n / s for n, s in results)  # the answer that waited longest
    print(
        f"[decode] weights read per token: {per_token / 2**30:.2f} GiB (fp32); memory read bandwidth "
        f"{bw / 1e9:.1f} GB/s on {threads} thread(s)"
    )
    print(f"[decode] bound: {bound:.2f} tokens/s (bandwidth / bytes per token, the plan's arithmetic)")
    print(f"[decode] one stream: {single:.2f} tokens/s measured, {single / bound:.0%} of the bound")
    print(
        f"[decode] three at once: {together:.2f} tokens/s in all ({together / bound:.0%} of the bound); the last "
        f"answer came at {last:.2f} tokens/s: the endpoint generates one request at a time, so concurrent requests "
        "share the bound rather than add to it"
    )
    return {"bound": bound, "single": single, "last": last, "together": together, "bandwidth": bw}


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
