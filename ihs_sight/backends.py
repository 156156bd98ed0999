"""Where a trace runs: here, on NDIF, or here through NDIF's serialisation.

Every analysis builds its nnsight trace the same way whatever the backend; the model's
``remote`` value (``False``, ``True`` or ``"local"``) is all that differs. This module wraps
each trace call (:func:`run`) with what a remote run needs:

* **errors** — nnsight's and the network's exceptions become :class:`RemoteError` subclasses
  that say what happened and what to do: :class:`NoApiKeyError`, :class:`ModelNotServedError`,
  :class:`VersionMismatchError`, :class:`RemoteNetworkError`, :class:`RemoteTimeoutError`,
  :class:`ServerError` (carrying the server's message);
* **retries** — network failures are retried with exponential backoff (:data:`RETRIES`,
  :data:`BACKOFF_S`); errors a retry cannot fix are raised at once;
* **timeout** — a job with no answer after :data:`TIMEOUT_S` seconds is abandoned;
* **bytes** — the size of each result received is added to ``model.bytes_received``.

Resumption is the analyses' job: ``extract()`` writes each finished batch to the on-disk cache,
so a failed run, started again, computes only the batches that were missing.

The API key is never logged: messages quote the server, whose answers do not contain it, and
:func:`redact` strips it from any text that could.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from .errors import RemoteError

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRIES = 2
"""Extra attempts after a network failure."""
BACKOFF_S = 2.0
"""Seconds before the first retry; doubled for each further one."""
TIMEOUT_S = 600.0
"""Seconds a remote job may take, from submission to result, before :class:`RemoteTimeoutError`."""


class NoApiKeyError(RemoteError):
    """No NDIF API key was found."""


class ModelNotServedError(RemoteError):
    """The NDIF deployment does not serve the requested model."""


class VersionMismatchError(RemoteError):
    """The local nnsight version and the server's do not match."""


class RemoteNetworkError(RemoteError):
    """The server could not be reached, or the connection dropped."""


class RemoteTimeoutError(RemoteError):
    """The server did not answer in time."""


class ServerError(RemoteError):
    """The job failed on the server; the message is the server's."""


def api_key() -> str | None:
    """The NDIF API key: ``$NDIF_API_KEY``, else nnsight's configuration."""
    from nnsight import CONFIG

    return os.environ.get("NDIF_API_KEY") or getattr(CONFIG.API, "APIKEY", None) or None


def configure(host: str | None) -> None:
    """Point nnsight at ``host`` (else ``$NDIF_HOST``) and at the API key; raise when there is none."""
    from nnsight import CONFIG

    target = host or os.environ.get("NDIF_HOST")
    if target:
        CONFIG.API.HOST = target
    key = api_key()
    if not key:
        raise NoApiKeyError(
            "No NDIF API key: set the NDIF_API_KEY environment variable or run "
            "nnsight.CONFIG.set_default_api_key('<your key>') (get one at https://login.ndif.us)."
        )
    CONFIG.API.APIKEY = key
    CONFIG.APP.REMOTE_LOGGING = False  # the status spinner prints; the library never prints


def redact(text: str) -> str:
    """``text`` with the API key, if it occurs, replaced by ``***``."""
    key = api_key()
    return text.replace(key, "***") if key else text


def _classify(error: BaseException) -> RemoteError:
    """The :class:`RemoteError` that describes a failure of a remote trace."""
    text = redact(str(error))
    name = type(error).__name__
    lower = text.lower()
    if name == "RemoteError" and text.startswith("Failed to send request"):
        if "version" in lower:
            return VersionMismatchError(
                f"NDIF rejected this nnsight version ({_nnsight_version()}): {text}. "
                "Install the version the server runs (compare with nnsight.compare())."
            )
        if "not served" in lower or "not found" in lower or "not deployed" in lower or "404" in lower:
            return ModelNotServedError(
                f"The server does not serve this model: {text}. See nnsight.status() for the models NDIF serves."
            )
        return RemoteNetworkError(f"Could not submit the job: {text}")
    if name == "RemoteError":
        return ServerError(f"The job failed on the server: {text}")
    if isinstance(error, TimeoutError) or "timeout" in name.lower() or "timed out" in lower:
        return RemoteTimeoutError(f"The server did not answer in time: {text}")
    if isinstance(error, (OSError, ConnectionError)) or "websocket" in type(error).__module__:
        return RemoteNetworkError(f"Network failure talking to {_host()}: {name}: {text}")
    return ServerError(f"The remote run failed: {name}: {text}")


def _host() -> str:
    from nnsight import CONFIG

    return str(CONFIG.API.HOST)


def _nnsight_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("nnsight")


def _shutdown(connection: Any) -> None:
    try:  # shutdown (unlike close) wakes a recv blocked in another thread
        connection.sock.shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError):  # already closed
        pass


@contextmanager
def _watch(timeout: float, received: list[int]) -> Iterator[threading.Event]:
    """Observe nnsight's remote client for one job: result sizes, and a deadline.

    The blocking client waits on its websocket without a limit; past the deadline the
    socket is shut down from a timer thread, which makes the wait fail, and the returned
    event tells the caller that the deadline (not the network) ended it.
    """
    import websocket
    from nnsight.intervention.backends.remote import RemoteBackend

    expired = threading.Event()
    sockets: list[Any] = []
    original_connect = websocket.create_connection
    original_finalize = RemoteBackend.finalize

    def connect(*args: Any, **kwargs: Any) -> Any:
        connection = original_connect(*args, **kwargs)
        sockets.append(connection)
        if expired.is_set():  # the deadline passed while the trace was being serialised
            _shutdown(connection)
        return connection

    def finalize(self: Any, content: bytes) -> Any:
        received.append(len(content))
        return original_finalize(self, content)

    def expire() -> None:
        expired.set()
        for connection in sockets:
            _shutdown(connection)

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    websocket.create_connection = connect
    RemoteBackend.finalize = finalize
    timer.start()
    try:
        yield expired
    finally:
        timer.cancel()
        websocket.create_connection = original_connect
        RemoteBackend.finalize = original_finalize


def run(model: Any, call: Callable[[], T], *, n_prompts: int = 0) -> T:
    """Run one trace call with the model's backend, mapping remote failures to clear errors.

    Local and simulated runs call ``call()`` directly. Remote runs retry network failures
    :data:`RETRIES` times with exponential backoff, stop after :data:`TIMEOUT_S` seconds, and
    add the result's size to ``model.bytes_received`` (logged per prompt).

    Args:
        model: an :class:`ihs_sight.models.Model`.
        call: runs the trace and returns its result; called again on a retry.
        n_prompts: prompts in the call, for the per-prompt byte count in the log.

    Raises:
        RemoteError: a subclass saying what failed (see the module docstring).
    """
    if model.backend != "remote":
        return call()
    attempt = 0
    while True:
        received: list[int] = []
        try:
            with _watch(TIMEOUT_S, received) as expired:
                result = call()
        except RemoteError:
            raise
        except Exception as error:  # noqa: BLE001 (every failure is mapped to a RemoteError)
            mapped = (
                RemoteTimeoutError(f"No answer from {_host()} within {TIMEOUT_S:g} s; the job was abandoned.")
                if expired.is_set()
                else _classify(error)
            )
            if isinstance(mapped, RemoteNetworkError) and attempt < RETRIES:
                wait = BACKOFF_S * 2**attempt
                attempt += 1
                log.warning("%s; retry %d of %d in %.1f s", mapped, attempt, RETRIES, wait)
                time.sleep(wait)
                continue
            raise mapped from None
        size = sum(received)
        model.bytes_received += size
        if n_prompts:
            log.info("received %d bytes for %d prompts (%.0f bytes per prompt)", size, n_prompts, size / n_prompts)
        return result
