"""python -m trainer.serve --model-dir DIR --key-file PATH [--host 127.0.0.1] [--port 0] [--ready-file PATH]

A local stand-in for an Azure ML online endpoint, wrapping trainer.scoring:
  POST /score   Authorization: Bearer <key>; Azure-style JSON body -> 200 JSON list of answers
  GET  /health  200 {"status": "ok"} (the server listens only once the model is loaded)
The key is read from a file only readable by its owner, never from the command line, and never logged.
With --port 0 the system picks a free port; --ready-file then tells the caller which (JSON: pid, host, port).
"""
import argparse
import hmac
import json
import os
import signal
import stat
import sys
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .files import write_atomic

MAX_BODY_BYTES = 1 << 20


def read_key(path: Path) -> str:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SystemExit(f"error: {path} is readable by others (mode {stat.filemode(mode)}); chmod 600 it")
    key = path.read_text().strip()
    if len(key) < 16:
        raise SystemExit(f"error: the key in {path} is too short (at least 16 characters)")
    return key


def make_handler(scorer, key: str):
    from .scoring import BadRequest, TimedOut

    expected = f"Bearer {key}".encode()

    class Handler(BaseHTTPRequestHandler):
        server_version = "trainer-serve"

        def reply(self, status: int, payload):
            data = json.dumps(payload, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                return self.reply(200, {"status": "ok"})
            self.reply(404, {"error": f"no route GET {self.path}; try POST /score or GET /health"})

        def do_POST(self):
            if self.path != "/score":
                return self.reply(404, {"error": f"no route POST {self.path}; the scoring route is POST /score"})
            given = self.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return self.reply(401, {"error": "missing or wrong key: send 'Authorization: Bearer <key>'"})
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 < length <= MAX_BODY_BYTES:
                return self.reply(400 if length <= 0 else 413,
                                  {"error": f"send a JSON body of 1 to {MAX_BODY_BYTES} bytes with a Content-Length"})
            raw = self.rfile.read(length)
            t0 = time.time()
            try:
                answers = scorer.run(raw)
            except BadRequest as exc:
                return self.reply(400, {"error": str(exc)})
            except TimedOut as exc:
                return self.reply(504, {"error": str(exc)})
            except Exception:
                traceback.print_exc(file=sys.stdout)
                return self.reply(500, {"error": "the model failed on this request; see the server log"})
            self.reply(200, answers)
            self.log_message("scored %d input(s) in %.2fs", len(answers), time.time() - t0)

        def log_message(self, fmt, *args):
            # the request line only: headers (and so the key) never reach the log
            print(f"{self.log_date_time_string()} {self.address_string()} {fmt % args}", flush=True)

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # many clients at once wait in the backlog instead of being refused


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m trainer.serve", description="Serve an MLflow model over HTTP.")
    p.add_argument("--model-dir", required=True, type=Path, help="MLflow model folder (or a folder above one)")
    p.add_argument("--key-file", required=True, type=Path, help="file with the bearer key, mode 600")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (see --ready-file)")
    p.add_argument("--request-timeout-ms", type=int, default=None,
                   help="a request still generating after this long gets 504, as deploy.request_timeout_ms in Azure")
    p.add_argument("--max-new-tokens-limit", type=int, default=None,
                   help="requests asking for more new tokens get 400 (default: $MAX_NEW_TOKENS_LIMIT or 256)")
    p.add_argument("--ready-file", type=Path, help="written (JSON: pid, host, port) once the model is loaded "
                                                   "and the server listens; removed on exit")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    key = read_key(args.key_file)
    from . import scoring

    # bind first: a busy port fails at once, not after loading the model; early requests wait in the backlog
    server = Server((args.host, args.port), make_handler(scoring, key))
    port = server.server_address[1]
    t0 = time.time()
    scoring.load(args.model_dir, args.max_new_tokens_limit, args.request_timeout_ms)
    print(f"loaded {scoring._scorer.model_dir} in {time.time() - t0:.1f}s "
          f"(max_new_tokens limit {scoring._scorer.limit}, device {scoring._scorer.device})", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so the finally below runs on a plain kill
    try:
        if args.ready_file:
            write_atomic(args.ready_file, json.dumps({"pid": os.getpid(), "host": args.host, "port": port}))
        print(f"listening on http://{args.host}:{port} (POST /score, GET /health)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if args.ready_file:
            args.ready_file.unlink(missing_ok=True)
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
