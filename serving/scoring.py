"""Scoring: turn an Azure-style request body into answers from the fine-tuned MLflow model.

Two callers, one contract:
- Azure ML online deployments load this file as the scoring script: `init()` once, then `run(raw_json)`
  per request (the model folder is found under $AZUREML_MODEL_DIR).
- `python -m serving.serve` (the local endpoint) calls `load(model_dir, limit)` and `run(raw_json)`.

The Scorer takes messages and settings and returns text; it knows nothing of JSON or HTTP. `score_body` is the
/score route over it: the body checked by serving/contract.py, one answer string per input, every input checked
before any is generated. The chat template is applied here, so callers send plain messages. One request's work is
bounded: a prompt the model cannot attend to is refused before any generation (TooLong, said as a 400), and
generation stops at the request timeout (TimedOut, a 504).

Imports nothing from the runner, Hydra, Azure or Prompt flow: it ships inside the deployment's code folder.
Azure ML's inference server loads it by file path, as a module with no parent package, so the imports of its
siblings are absolute and the code folder (the parent of serving/ and common/) is put on sys.path when needed.
"""

import os
import sys
import threading
import time
from pathlib import Path

if not __package__:  # loaded by file path (azmlinfsrv --entry_script serving/scoring.py)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common.files import find_mlflow_model  # noqa: E402
from common.generation import GREEDY_BELOW, eos_ids  # noqa: E402
from serving.contract import DEFAULT_LIMIT, BadRequest, parse_request  # noqa: E402
from serving.detokenize import Incremental  # noqa: E402

LIMIT_ENV = "MAX_NEW_TOKENS_LIMIT"
TIMEOUT_ENV = "REQUEST_TIMEOUT_MS"  # deploy.request_timeout_ms, set in the deployment's environment


class TimedOut(Exception):
    """The request ran past the endpoint's request timeout (HTTP 504)."""

    status = 504


class TooLong(ValueError):
    """A prompt that, with the new tokens asked for, is over what the model attends to (HTTP 400 once worded)."""

    def __init__(self, tokens: int, context: int, max_new_tokens: int, index: int = 0):
        super().__init__(f"{tokens} prompt tokens + {max_new_tokens} new tokens > {context}")
        self.tokens, self.context, self.max_new_tokens, self.index = tokens, context, max_new_tokens, index

    def said(self, what: str, tokens_name: str) -> str:
        """The refusal in a route's own words: what the prompt is called there, and its new-token setting."""
        return (
            f"{what} is {self.tokens} tokens; with {tokens_name}={self.max_new_tokens} that is over the "
            f"{self.context} tokens this model attends to: shorten it to at most "
            f"{self.context - self.max_new_tokens} tokens or lower {tokens_name}"
        )


class Scorer:
    """The loaded model and tokenizer; generation is serialised because one model serves all threads."""

    def __init__(self, model_dir, max_new_tokens_limit: int | None = None, request_timeout_ms: int | None = None):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow
        import torch

        self.model_dir = find_mlflow_model(model_dir)
        self.limit = int(max_new_tokens_limit or os.environ.get(LIMIT_ENV) or DEFAULT_LIMIT)
        timeout_ms = request_timeout_ms or os.environ.get(TIMEOUT_ENV)
        self.timeout_s = int(timeout_ms) / 1000 if timeout_ms else None
        parts = mlflow.transformers.load_model(str(self.model_dir), return_type="components")
        self.tokenizer = parts["tokenizer"]
        if not self.tokenizer.chat_template:
            raise ValueError(f"the tokenizer in {self.model_dir} has no chat template; cannot format messages")
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        model = parts["model"]
        if self.device == "cpu" and model.dtype != torch.float32:
            # a GPU run saves bf16 weights; CPUs without bf16 units generate several times slower in it
            # (on Standard_E4s_v3 past the 180 s request timeout), so serve float32 there
            model = model.float()
        elif self.device == "cuda":  # half precision: bf16 where the GPU computes in it, fp16 on a T4 or V100
            model = model.to(torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        self.model = model.to(self.device).eval()
        self.context = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)  # tokens it attends to
        self.lock = threading.Lock()

    def encode(self, messages: list[dict], p: dict, index: int = 0):
        """(prompt text, token ids), or TooLong when prompt and answer would not fit the model's context."""
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        n = enc["input_ids"].shape[1]
        if self.context and n + p["max_new_tokens"] > self.context:
            raise TooLong(n, self.context, p["max_new_tokens"], index)
        return prompt, enc

    def _generate(self, enc, p: dict, deadline: float | None, **extra):
        """The generated token ids (a 1-D tensor) for one encoded prompt; the model is held for the duration."""
        import torch

        # temperature 0 means greedy, whatever do_sample says; so does one too small to divide the logits by
        sample = p["do_sample"] and p["temperature"] >= GREEDY_BELOW
        kwargs = (
            dict(do_sample=True, temperature=float(p["temperature"]), top_p=float(p["top_p"]))
            if sample
            else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        )
        if deadline is not None:  # queueing for the model counts against the timeout, as in Azure
            if not self.lock.acquire(timeout=max(deadline - time.monotonic(), 0)):
                raise TimedOut(
                    f"no answer within the request timeout of {self.timeout_s * 1000:.0f} ms "
                    "(the model was busy with other requests)"
                )
            kwargs["max_time"] = max(deadline - time.monotonic(), 0.001)
        else:
            self.lock.acquire()
        try:
            cancel = extra.get("cancel")
            if cancel is not None and cancel.is_set():  # the caller left while this request waited for the model
                return torch.zeros(0, dtype=torch.long)
            with torch.inference_mode():
                out = self.model.generate(
                    **enc.to(self.device),
                    max_new_tokens=p["max_new_tokens"],
                    pad_token_id=self.tokenizer.pad_token_id,
                    **kwargs,
                    **{k: v for k, v in extra.items() if k != "cancel"},
                )
        finally:
            self.lock.release()
        if deadline is not None and time.monotonic() > deadline:
            raise TimedOut(
                f"generation ran past the request timeout of {self.timeout_s * 1000:.0f} ms: "
                "lower max_new_tokens, or raise deploy.request_timeout_ms"
            )
        return out[0][enc["input_ids"].shape[1] :]

    def generate(self, prompt: str, enc, p: dict, deadline: float | None = None) -> str:
        answer = self.tokenizer.decode(self._generate(enc, p, deadline), skip_special_tokens=True).strip()
        return prompt + answer if p["return_full_text"] else answer

    def complete(self, enc, p: dict, stops=(), on_text=None, cancel: threading.Event | None = None) -> dict:
        """Generate for the chat-completions route: the answer as /score gives it (cut at the first stop string),
        handed to on_text piece by piece as it is generated. cancel (set by a caller that went away) stops the
        generation at the next token and frees the model.

        Returns {"text", "finish_reason" (stop | length | cancelled), "prompt_tokens", "completion_tokens"}.
        """
        import torch
        from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        cancel = cancel or threading.Event()
        text = Incremental(lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True), stops)

        class Pieces(BaseStreamer):
            prompt_seen = False

            def put(self, value):
                if not self.prompt_seen:  # generate hands the prompt over first
                    self.prompt_seen = True
                    return
                piece = text.push(value.reshape(-1).tolist())
                if piece and on_text:
                    on_text(piece)

            def end(self):
                pass

        class Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full(
                    (input_ids.shape[0],), cancel.is_set() or text.stopped, dtype=torch.bool, device=input_ids.device
                )

        deadline = time.monotonic() + self.timeout_s if self.timeout_s else None
        ids = self._generate(
            enc, p, deadline, streamer=Pieces(), stopping_criteria=StoppingCriteriaList([Stop()]), cancel=cancel
        )
        rest = text.finish(ids.tolist())
        if rest and on_text:
            on_text(rest)
        eos = set(eos_ids(self.model.generation_config.eos_token_id))
        finish = (
            "cancelled"
            if cancel.is_set()
            else "stop"
            if text.stopped or (len(ids) and int(ids[-1]) in eos) or len(ids) < p["max_new_tokens"]
            else "length"
        )
        return {
            "text": text.sent,
            "finish_reason": finish,
            "prompt_tokens": int(enc["input_ids"].shape[1]),
            "completion_tokens": int(len(ids)),
        }

    def answers(self, conversations: list[list[dict]], params: dict) -> list[str]:
        """One answer per conversation. Every one is encoded (and may be refused) before any is generated."""
        deadline = time.monotonic() + self.timeout_s if self.timeout_s else None
        encoded = [self.encode(messages, params, i) for i, messages in enumerate(conversations)]
        return [self.generate(prompt, enc, params, deadline) for prompt, enc in encoded]


def score_body(scorer: Scorer, raw) -> list[str]:
    """The /score route: a raw request body -> one answer per input, or BadRequest / TimedOut."""
    conversations, params = parse_request(raw, scorer.limit)
    try:
        return scorer.answers(conversations, params)
    except TooLong as exc:
        raise BadRequest(exc.said(f"input_data[{exc.index}]", "max_new_tokens")) from None


_scorer: Scorer | None = None


def load(model_dir, max_new_tokens_limit: int | None = None, request_timeout_ms: int | None = None) -> Scorer:
    """Load the model for run(); model_dir is an MLflow model folder or a folder above one."""
    global _scorer
    _scorer = Scorer(model_dir, max_new_tokens_limit, request_timeout_ms)
    return _scorer


def init():
    """Azure ML entry point: the registered model is mounted under $AZUREML_MODEL_DIR."""
    root = os.environ.get("AZUREML_MODEL_DIR")
    if not root:
        raise RuntimeError("AZUREML_MODEL_DIR is not set: call load(model_dir) outside Azure ML")
    load(root)


def run(raw_data) -> list[str]:
    """Azure ML entry point: raw JSON request body in, list of answers out.

    Inside Azure ML's inference server a bad body becomes a 400 response and a timeout a 504, instead of a 500;
    elsewhere (the local server) the exceptions propagate and the caller maps them.
    """
    if _scorer is None:
        raise RuntimeError("the model is not loaded: call init() or load(model_dir) first")
    try:
        return score_body(_scorer, raw_data)
    except (BadRequest, TimedOut) as exc:
        response = _azure_response({"error": str(exc)}, 400 if isinstance(exc, BadRequest) else 504)
        if response is None:
            raise
        return response


def _azure_response(body: dict, status: int):
    """A response with this status inside Azure ML's inference server; None elsewhere (the caller raises)."""
    if "azureml_inference_server_http" not in sys.modules:
        return None
    from azureml_inference_server_http.api.aml_response import AMLResponse

    return AMLResponse(body, status, json_str=True)  # json_str: the server JSON-encodes the body itself
