"""Where a trace runs: here, on NDIF, or here through NDIF's serialisation.

The only module that knows the difference. Every analysis builds its nnsight trace the same
way whatever the backend and asks the model's :class:`Backend` (``model.runs_on``) the few
things that differ, as nnsight's own ``Backend`` is "just a callable" the tracer hands its work to:

* ``remote`` -- the ``remote=`` argument of nnsight's traces (``False``, ``True`` or ``"local"``);
* ``ships_results`` -- results are serialised, so a trace saves host copies of its slices;
* ``input_device`` -- where model inputs are built (the model's device, or the host for a request);
* ``compiles`` -- whether ``torch.compile`` can apply (not on a server);
* ``run(model, call)`` -- one trace call, with what a remote run needs (:class:`Remote`).

A remote run (:class:`Remote`) adds:

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
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import torch

from .errors import InputError, ModelLoadError, RemoteError

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


def _run_remote(model: Any, call: Callable[[], T], *, n_prompts: int) -> T:
    """One remote trace call: retries, deadline, error mapping and the byte count."""
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


BackendName = Literal["local", "remote", "simulate"]


class Backend:
    """Traces run in this process, on the model's own device."""

    name: ClassVar[BackendName] = "local"
    remote: ClassVar[bool | str] = False
    """The ``remote=`` argument nnsight's traces take."""
    ships_results: ClassVar[bool] = False
    """Whether what a trace saves is serialised (then it saves host copies, taken in the trace)."""
    compiles: ClassVar[bool] = True
    """Whether ``torch.compile`` can run the blocks."""
    weightless: ClassVar[bool] = False
    """Whether the model is built without weights (they live on the server)."""

    def input_device(self, model: Any) -> torch.device:
        """Where model inputs are built: the model's device (no copy before the forward pass)."""
        return model.device  # type: ignore[no-any-return]

    def run(self, model: Any, call: Callable[[], T], *, n_prompts: int = 0) -> T:
        """Run one trace call here."""
        return call()

    def bytes_since(self, model: Any, before: int) -> int | None:
        """Result bytes received since ``before`` (``None``: nothing is received here)."""
        return None

    def build(self, hub_id: str, *, host: str | None) -> tuple[Any, str]:
        """A weightless model for a server (only :class:`Remote` builds one)."""
        raise InputError(f"The {self.name!r} backend runs a model loaded here; load it with weights.")


class Simulated(Backend):
    """NDIF's serialisation of every trace, run in this process (a test of what a server would get)."""

    name: ClassVar[BackendName] = "simulate"
    remote: ClassVar[bool | str] = "local"
    ships_results: ClassVar[bool] = True
    compiles: ClassVar[bool] = False

    def input_device(self, model: Any) -> torch.device:
        """A request ships host tensors."""
        return torch.device("cpu")


class Remote(Simulated):
    """Traces run on NDIF (or a compatible server); the model here has no weights."""

    name: ClassVar[BackendName] = "remote"
    remote: ClassVar[bool | str] = True
    weightless: ClassVar[bool] = True

    def run(self, model: Any, call: Callable[[], T], *, n_prompts: int = 0) -> T:
        """Run one trace call on the server: retries of network failures, a deadline, typed errors.

        Raises:
            RemoteError: a subclass saying what failed (see the module docstring).
        """
        return _run_remote(model, call, n_prompts=n_prompts)

    def bytes_since(self, model: Any, before: int) -> int | None:
        return int(model.bytes_received) - before

    def build(self, hub_id: str, *, host: str | None) -> tuple[Any, str]:
        """A weightless nnsight model whose traces run on the server, and its source string.

        ``hub_id`` may also be a local model directory (for tests and private deployments that
        serve the same directory): its path is then the model's identity on the server.
        """
        from nnsight import TransformersModel
        from nnsight.modeling import huggingface as hf_modeling

        configure(host)
        local = Path(hub_id).expanduser()
        try:
            if local.is_dir():
                from transformers import AutoTokenizer

                path = str(local.resolve())
                nn = TransformersModel(path, task="text-generation", tokenizer=AutoTokenizer.from_pretrained(path))
                # The model key names the directory; no Hub lookup canonicalises it.
                hf_modeling._ID_CACHE[nn.repo_id] = path
            else:
                nn = TransformersModel(hub_id, task="text-generation")
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"Could not build remote model {hub_id!r}: {e}") from e
        return nn, (str(local.resolve()) if local.is_dir() else f"hub:{hub_id}")


BACKENDS: dict[str, Backend] = {b.name: b for b in (Backend(), Simulated(), Remote())}
"""Every backend by name: ``local``, ``simulate`` and ``remote``."""


def get_backend(name: Any) -> Backend:
    """The backend called ``name``, or :class:`InputError` naming the choices."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise InputError(f"Unknown backend {name!r}; use 'local', 'remote' or 'simulate'.")
    return BACKENDS[name]


def run(model: Any, call: Callable[[], T], *, n_prompts: int = 0) -> T:
    """Run one trace call with the model's backend (remote: retries, clear errors, byte count)."""
    return model.runs_on.run(model, call, n_prompts=n_prompts)  # type: ignore[no-any-return]
