"""Helpers for the endpoint and flow tests: a real server on loopback, training pairs, a private Prompt flow home.

Importing this module points Prompt flow (and the file keyring that holds its encryption key) at temporary
folders, so tests never touch ~/.promptflow or ~/.local/share. It must be imported before promptflow is.
"""

import atexit
import json
import os
import random
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

_HOME = Path(tempfile.mkdtemp(prefix="phi3-tests-pf-"))
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ["PF_HOME_DIRECTORY"] = str(_HOME / "promptflow")
os.environ["XDG_DATA_HOME"] = str(_HOME / "data")  # keyrings.alt keeps Prompt flow's encryption key here
os.environ["PF_DISABLE_TRACING"] = "true"
os.environ["APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED"] = "true"  # for `pf` run as a subprocess (see chat stage)


def training_rows(manifest) -> list[dict]:
    from .helpers import read_jsonl

    return read_jsonl(manifest["stages"]["data"]["outputs"]["train_file"])


def single_turn_pairs(manifest, n: int) -> list[tuple[str, str]]:
    """n (question, answer) pairs of plain one-question training chats."""
    rows = [r for r in training_rows(manifest) if [m["role"] for m in r["messages"]] == ["user", "assistant"]]
    picked = random.Random(0).sample(rows, min(n, len(rows)))
    return [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in picked]


def post(url: str, body, key: str | None, timeout: float = 60) -> tuple[int, object]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


class Server:
    """python -m serving.serve on a free loopback port, started as the deploy stage starts it."""

    def __init__(self, model_dir, workdir: Path, limit: int = 128, key: str | None = None):
        """key: the one it accepts (as an Azure endpoint's key is given); a fresh random one by default."""
        from common.files import write_atomic
        from runner.local import server

        workdir.mkdir(parents=True, exist_ok=True)
        key_file, self.ready, self.log = workdir / "endpoint.key", workdir / "server.json", workdir / "server.log"
        server.new_key(key_file)
        if key is not None:
            write_atomic(key_file, key + "\n", mode=0o600)
        self.key = key_file.read_text().strip()
        self.proc = server.start(server.command(model_dir, key_file, self.ready, limit=limit), self.log)
        try:
            info = server.wait_ready(self.proc, "127.0.0.1", self.ready, self.log, timeout=120)
        except Exception:
            self.stop()
            raise
        self.base = f"http://127.0.0.1:{info['port']}"
        self.url = f"{self.base}/score"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


def model_id(client) -> str:
    """The id an endpoint serves its model under (GET /v1/models), through an openai client."""
    return client.models.list().data[0].id


def abandon_stream(url: str, body: dict, key: str | None, pieces: int = 3, timeout: float = 60) -> list[str]:
    """POST a streaming chat completion, read until `pieces` content deltas came, then hang up (as a closed tab
    does). Returns the deltas read; fewer when the answer ended first."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    conn.request("POST", u.path, json.dumps({**body, "stream": True}), headers)
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()[:500]
    got = []
    while len(got) < pieces:
        line = resp.fp.readline()
        if not line or line.strip() == b"data: [DONE]":
            break
        if line.startswith(b"data: "):
            delta = json.loads(line[6:])["choices"][0]["delta"]
            if delta.get("content"):
                got.append(delta["content"])
    conn.sock.close()  # hang up mid-answer
    conn.close()
    return got


def abandon_request(url: str, body: dict, key: str | None, after_s: float = 0.02) -> bytes:
    """POST a request answered in one piece, and hang up after after_s (as a client that timed out or was closed
    does). Returns what came back before the hang-up: b"" when the answer was still being generated."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(url)
    data = json.dumps(body).encode()
    head = (
        f"POST {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n" + (f"Authorization: Bearer {key}\r\n" if key else "") + "\r\n"
    )
    with socket.create_connection((u.hostname, u.port), timeout=30) as sock:
        sock.sendall(head.encode() + data)
        sock.settimeout(after_s)
        try:
            return sock.recv(65536)
        except TimeoutError:
            return b""  # nothing yet: hang up now


def wait_for_line(path: Path, marker: str, skip: int = 0, timeout: float = 30) -> str | None:
    """The first line of the file containing marker, past the first `skip` such lines; None after timeout."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in Path(path).read_text().splitlines() if marker in line]
        if len(found) > skip:
            return found[skip]
        time.sleep(0.05)
    return None


def count_lines(path: Path, marker: str, at_least: int = 0, timeout: float = 10) -> int:
    """Occurrences of marker in an access log. The server writes a request's line just after its client has the
    last byte, so a count expected to reach at_least is waited for (up to timeout) before it is returned."""
    import time

    deadline = time.monotonic() + timeout
    while (n := Path(path).read_text().count(marker)) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    return n


WENT_AWAY = "the client went away; generation stopped after "


ENDED = "token(s)"  # in every line that ends a generation: finished, or stopped because its client went away


def stopped_early(log, hang_up, tries: int) -> int:
    """Tokens generated for a request hung up on mid-generation: hang_up() sends one and hangs up, True when it did
    so before the answer came. An answer that ended before the hang-up reached the server (the tiny model writes
    hundreds of tokens a second) is tried again, up to tries times."""
    for _ in range(tries):
        seen = Path(log).read_text().count(ENDED)
        if not hang_up():
            continue
        line = wait_for_line(log, ENDED, skip=seen)
        assert line, Path(log).read_text()[-2000:]
        if WENT_AWAY in line:
            return int(line.split(WENT_AWAY)[1].split()[0])
    raise AssertionError(f"every answer ended before the hang-up reached the server, in {tries} tries")


def abandoned_whole(url, body: dict, log, key, tries=5) -> int:
    """Tokens generated for a request answered in one piece that was hung up on mid-generation."""
    return stopped_early(log, lambda: not abandon_request(url, body, key), tries)


def abandoned(url, key, log, max_tokens: int, tries=5) -> int:
    """Tokens generated for a streamed answer hung up on after 3 pieces (sampled noise at temperature 2)."""
    body = {"messages": [{"role": "user", "content": "zq xv"}], "max_tokens": max_tokens, "temperature": 2.0}
    return stopped_early(log, lambda: len(abandon_stream(url, body, key)) >= 3, tries)
