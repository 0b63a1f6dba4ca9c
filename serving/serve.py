"""python -m serving.serve --model-dir DIR --key-file PATH [--host 127.0.0.1] [--port 0] [--ready-file PATH]

The local endpoint: the fine-tuned model behind the routes an Azure ML online endpoint has, and the ones chat
clients speak, on Starlette under uvicorn (one process, one model, requests queue for it):
  POST /score                 Azure ML's contract (serving/contract.py) -> 200 JSON list of answers
  POST /v1/chat/completions   OpenAI's chat completions (serving/openai_api.py); "stream": true -> SSE
  GET  /v1/models             the one model served, as OpenAI lists models
  GET  /health                200 {"status": "ok"} (the server listens only once the model is loaded)
Every route but /health wants `Authorization: Bearer <key>`; both generation routes share one new-token limit,
one request timeout (504) and the same greedy answers. A stream whose client leaves stops at the next token.

The key is read from a file only readable by its owner, never from the command line, and never logged.
With --port 0 the system picks a free port; --ready-file then tells the caller which (JSON: pid, host, port).
"""

import argparse
import asyncio
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


def make_app(scorer, key: str, model_id: str):  # noqa: C901  (to split: auth as middleware, errors as handlers)
    """The ASGI app over a loaded serving.scoring.Scorer."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    from . import openai_api as oa
    from .contract import BadRequest
    from .scoring import TimedOut

    expected = f"Bearer {key}".encode()
    created = int(time.time())

    def authorized(request) -> bool:
        return hmac.compare_digest(request.headers.get("authorization", "").encode(), expected)

    async def read_body(request):
        """The body, or (status, message) when it is missing or too big."""
        try:
            length = int(request.headers.get("content-length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY_BYTES:
            return 400 if length <= 0 else 413, f"send a JSON body of 1 to {MAX_BODY_BYTES} bytes with a Content-Length"
        return await request.body()

    async def health(request):
        return JSONResponse({"status": "ok"})

    async def score(request):
        if not authorized(request):
            return JSONResponse({"error": "missing or wrong key: send 'Authorization: Bearer <key>'"}, 401)
        raw = await read_body(request)
        if isinstance(raw, tuple):
            return JSONResponse({"error": raw[1]}, raw[0])
        t0 = time.time()
        try:
            answers = await asyncio.to_thread(scorer.score, raw)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, 400)
        except TimedOut as exc:
            return JSONResponse({"error": str(exc)}, 504)
        except Exception:
            traceback.print_exc(file=sys.stdout)
            return JSONResponse({"error": "the model failed on this request; see the server log"}, 500)
        log(f"scored {len(answers)} input(s) in {time.time() - t0:.2f}s")
        return JSONResponse(answers)

    def oa_error(message: str, status: int):
        return JSONResponse(oa.error(message, status), status)

    async def list_models(request):
        if not authorized(request):
            return oa_error("missing or wrong key: send 'Authorization: Bearer <key>'", 401)
        return JSONResponse(oa.models(model_id, created))

    async def chat_completions(request):
        if not authorized(request):
            return oa_error("missing or wrong key: send 'Authorization: Bearer <key>'", 401)
        raw = await read_body(request)
        if isinstance(raw, tuple):
            return oa_error(raw[1], raw[0])
        try:
            messages, params, opts = oa.parse_chat_request(raw, scorer.limit, model_id)
            prompt, enc = await asyncio.to_thread(
                scorer.encode, messages, params, what="messages", tokens_name="max_tokens"
            )
        except oa.NotFound as exc:
            return oa_error(str(exc), 404)
        except BadRequest as exc:
            return oa_error(str(exc), 400)
        cid = oa.new_id()
        if not opts["stream"]:
            t0 = time.time()
            try:
                done = await asyncio.to_thread(scorer.complete, enc, params, opts["stop"])
            except TimedOut as exc:
                return oa_error(str(exc), 504)
            except Exception:
                traceback.print_exc(file=sys.stdout)
                return oa_error("the model failed on this request; see the server log", 500)
            log(f"chat completion: {done['completion_tokens']} token(s) in {time.time() - t0:.2f}s")
            return JSONResponse(
                oa.completion(
                    cid, model_id, done["text"], done["finish_reason"], done["prompt_tokens"], done["completion_tokens"]
                )
            )
        return StreamingResponse(
            stream(cid, enc, params, opts),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def stream(cid, enc, params, opts):
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        t0 = time.time()

        def work():
            try:
                result = scorer.complete(
                    enc, params, opts["stop"], lambda piece: loop.call_soon_threadsafe(pieces.put_nowait, piece), cancel
                )
            except BaseException as exc:  # handed to the stream, which reports it as an error event
                result = exc
            loop.call_soon_threadsafe(pieces.put_nowait, result)
            return result

        worker = loop.run_in_executor(None, work)
        finished = False  # the final item was read (the executor's future may not say done yet)
        try:
            yield oa.sse(oa.chunk(cid, opts["model"], {"role": "assistant", "content": ""}))
            while True:
                try:
                    item = await asyncio.wait_for(pieces.get(), KEEPALIVE_S)
                except asyncio.TimeoutError:
                    yield b": waiting for the model\n\n"  # a comment: clients skip it; a gone client fails here
                    continue
                if isinstance(item, str):
                    yield oa.sse(oa.chunk(cid, opts["model"], {"content": item}))
                    continue
                finished = True
                if isinstance(item, BaseException):
                    status = 504 if isinstance(item, TimedOut) else 500
                    if status == 500:
                        traceback.print_exception(item, file=sys.stdout)
                    message = str(item) if status == 504 else "the model failed on this request; see the server log"
                    yield oa.sse(oa.error(message, status))
                else:
                    yield oa.sse(oa.chunk(cid, opts["model"], {}, item["finish_reason"]))
                    if opts["include_usage"]:
                        yield oa.sse(
                            {
                                **oa.chunk(cid, opts["model"], {}, with_choice=False),
                                "usage": oa.usage(item["prompt_tokens"], item["completion_tokens"]),
                            }
                        )
                    log(f"chat completion (stream): {item['completion_tokens']} token(s) in {time.time() - t0:.2f}s")
                yield oa.sse("[DONE]")
                return
        finally:
            if not finished:  # the client went away mid-answer: stop generating at the next token
                cancel.set()

                def note(done):  # no await here: the stream's task is being cancelled, and would be again
                    result = None if done.cancelled() else done.result()
                    made = result.get("completion_tokens", "?") if isinstance(result, dict) else "?"
                    log(
                        f"chat completion (stream): the client went away; generation stopped after {made} of "
                        f"{params['max_new_tokens']} token(s), {time.time() - t0:.2f}s"
                    )

                worker.add_done_callback(note)

    async def not_found(request, exc):
        method = request.method
        hint = "POST /score, POST /v1/chat/completions, GET /v1/models or GET /health"
        return JSONResponse(
            {"error": f"no route {method} {request.url.path}; try {hint}"}, getattr(exc, "status_code", 404)
        )

    routes = [
        Route("/health", health),
        Route("/score", score, methods=["POST"]),
        Route("/v1/models", list_models),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]
    return AccessLog(Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found}))


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
            "GET /v1/models, GET /health)",
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
