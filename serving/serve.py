"""python -m serving.serve --model-dir DIR --key-file PATH [--host 127.0.0.1] [--port 0] [--ready-file PATH]

The local endpoint: the fine-tuned model behind the routes an Azure ML online endpoint has, and the ones chat
clients speak, on Starlette under uvicorn (one process, one model, requests queue for it):
  POST /score                 Azure ML's contract (serving/contract.py) -> 200 JSON list of answers
  POST /v1/chat/completions   OpenAI's chat completions (serving/openai_api.py); "stream": true -> SSE
  POST /v1/responses          OpenAI's Responses API (serving/responses_api.py); "stream": true -> SSE events
  GET  /v1/models             the one model served, as OpenAI lists models
  GET  /health                200 {"status": "ok"} (the server listens only once the model is loaded)
Every route but /health wants `Authorization: Bearer <key>`; the generation routes share one new-token limit,
one request timeout (504) and the same greedy answers. A stream whose client leaves stops at the next token.

The key is read from a file only readable by its owner, never from the command line, and never logged.
With --port 0 the system picks a free port; --ready-file then tells the caller which (JSON: pid, host, port).
"""

import argparse
import asyncio
import contextlib
import hmac
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from common.files import write_atomic

from .http_log import AccessLog, log, read_key

MAX_BODY_BYTES = 1 << 20
KEEPALIVE_S = 2.0  # an SSE comment this often while a stream waits for the model: a page that left is noticed
KEYED = ("/score", "/v1/models", "/v1/chat/completions", "/v1/responses")  # every route but /health wants the key
ROUTES_HINT = "POST /score, POST /v1/chat/completions, POST /v1/responses, GET /v1/models or GET /health"
KEEPALIVE = b": waiting for the model\n\n"  # an SSE comment: clients skip it; writing it to a gone client fails
FAILED = "the model failed on this request; see the server log"


def error_response(request, status: int, message: str):
    """The one error shape per route family: OpenAI's error object under /v1, {"error": ...} elsewhere."""
    from starlette.responses import JSONResponse

    from . import openai_api as oa

    body = oa.error(message, status) if request.url.path.startswith("/v1/") else {"error": message}
    return JSONResponse(body, status)


def exception_handlers() -> dict:
    """Every refusal and failure of a route, mapped to its status once: BadRequest 400 (NotFound 404), TimedOut 504,
    Refused its own (each carries its status), an unknown route 404/405 with the routes that exist, anything else 500
    (uvicorn logs the traceback)."""
    from starlette.exceptions import HTTPException

    from .contract import BadRequest, Refused
    from .scoring import TimedOut

    async def refused(request, exc):
        return error_response(request, exc.status, str(exc))

    async def no_route(request, exc: HTTPException):
        message = f"no route {request.method} {request.url.path}; try {ROUTES_HINT}"
        return error_response(request, exc.status_code, message)

    async def failed(request, exc):  # Starlette then re-raises it, and uvicorn logs the traceback
        return error_response(request, 500, FAILED)

    return {BadRequest: refused, TimedOut: refused, Refused: refused, HTTPException: no_route, Exception: failed}


class RequireKey:
    """ASGI middleware: the keyed routes answer 401 without `Authorization: Bearer <key>` (compared in constant
    time), before any route code runs. /health and unknown routes (404) need no key."""

    def __init__(self, app, key: str):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] in KEYED:
            sent = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(sent, self.expected):
                from starlette.requests import Request

                response = error_response(
                    Request(scope), 401, "missing or wrong key: send 'Authorization: Bearer <key>'"
                )
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


async def read_body(request) -> bytes:
    """The body, or Refused when it is missing or too big."""
    from .contract import Refused

    try:
        length = int(request.headers.get("content-length") or 0)
    except ValueError:
        length = -1
    if not 0 < length <= MAX_BODY_BYTES:
        status = 400 if length <= 0 else 413
        raise Refused(status, f"send a JSON body of 1 to {MAX_BODY_BYTES} bytes with a Content-Length")
    return await request.body()


async def health(request):
    from starlette.responses import JSONResponse

    return JSONResponse({"status": "ok"})


async def score(request):
    from starlette.responses import JSONResponse

    from .scoring import score_body

    raw = await read_body(request)
    t0 = time.time()
    answers = await asyncio.to_thread(score_body, request.app.state.scorer, raw)
    log(f"scored {len(answers)} input(s) in {time.time() - t0:.2f}s")
    return JSONResponse(answers)


async def list_models(request):
    from starlette.responses import JSONResponse

    from . import openai_api as oa

    return JSONResponse(oa.models(request.app.state.model_id, request.app.state.created))


async def encode(scorer, messages, params, what: str, tokens_name: str):
    """The prompt's token ids, or BadRequest (in the route's words) when prompt and answer would not fit."""
    from .contract import BadRequest
    from .scoring import TooLong

    try:
        _, enc = await asyncio.to_thread(scorer.encode, messages, params)
    except TooLong as exc:
        raise BadRequest(exc.said(what, tokens_name)) from None
    return enc


async def chat_completions(request):
    from starlette.responses import JSONResponse, StreamingResponse

    from . import openai_api as oa

    state = request.app.state
    scorer = state.scorer
    messages, params, opts = oa.parse_chat_request(await read_body(request), scorer.limit, state.model_id)
    enc = await encode(scorer, messages, params, "messages", "max_tokens")
    cid = oa.new_id()
    if opts["stream"]:
        return StreamingResponse(
            stream(scorer, cid, enc, params, opts),
            media_type="text/event-stream",
            headers=oa.SSE_HEADERS,
        )
    t0 = time.time()
    done = await answered(request, scorer, enc, params, opts["stop"], "chat completion")
    if done is None:
        return client_gone()
    log(f"chat completion: {done['completion_tokens']} token(s) in {time.time() - t0:.2f}s")
    text, finish = done["text"], done["finish_reason"]
    return JSONResponse(
        oa.completion(cid, state.model_id, text, finish, done["prompt_tokens"], done["completion_tokens"])
    )


def _failure(exc: BaseException) -> tuple[str, int]:
    """(message, status) of a generation that failed midway; a failure other than the timeout is logged."""
    from .scoring import TimedOut

    if isinstance(exc, TimedOut):
        return str(exc), 504
    traceback.print_exception(exc, file=sys.stdout)
    return FAILED, 500


def _final_events(cid: str, item, opts: dict, t0: float):
    """The events after the last piece: an error event, or the finish chunk (and the usage chunk when asked)."""
    from . import openai_api as oa

    if isinstance(item, BaseException):
        return [oa.sse(oa.error(*_failure(item)))]
    events = [oa.sse(oa.chunk(cid, opts["model"], {}, item["finish_reason"]))]
    if opts["include_usage"]:
        usage = oa.usage(item["prompt_tokens"], item["completion_tokens"])
        events.append(oa.sse({**oa.chunk(cid, opts["model"], {}, with_choice=False), "usage": usage}))
    log(f"chat completion (stream): {item['completion_tokens']} token(s) in {time.time() - t0:.2f}s")
    return events


async def generated(scorer, enc, params, stops, what: str):
    """One streamed generation: yields each piece of text (str), None while the model is still busy (every
    KEEPALIVE_S, for a keepalive comment), and last the result (Scorer.complete's dict, or the exception it
    raised). Generation runs in a worker thread and hands its pieces over a queue; a consumer that stops before
    the result (a client that went away) sets `cancel`, which stops generation at the next token."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()
    t0 = time.time()

    def work():
        try:
            result = scorer.complete(
                enc, params, stops, lambda piece: loop.call_soon_threadsafe(pieces.put_nowait, piece), cancel
            )
        except BaseException as exc:  # handed to the stream, which reports it as an error event
            result = exc
        loop.call_soon_threadsafe(pieces.put_nowait, result)
        return result

    worker = loop.run_in_executor(None, work)
    finished = False  # the final item was read (the executor's future may not say done yet)
    try:
        while True:
            try:
                item = await asyncio.wait_for(pieces.get(), KEEPALIVE_S)
            except asyncio.TimeoutError:
                yield None
                continue
            finished = not isinstance(item, str)
            yield item
            if finished:
                return
    finally:
        if not finished:  # the client went away mid-answer: stop generating at the next token
            cancel.set()

            def note(done):  # no await here: the stream's task is being cancelled, and would be again
                result = None if done.cancelled() else done.result()
                made = result.get("completion_tokens", "?") if isinstance(result, dict) else "?"
                log(
                    f"{what}: the client went away; generation stopped after {made} of "
                    f"{params['max_new_tokens']} token(s), {time.time() - t0:.2f}s"
                )

            worker.add_done_callback(note)


async def answered(request, scorer, enc, params, stops, what: str) -> dict | None:
    """Scorer.complete's result for a request answered in one piece, or None when its client hung up first: the
    generation is then stopped at the next token (as a stream's is) instead of running to its end for nobody. A
    failure midway (the request timeout) is raised, for the route's error mapping."""
    async with contextlib.aclosing(generated(scorer, enc, params, stops, what)) as items:
        async for item in items:
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, dict):
                return item
            if await request.is_disconnected():  # checked at each piece, and every KEEPALIVE_S while none comes
                return None
    return None


def client_gone():
    """The response to a request whose client left: nobody reads it; the access log says 499 (client closed)."""
    from starlette.responses import Response

    return Response(status_code=499)


async def stream(scorer, cid, enc, params, opts):
    """The SSE events of one streamed chat completion, ending in `data: [DONE]`."""
    from . import openai_api as oa

    t0 = time.time()
    async with contextlib.aclosing(generated(scorer, enc, params, opts["stop"], "chat completion (stream)")) as items:
        yield oa.sse(oa.chunk(cid, opts["model"], {"role": "assistant", "content": ""}))
        async for item in items:
            if item is None:
                yield KEEPALIVE
            elif isinstance(item, str):
                yield oa.sse(oa.chunk(cid, opts["model"], {"content": item}))
            else:
                for event in _final_events(cid, item, opts, t0):
                    yield event
                yield oa.sse("[DONE]")


async def responses(request):
    """POST /v1/responses: the chat-completions route's generation, said in the Responses API's shapes."""
    from starlette.responses import JSONResponse, StreamingResponse

    from . import openai_api as oa
    from . import responses_api as ra

    state = request.app.state
    scorer = state.scorer
    messages, params, opts = ra.parse_responses_request(await read_body(request), scorer.limit, state.model_id)
    enc = await encode(scorer, messages, params, "input", ra.TOKENS)
    rid = ra.new_id()
    if opts["stream"]:
        return StreamingResponse(
            response_events(scorer, rid, enc, params, opts), media_type="text/event-stream", headers=oa.SSE_HEADERS
        )
    t0 = time.time()
    done = await answered(request, scorer, enc, params, opts["stop"], "response")
    if done is None:
        return client_gone()
    log(
        f"response: {done['completion_tokens']} token(s) after a {done['prompt_tokens']}-token prompt in {time.time() - t0:.2f}s"
    )
    return JSONResponse(ra.response_json(rid, opts, done))


async def response_events(scorer, rid, enc, params, opts):
    """The SSE events of one streamed Response (serving/responses_api.Events), from response.created to
    response.completed, response.incomplete or response.failed."""
    from . import responses_api as ra

    events, t0 = ra.Events(rid, opts), time.time()
    async with contextlib.aclosing(generated(scorer, enc, params, opts["stop"], "response (stream)")) as items:
        for event in events.opening():
            yield event
        async for item in items:
            if item is None:
                yield KEEPALIVE
            elif isinstance(item, str):
                yield events.delta(item)
            elif isinstance(item, BaseException):
                for event in events.failed(_failure(item)[0]):
                    yield event
            else:
                for event in events.closing(item):
                    yield event
                made, prompt = item["completion_tokens"], item["prompt_tokens"]
                log(f"response (stream): {made} token(s) after a {prompt}-token prompt in {time.time() - t0:.2f}s")


def make_app(scorer, key: str, model_id: str):
    """The ASGI app over a loaded serving.scoring.Scorer: access log, then the key check, then the routes."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    routes = [
        Route("/health", health),
        Route("/score", score, methods=["POST"]),
        Route("/v1/models", list_models),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/responses", responses, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers=exception_handlers())
    app.state.scorer, app.state.model_id, app.state.created = scorer, model_id, int(time.time())
    return AccessLog(RequireKey(app, key))


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m serving.serve", description="Serve an MLflow model over HTTP.")
    p.add_argument("--model-dir", required=True, type=Path, help="MLflow model folder (or a folder above one)")
    p.add_argument("--key-file", required=True, type=Path, help="file with the bearer key, mode 600")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (see --ready-file)")
    p.add_argument(
        "--model-name",
        default=None,
        help="the model's id in /v1/models and chat completions (default: the model folder's name)",
    )
    p.add_argument(
        "--request-timeout-ms",
        type=int,
        default=None,
        help="a request still generating after this long gets 504, as deploy.request_timeout_ms in Azure",
    )
    p.add_argument(
        "--max-new-tokens-limit",
        type=int,
        default=None,
        help="requests asking for more new tokens get 400 (default: $MAX_NEW_TOKENS_LIMIT or 256)",
    )
    p.add_argument(
        "--ready-file",
        type=Path,
        help="written (JSON: pid, host, port) once the model is loaded and the server listens; removed on exit",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    key = read_key(args.key_file)
    from . import asgi, scoring

    try:
        sock = asgi.bind(args.host, args.port)
    except OSError as exc:
        raise SystemExit(f"error: cannot listen on {args.host}:{args.port} ({exc.strerror})") from None
    port = sock.getsockname()[1]
    t0 = time.time()
    scorer = scoring.load(args.model_dir, args.max_new_tokens_limit, args.request_timeout_ms)
    model_id = args.model_name or scorer.model_dir.name
    print(
        f"loaded {scorer.model_dir} as {model_id!r} in {time.time() - t0:.1f}s "
        f"(max_new_tokens limit {scorer.limit}, device {scorer.device})",
        flush=True,
    )

    def listening():  # the ready file once uvicorn accepts, not before
        if args.ready_file:
            write_atomic(args.ready_file, json.dumps({"pid": os.getpid(), "host": args.host, "port": port}))
        print(
            f"listening on http://{args.host}:{port} (POST /score, POST /v1/chat/completions, "
            "POST /v1/responses, GET /v1/models, GET /health)",
            flush=True,
        )

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # until uvicorn installs its own handlers
    try:
        asgi.run(make_app(scorer, key, model_id), sock, listening, lifespan="off", limit_concurrency=256)
    except KeyboardInterrupt:
        pass
    finally:
        if args.ready_file:
            args.ready_file.unlink(missing_ok=True)
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
