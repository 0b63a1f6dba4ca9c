"""Scoring: turn an Azure-style request body into answers from the fine-tuned MLflow model.

Two callers, one contract:
- Azure ML online deployments load this file as the scoring script: `init()` once, then `run(raw_json)`
  per request (the model folder is found under $AZUREML_MODEL_DIR).
- `python -m trainer.serve` (the local endpoint) calls `load(model_dir, limit)` and `run(raw_json)`.

Request body (the tutorial's payload):
    {"input_data": ["a prompt", [{"role": "user", "content": "..."}, ...]],
     "params": {"max_new_tokens": 64, "temperature": 0.0, "do_sample": false, "top_p": 1.0, "return_full_text": false}}
Response: one answer string per input. The chat template is applied here, so callers send plain messages.

Imports nothing from the runner, Hydra, Azure or Prompt flow: it ships inside the deployment's code folder.
Azure ML's inference server loads it by file path, as a module with no parent package, so the imports of its
siblings are absolute and the code folder (the parent of trainer/) is put on sys.path when needed.
"""
import json
import os
import sys
import threading
from pathlib import Path

if not __package__:  # loaded by file path (azmlinfsrv --entry_script trainer/scoring.py)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trainer.chats import ROLES  # noqa: E402
from trainer.generation import PARAMS as GENERATION  # noqa: E402

LIMIT_ENV = "MAX_NEW_TOKENS_LIMIT"
DEFAULT_LIMIT = 256
MAX_INPUTS = 32  # per request: bounds the time one request can hold the model
# name -> (accepted types, default): the generation settings plus one of the scoring contract's own.
# bool is checked apart because it is an int in Python.
PARAMS = {**{name: (types, default) for name, (types, _, default) in GENERATION.items()},
          "return_full_text": (bool, False)}


class BadRequest(ValueError):
    """The request body is not something we can answer; the message says what to fix (HTTP 400)."""


def find_mlflow_model(root) -> Path:
    """The folder holding an MLmodel file: root itself or the shallowest one below it (Azure nests it)."""
    root = Path(root)
    if (root / "MLmodel").is_file():
        return root
    found = sorted(root.rglob("MLmodel"), key=lambda p: len(p.parts))
    if not found:
        raise FileNotFoundError(f"no MLmodel file under {root}: expected an MLflow model folder")
    return found[0].parent


def parse_messages(item, index: int) -> list[dict]:
    if isinstance(item, str):
        if not item.strip():
            raise BadRequest(f"input_data[{index}] is an empty prompt")
        return [{"role": "user", "content": item}]
    if not isinstance(item, list) or not item:
        raise BadRequest(f"input_data[{index}] must be a prompt string or a non-empty list of "
                         '{"role": "system|user|assistant", "content": "..."} messages')
    for j, m in enumerate(item):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise BadRequest(f"input_data[{index}][{j}] must be an object with role system|user|assistant "
                             "and a string content")
    return [{"role": m["role"], "content": m["content"]} for m in item]


def parse_params(params, limit: int) -> dict:
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise BadRequest("params must be an object, e.g. {\"max_new_tokens\": 64, \"temperature\": 0}")
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise BadRequest(f"unknown params {unknown}; accepted: {sorted(PARAMS)}")
    out = {}
    for name, (types, default) in PARAMS.items():
        value = params.get(name, default)
        is_bool = isinstance(value, bool)
        if (types is bool) != is_bool or not isinstance(value, types):
            raise BadRequest(f"params.{name} must be {'true or false' if types is bool else 'a number'}, got {value!r}")
        out[name] = value
    if out["max_new_tokens"] < 1:
        raise BadRequest("params.max_new_tokens must be at least 1")
    if out["max_new_tokens"] > limit:
        raise BadRequest(f"params.max_new_tokens={out['max_new_tokens']} is over this endpoint's limit of {limit}")
    if out["temperature"] < 0:
        raise BadRequest("params.temperature must be 0 (greedy) or more")
    if not 0 < out["top_p"] <= 1:
        raise BadRequest("params.top_p must be in (0, 1]")
    return out


def parse_body(body, limit: int) -> tuple[list, dict]:
    """Check a decoded request body; returns (a list of message lists, generation params)."""
    if not isinstance(body, dict) or "input_data" not in body:
        raise BadRequest('the body must be a JSON object with "input_data" (a list of prompts or message lists) '
                         'and optional "params"')
    unknown = sorted(set(body) - {"input_data", "params"})
    if unknown:
        raise BadRequest(f"unknown keys {unknown}; the body takes input_data and params")
    items = body["input_data"]
    if not isinstance(items, list) or not items:
        raise BadRequest("input_data must be a non-empty list of prompts or message lists")
    if len(items) > MAX_INPUTS:
        raise BadRequest(f"input_data has {len(items)} items; send at most {MAX_INPUTS} per request")
    return [parse_messages(x, i) for i, x in enumerate(items)], parse_params(body.get("params"), limit)


class Scorer:
    """The loaded model and tokenizer; generation is serialised because one model serves all threads."""

    def __init__(self, model_dir, max_new_tokens_limit: int | None = None):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow
        import torch

        self.model_dir = find_mlflow_model(model_dir)
        self.limit = int(max_new_tokens_limit or os.environ.get(LIMIT_ENV) or DEFAULT_LIMIT)
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
        self.model = model.to(self.device).eval()
        self.lock = threading.Lock()

    def generate(self, messages: list[dict], p: dict) -> str:
        import torch

        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
        sample = p["do_sample"] and p["temperature"] > 0  # temperature 0 means greedy, whatever do_sample says
        kwargs = dict(do_sample=True, temperature=float(p["temperature"]), top_p=float(p["top_p"])) if sample \
            else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        with self.lock, torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=p["max_new_tokens"],
                                      pad_token_id=self.tokenizer.pad_token_id, **kwargs)
        answer = self.tokenizer.decode(out[0][enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        return prompt + answer if p["return_full_text"] else answer

    def score(self, body) -> list[str]:
        conversations, params = parse_body(body, self.limit)
        return [self.generate(messages, params) for messages in conversations]


_scorer: Scorer | None = None


def load(model_dir, max_new_tokens_limit: int | None = None) -> Scorer:
    """Load the model for run(); model_dir is an MLflow model folder or a folder above one."""
    global _scorer
    _scorer = Scorer(model_dir, max_new_tokens_limit)
    return _scorer


def init():
    """Azure ML entry point: the registered model is mounted under $AZUREML_MODEL_DIR."""
    root = os.environ.get("AZUREML_MODEL_DIR")
    if not root:
        raise RuntimeError("AZUREML_MODEL_DIR is not set: call load(model_dir) outside Azure ML")
    load(root)


def run(raw_data) -> list[str]:
    """Azure ML entry point: raw JSON request body in, list of answers out.

    A bad body raises BadRequest; inside Azure ML's inference server it becomes a 400 response instead of a 500.
    """
    try:
        return _run(raw_data)
    except BadRequest as exc:
        response = _azure_response({"error": str(exc)}, 400)
        if response is None:
            raise
        return response


def _run(raw_data) -> list[str]:
    if _scorer is None:
        raise RuntimeError("the model is not loaded: call init() or load(model_dir) first")
    if isinstance(raw_data, (bytes, bytearray)):
        raw_data = raw_data.decode("utf-8", errors="replace")
    try:
        body = json.loads(raw_data) if isinstance(raw_data, str) else raw_data
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    return _scorer.score(body)


def _azure_response(body: dict, status: int):
    """A response with this status inside Azure ML's inference server; None elsewhere (the caller raises)."""
    if "azureml_inference_server_http" not in sys.modules:
        return None
    from azureml_inference_server_http.api.aml_response import AMLResponse
    return AMLResponse(body, status, json_str=True)  # json_str: the server JSON-encodes the body itself
