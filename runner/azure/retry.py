"""Retries of Azure calls: azure-core's RetryPolicy does them, on every HTTP request the SDK makes.

MLClient is built with POLICY (runner/azure/client.py): throttling (429, honouring Retry-After), a 5xx and a dropped
connection are retried with exponential backoff inside azure-core, for reads, PUTs, DELETEs and the long-running
operations' polls. What surfaces here has already been retried. Two calls must not take effect twice (a job
submission, a model version): `call_once` asks whether a failed one took effect before it tries again.
Everything else (401, 404, a rejected resource) fails at once: retrying would only delay the message.
"""

import time

from ..redact import scrub

# azure-core's RetryPolicy settings (its keyword arguments, passed through MLClient to every service client)
POLICY = {
    "retry_total": 4,
    "retry_status": 4,
    "retry_connect": 4,
    "retry_read": 4,
    "retry_backoff_factor": 2.0,  # 2, 4, 8, 16 s: about half a minute in all
    "retry_backoff_max": 60,
}
TRIES = 5  # call_once: attempts of a call whose failed attempts were each checked for effect
FIRST_DELAY_S = 2.0
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


def call(what: str, fn, *args, log=None, **kwargs):
    """fn(*args, **kwargs): azure-core has retried its requests; a transient failure that still surfaces is logged
    with what was being done, then raised."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        if log and is_transient(exc):
            log(f"[azure] {what}: {type(exc).__name__} ({_first_line(exc)}), still failing after azure-core's retries")
        raise


def _retrying(what: str, fn, log, tries: int):
    """fn() again while it fails for a passing reason: only for call_once, whose fn checks before it repeats."""
    delay = FIRST_DELAY_S
    for attempt in range(1, tries + 1):
        try:
            return fn()
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

    After a transient failure the request may still have gone through (azure-core does not repeat a POST it sent):
    check() looks for its effect and returns it (then there is no retry), or None (then it is tried again).
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

    return _retrying(what, once, log, tries)
