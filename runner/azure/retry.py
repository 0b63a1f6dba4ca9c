"""Retry Azure calls that failed for a passing reason (throttling, a 5xx, a dropped connection).

Everything else (401, 404, a rejected resource) fails at once: retrying would only delay the message.
"""

import time

from ..redact import scrub

TRIES = 5
FIRST_DELAY_S = 2.0  # then 4, 8, 16: about half a minute in all
MAX_DELAY_S = 60.0
_sleep = time.sleep  # tests replace it


def is_transient(exc: BaseException) -> bool:
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    if isinstance(exc, (ServiceRequestError, ServiceResponseError, TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, HttpResponseError):
        code = exc.status_code or 0
        return code == 429 or code >= 500
    return False


def retry_after(exc: BaseException) -> float | None:
    """The server's Retry-After, in seconds, when it sent one as a number."""
    response = getattr(exc, "response", None)
    try:
        return float(response.headers.get("Retry-After"))
    except (AttributeError, TypeError, ValueError):
        return None


def call(what: str, fn, *args, log=None, tries: int = TRIES, **kwargs):
    """fn(*args, **kwargs), retried with exponential backoff while the failure is transient."""
    delay = FIRST_DELAY_S
    for attempt in range(1, tries + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if attempt == tries or not is_transient(exc):
                raise
            wait = min(max(delay, retry_after(exc) or 0), MAX_DELAY_S)
            if log:
                log(
                    f"[azure] {what}: {type(exc).__name__} ({_first_line(exc)}); retry {attempt}/{tries - 1} in {wait:g}s"
                )
            _sleep(wait)
            delay *= 2


def _first_line(exc) -> str:
    text = scrub(str(exc).strip())
    return text.splitlines()[0][:200] if text else "no message"


def call_once(what: str, fn, *args, check, log=None, tries: int = TRIES, **kwargs):
    """fn(*args, **kwargs) for a call that must not take effect twice (a model version, a job submission).

    After a transient failure the request may still have gone through: check() looks for its effect and
    returns it (then there is no retry), or None (then it is retried).
    """

    def once():
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not is_transient(exc):
                raise
            try:
                done = check()
            except Exception as failed:  # cannot tell whether it took effect: do not risk doing it twice
                from ..errors import StageFailed

                raise StageFailed(
                    f"could not {what} ({_first_line(exc)}), and could not check whether it took "
                    f"effect ({_first_line(failed)}): look in the workspace before re-running"
                ) from exc
            if done is not None:
                if log:
                    log(f"[azure] {what}: the call failed ({_first_line(exc)}) but had taken effect; not repeating it")
                return done
            raise

    return call(what, once, log=log, tries=tries)
