"""The one client of the /score contract (serving/contract.py): the body it sends and how it reads the answer.

Used by the Prompt flow tool (flow/chat_tool.py, through `ask`), the chat page's /score upstream
(serving/chat_page.py, which sends with its own async HTTP client and reads the reply with `answers_of`) and the
Azure deploy stage's test request (runner/azure/deploy.py). Standard library only, and no Prompt flow import:
Prompt flow retires in April 2027, and whatever replaces the flow layer calls `ask` as it is.
"""

import json
import urllib.error
import urllib.request

DEFAULT_TIMEOUT_S = 200  # above the endpoint's own request timeout (180 s), so its error reaches us first


class ScoreError(RuntimeError):
    """The endpoint gave no answer; the message says why and what to check. status: the HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def payload(messages: list[dict], params: dict) -> dict:
    """The body for one conversation, generated text only; params left out are the endpoint's defaults."""
    return {"input_data": [messages], "params": {**params, "return_full_text": False}}


def error_detail(body) -> str:
    """The endpoint's own words from an error body: {"error": ...} when it is JSON, else its start."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, (bytes, bytearray)) else str(body)
    try:
        return str(json.loads(text).get("error", text))
    except (ValueError, AttributeError):  # not a JSON object: a proxy page or an empty body
        return text[:300]


def refusal(status: int, body, url: str, where: str = "the connection's") -> ScoreError:
    """The error for a non-200 reply, naming what to check (where: whose URL and key they are)."""
    detail = error_detail(body)
    said = {
        400: f"the endpoint refused the request (400): {detail}",
        401: f"the endpoint rejected the key (401); update {where} api_key",
        403: f"the endpoint rejected the key (403); update {where} api_key",
        404: f"nothing answers at {url} (404): check {where} endpoint_url",
        504: f"the endpoint gave up within its request timeout (504): {detail}",
    }
    return ScoreError(said.get(status, f"the endpoint failed ({status}): {detail}"), status)


def answers_of(result) -> list[str]:
    """The answer strings of a 200 reply (bytes, str or decoded JSON), or ScoreError. Some Azure MLflow servers
    wrap the list as {"predictions": [...]}."""
    if isinstance(result, (bytes, bytearray, str)):
        try:
            result = json.loads(result)
        except ValueError:
            raise ScoreError("the endpoint did not answer with JSON") from None
    if isinstance(result, dict) and "predictions" in result:
        result = result["predictions"]
    if not isinstance(result, list) or not result or not all(isinstance(a, str) for a in result):
        raise ScoreError(f"unexpected answer from the endpoint (expected a list of strings): {str(result)[:200]}")
    return result


def ask(url: str, key: str, messages: list[dict], params: dict, timeout: float = DEFAULT_TIMEOUT_S) -> str:
    """Send one conversation to the endpoint; returns the answer text, or ScoreError."""
    if not url or not key:
        raise ScoreError("the endpoint URL or key is empty: check the connection's endpoint_url and api_key")
    req = urllib.request.Request(
        url,
        data=json.dumps(payload(messages, params)).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as err:
        raise refusal(err.code, err.read(), url) from None
    except urllib.error.URLError as err:
        raise ScoreError(f"cannot reach {url} ({err.reason}): is the endpoint running?") from None
    except TimeoutError:
        raise ScoreError(f"no answer from {url} within {timeout:g}s") from None
    return answers_of(body)[0]
