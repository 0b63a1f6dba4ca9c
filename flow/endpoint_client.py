"""A small client for an Azure-ML-style scoring endpoint (the local serving.serve or an Azure online endpoint).

No Prompt flow import on purpose: Prompt flow is retired in April 2027, and whatever replaces the flow
layer can call ask() as it is. Standard library only.
"""

import json
import urllib.error
import urllib.request

DEFAULT_TIMEOUT_S = 200  # above the endpoint's own request timeout (180 s), so its error reaches us first


class EndpointError(RuntimeError):
    """The endpoint could not give an answer; the message says why and what to check."""


def payload(messages: list[dict], params: dict) -> dict:
    """The body the endpoint expects: one conversation, generated text only."""
    return {"input_data": [messages], "params": {**params, "return_full_text": False}}


def _error_detail(err: urllib.error.HTTPError) -> str:
    body = err.read().decode("utf-8", errors="replace")
    try:
        return str(json.loads(body).get("error", body))
    except (ValueError, AttributeError):  # not a JSON object: a proxy page or an empty body
        return body[:300]


def ask(url: str, key: str, messages: list[dict], params: dict, timeout: float = DEFAULT_TIMEOUT_S) -> str:
    """Send one conversation to the endpoint; returns the answer text."""
    if not url or not key:
        raise EndpointError("the endpoint URL or key is empty: check the connection's endpoint_url and api_key")
    req = urllib.request.Request(
        url,
        data=json.dumps(payload(messages, params)).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            result = json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
        detail = _error_detail(err)
        if err.code in (401, 403):
            raise EndpointError(
                f"the endpoint rejected the key ({err.code}); update the connection's api_key"
            ) from None
        if err.code == 400:
            raise EndpointError(f"the endpoint refused the request (400): {detail}") from None
        if err.code == 504:
            raise EndpointError(f"the endpoint gave up within its request timeout (504): {detail}") from None
        if err.code == 404:
            raise EndpointError(f"nothing answers at {url} (404): check the connection's endpoint_url") from None
        raise EndpointError(f"the endpoint failed ({err.code}): {detail}") from None
    except urllib.error.URLError as err:
        raise EndpointError(f"cannot reach {url} ({err.reason}): is the endpoint running?") from None
    except TimeoutError:
        raise EndpointError(f"no answer from {url} within {timeout:g}s") from None
    except json.JSONDecodeError:
        raise EndpointError(f"the endpoint at {url} did not answer with JSON") from None
    if isinstance(result, dict) and "predictions" in result:  # some Azure MLflow servers wrap the list
        result = result["predictions"]
    if not isinstance(result, list) or not result or not isinstance(result[0], str):
        raise EndpointError(f"unexpected answer from the endpoint: {str(result)[:200]}")
    return result[0]
