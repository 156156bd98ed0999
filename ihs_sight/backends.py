"""Where a trace runs: here, on NDIF, or here through NDIF's serialisation.

The only module that knows the difference. Every analysis builds its nnsight trace the same
way whatever the backend and asks the model's :class:`Backend` (``model.runs_on``) the few
things that differ, as nnsight's own ``Backend`` is "just a callable" the tracer hands its work to:

* ``remote`` -- the ``remote=`` argument of nnsight's traces (``False``, ``True`` or ``"local"``);
* ``ships_results`` -- results are serialised, so a trace saves host copies of its slices;
* ``input_device`` -- where model inputs are built (the model's device, or the host for a request);
* ``compiles`` -- whether ``torch.compile`` can apply (not on a server);
* ``run(model, call, expect=...)`` -- one trace call, with what a remote run needs (:class:`Remote`).

A remote run (:class:`Remote`) adds:

* **hosts** — nnsight loads a server's results with pickle (``torch.load(weights_only=False)``),
  so a server can run code on this machine, and the API key travels with every request. Hence
  (:func:`check_host`): NDIF's own host (:func:`default_host`) is used as is; any other host needs
  an explicit ``trust_host=True`` (CLI ``--trust-host``); plain ``http://`` is refused except on
  a loopback address (a test server), even when trusted. The policy is checked when a model is
  loaded and again before every job (nnsight's host, ``CONFIG.API.HOST``, is process-wide);
* **errors** — nnsight's and the network's exceptions become :class:`RemoteError` subclasses
  that say what happened and what to do: :class:`NoApiKeyError`, :class:`ModelNotServedError`,
  :class:`VersionMismatchError`, :class:`RemoteNetworkError`, :class:`RemoteTimeoutError`,
  :class:`ServerError` (carrying the server's message), :class:`InvalidResultError`;
* **result checks** — before a result reaches the caller (and so the on-disk cache), every
  output is checked against what the trace promised (``expect``: shape, dtype, finite floats,
  token ids in range); a bad result raises :class:`InvalidResultError` and is discarded;
* **retries** — network failures are retried with exponential backoff (:data:`RETRIES`,
  :data:`BACKOFF_S`); errors a retry cannot fix are raised at once. A retry submits the job
  again: when the connection dropped after the server had accepted the job, the first copy
  may still be running there (it costs server time, and its result is never read). Retries
  do not resume a job by its id: nnsight's blocking client does not expose the id, and its
  polling client returns saved values without binding them where the traces read them;
* **timeout** — a job with no answer after :data:`TIMEOUT_S` seconds is abandoned;
* **bytes** — the size of each result received is added to ``model.bytes_received``. Several
  remote runs may go on at once in different threads: each one observes only its own
  connections and results (:func:`_watch`).

Resumption is the analyses' job: ``extract()`` writes each finished batch to the on-disk cache,
so a failed run, started again, computes only the batches that were missing.

The API key is never logged: :func:`redact` strips it from every message made of a server's
or the network's text (a server may quote it back).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar

import torch

from .errors import InputError, ModelLoadError, RemoteError

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRIES = 2
"""Extra attempts after a network failure (each one submits the job again)."""
BACKOFF_S = 2.0
"""Seconds before the first retry; doubled for each further one."""
TIMEOUT_S = 600.0
"""Seconds a remote job may take, from submission to result, before :class:`RemoteTimeoutError`."""


@functools.cache
def default_host() -> str:
    """NDIF's own host: nnsight's default ``CONFIG.API.HOST``, the one host used without ``trust_host``."""
    from nnsight.schema.config import ApiConfig

    return str(ApiConfig.model_fields["HOST"].default)

_LOOPBACK_NAMES = frozenset({"localhost"})
_TRUSTED: set[str] = set()
"""Hosts a model was loaded for with ``trust_host=True`` in this process (:func:`configure`), normalised."""
_TRUSTED_LOCK = threading.Lock()
_NNSIGHT_HOST: str | None = None
"""``CONFIG.API.HOST`` as nnsight set it (its files and ``$NDIF_HOST``), before :func:`configure` changed it."""


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


class InvalidResultError(RemoteError):
    """The server's result does not have the shape, dtype or values the trace promised."""


# ---------------------------------------------------------------------------- hosts


def _normalise(host: str) -> tuple[str, str, int | None]:
    """``(scheme, hostname, port)`` of a host URL, or :class:`InputError` when it is not one."""
    parts = urllib.parse.urlsplit(host.strip())
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (parts.scheme.lower() not in ("http", "https") or not parts.hostname or port == -1
            or parts.path not in ("", "/") or parts.query or parts.fragment or parts.username is not None):
        raise InputError(f"NDIF host {host!r} is not a URL like https://host[:port].")
    scheme = parts.scheme.lower()
    if port == {"http": 80, "https": 443}[scheme]:
        port = None
    return scheme, parts.hostname.lower(), port


def _is_loopback(hostname: str) -> bool:
    if hostname in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def check_host(host: str, *, trust_host: bool = False) -> None:
    """Refuse a host the remote backend must not talk to (:class:`InputError`, saying why).

    Allowed: NDIF's own host (:func:`default_host`); with ``trust_host``, any ``https://`` host
    and ``http://`` on a loopback address (127.0.0.1, ::1, localhost).
    """
    scheme, hostname, port = _normalise(host)
    if (scheme, hostname, port) == _normalise(default_host()):
        return
    if scheme != "https" and not _is_loopback(hostname):
        raise InputError(
            f"Refusing NDIF host {host!r}: plain http would send your API key in clear text, and "
            "nnsight unpickles the results a host returns, so anyone on the path could run code on "
            "this machine. Use https:// (http:// is accepted only on a loopback address)."
        )
    if not trust_host:
        raise InputError(
            f"Refusing NDIF host {host!r}: it is not NDIF's own ({default_host()}). nnsight unpickles "
            "the results a host returns, so a host you do not trust can run code on this machine, "
            "and it receives your API key. If you trust it, pass trust_host=True (CLI --trust-host)."
        )


def _key(host: str) -> str:
    scheme, hostname, port = _normalise(host)
    return f"{scheme}://{hostname}:{port}"


def _check_host_in_use() -> None:
    """Refuse to send a job to nnsight's current host unless it is NDIF's or was trusted here."""
    host = _host()
    with _TRUSTED_LOCK:
        trusted = _key(host) in _TRUSTED
    if not trusted:
        check_host(host, trust_host=False)  # passes NDIF's own host, else raises saying why


def api_key() -> str | None:
    """The NDIF API key: ``$NDIF_API_KEY``, else nnsight's configuration."""
    from nnsight import CONFIG

    return os.environ.get("NDIF_API_KEY") or getattr(CONFIG.API, "APIKEY", None) or None


def configure(host: str | None, *, trust_host: bool = False) -> None:
    """Point nnsight at ``host`` (else ``$NDIF_HOST``, else nnsight's own) and at the API key.

    Raises:
        InputError: the host is refused (:func:`check_host`: not NDIF's and not ``trust_host``,
            or plain http off the loopback).
        NoApiKeyError: there is no API key.
    """
    from nnsight import CONFIG

    global _NNSIGHT_HOST
    if _NNSIGHT_HOST is None:  # nnsight's own setting, before any model pointed it elsewhere
        _NNSIGHT_HOST = str(CONFIG.API.HOST)
    target = host or os.environ.get("NDIF_HOST") or _NNSIGHT_HOST
    check_host(target, trust_host=trust_host)
    key = api_key()
    if not key:
        raise NoApiKeyError(
            "No NDIF API key: set the NDIF_API_KEY environment variable or run "
            "nnsight.CONFIG.set_default_api_key('<your key>') (get one at https://login.ndif.us)."
        )
    if trust_host:  # remembered for the process: jobs go only to NDIF's host or a trusted one
        with _TRUSTED_LOCK:
            _TRUSTED.add(_key(target))
    CONFIG.API.HOST = target.strip().rstrip("/")
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


# ---------------------------------------------------------------------------- one job, observed


class _Job:
    """What :func:`_watch` observes of one remote job: its connections and result sizes."""

    def __init__(self, expired: threading.Event, received: list[int]) -> None:
        self.expired = expired
        self.received = received
        self.sockets: list[Any] = []
        self.lock = threading.Lock()

    def opened(self, connection: Any) -> None:
        with self.lock:
            self.sockets.append(connection)
            late = self.expired.is_set()
        if late:  # the deadline passed while the trace was being serialised
            _shutdown(connection)

    def expire(self) -> None:
        with self.lock:
            self.expired.set()
            sockets = list(self.sockets)
        for connection in sockets:
            _shutdown(connection)


_JOBS = threading.local()
"""``_JOBS.current``: the :class:`_Job` the calling thread runs (nnsight's blocking client runs
a job in the thread that exits the trace)."""
_HOOKS_LOCK = threading.Lock()
_HOOKS_USERS = 0
_HOOKS: dict[str, Any] = {}
"""While any job runs: nnsight's originals (``connect``, ``finalize``) and our wrappers."""


def _current_job() -> _Job | None:
    return getattr(_JOBS, "current", None)


def _hook() -> None:
    """Wrap nnsight's websocket connect and result loading while any job runs (counted, locked).

    The wrappers are installed by the first job and removed by the last one, and report to
    the calling thread's job only, so concurrent jobs neither see each other's connections
    and bytes nor leave a wrapper behind.
    """
    global _HOOKS_USERS
    import websocket
    from nnsight.intervention.backends.remote import RemoteBackend

    with _HOOKS_LOCK:
        if _HOOKS_USERS == 0:
            original_connect = websocket.create_connection
            original_finalize = RemoteBackend.finalize

            def connect(*args: Any, **kwargs: Any) -> Any:
                connection = original_connect(*args, **kwargs)
                job = _current_job()
                if job is not None:
                    job.opened(connection)
                return connection

            def finalize(self: Any, content: bytes) -> Any:
                job = _current_job()
                if job is not None:
                    job.received.append(len(content))
                return original_finalize(self, content)

            _HOOKS.update(connect=original_connect, finalize=original_finalize, our_connect=connect,
                          our_finalize=finalize)
            websocket.create_connection = connect
            RemoteBackend.finalize = finalize
        _HOOKS_USERS += 1


def _unhook() -> None:
    global _HOOKS_USERS
    import websocket
    from nnsight.intervention.backends.remote import RemoteBackend

    with _HOOKS_LOCK:
        _HOOKS_USERS -= 1
        if _HOOKS_USERS == 0:
            # Only our own wrappers are taken out: a patch someone installed over them stays.
            if websocket.create_connection is _HOOKS["our_connect"]:
                websocket.create_connection = _HOOKS["connect"]
            if RemoteBackend.finalize is _HOOKS["our_finalize"]:
                RemoteBackend.finalize = _HOOKS["finalize"]
            _HOOKS.clear()


@contextmanager
def _watch(timeout: float, received: list[int], expired: threading.Event) -> Iterator[None]:
    """Observe nnsight's remote client for one job in this thread: result sizes, and a deadline.

    The blocking client waits on its websocket without a limit; past the deadline the
    socket is shut down from a timer thread, which makes the wait fail, and ``expired`` tells
    the caller that the deadline (not the network) ended it.
    """
    job = _Job(expired, received)
    _hook()
    outer = _current_job()
    _JOBS.current = job
    timer = threading.Timer(timeout, job.expire)
    timer.daemon = True
    try:
        timer.start()
        yield
    finally:
        timer.cancel()
        _JOBS.current = outer
        _unhook()


# ---------------------------------------------------------------------------- result checks


class Expected(NamedTuple):
    """What one output of a trace must be when it comes back from a server."""

    shape: tuple[int | range, ...]
    """Each dimension's size, or the sizes it may take."""
    kind: Literal["float", "index"]
    """``float``: a floating dtype, every value finite; ``index``: int64 ids in ``[0, high)``."""
    high: int = 0


def _dims(shape: tuple[int | range, ...]) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else f"{d.start}..{d.stop - 1}" for d in shape) + "]"


def _problem(value: Any, spec: Expected) -> str | None:
    """What is wrong with one output, or ``None``."""
    if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
        return f"is a {type(value).__name__}, not a dense tensor"
    size = tuple(value.shape)
    if len(size) != len(spec.shape) or any(
        (s != d) if isinstance(d, int) else (s not in d) for s, d in zip(size, spec.shape)
    ):
        return f"has shape {list(size)}, expected {_dims(spec.shape)}"
    if spec.kind == "float":
        if not value.dtype.is_floating_point:
            return f"has dtype {value.dtype}, expected a float dtype"
        bad = int((~torch.isfinite(value)).sum())
        if bad:
            return f"has {bad} non-finite values (NaN or inf)"
    else:
        if value.dtype != torch.int64:
            return f"has dtype {value.dtype}, expected torch.int64 token ids"
        if value.numel() and (int(value.min()) < 0 or int(value.max()) >= spec.high):
            return f"has token ids outside 0..{spec.high - 1}"
    return None


def check_result(result: Any, expect: Mapping[str, Expected]) -> None:
    """Raise :class:`InvalidResultError` unless ``result`` has exactly the outputs ``expect`` describes."""
    if not isinstance(result, Mapping) or set(result) != set(expect):
        got = sorted(map(str, result)) if isinstance(result, Mapping) else type(result).__name__
        raise InvalidResultError(
            f"The server returned {got}, not the outputs {sorted(expect)}; the result was discarded."
        )
    for key, spec in expect.items():
        problem = _problem(result[key], spec)
        if problem:
            raise InvalidResultError(
                f"The server's result is invalid: {key!r} {problem}; the result was discarded."
            )


# ---------------------------------------------------------------------------- one remote call


def _run_remote(model: Any, call: Callable[[], T], *, n_prompts: int,
                expect: Mapping[str, Expected] | None = None) -> T:
    """One remote trace call: host check, retries, deadline, error mapping, byte count, result check."""
    _check_host_in_use()
    attempt = 0
    while True:
        received: list[int] = []
        expired = threading.Event()  # made here: _watch itself may fail before it yields
        try:
            with _watch(TIMEOUT_S, received, expired):
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
                log.warning("%s; retry %d of %d in %.1f s (the job is submitted again)",
                            mapped, attempt, RETRIES, wait)
                time.sleep(wait)
                continue
            raise mapped from None
        size = sum(received)
        model.bytes_received += size
        if expect is not None:
            check_result(result, expect)
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

    def run(self, model: Any, call: Callable[[], T], *, n_prompts: int = 0,
            expect: Mapping[str, Expected] | None = None) -> T:
        """Run one trace call here (``expect`` is checked only for results from a server)."""
        return call()

    def bytes_since(self, model: Any, before: int) -> int | None:
        """Result bytes received since ``before`` (``None``: nothing is received here)."""
        return None

    def build(self, hub_id: str, *, host: str | None, trust_host: bool = False) -> tuple[Any, str]:
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

    def run(self, model: Any, call: Callable[[], T], *, n_prompts: int = 0,
            expect: Mapping[str, Expected] | None = None) -> T:
        """Run one trace call on the server: retries of network failures, a deadline, typed errors,
        and the result checked against ``expect`` (output name -> :class:`Expected`).

        Raises:
            InputError: nnsight's host is no longer one this process may use (:func:`check_host`).
            RemoteError: a subclass saying what failed (see the module docstring);
                :class:`InvalidResultError` when the result is not what ``expect`` says.
        """
        return _run_remote(model, call, n_prompts=n_prompts, expect=expect)

    def bytes_since(self, model: Any, before: int) -> int | None:
        return int(model.bytes_received) - before

    def build(self, hub_id: str, *, host: str | None, trust_host: bool = False) -> tuple[Any, str]:
        """A weightless nnsight model whose traces run on the server, and its source string.

        ``hub_id`` may also be a local model directory (for tests and private deployments that
        serve the same directory): its path is then the model's identity on the server. A
        ``host`` other than NDIF's needs ``trust_host`` (:func:`check_host`).
        """
        from nnsight import TransformersModel
        from nnsight.modeling import huggingface as hf_modeling

        configure(host, trust_host=trust_host)
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


def run(model: Any, call: Callable[[], T], *, n_prompts: int = 0,
        expect: Mapping[str, Expected] | None = None) -> T:
    """Run one trace call with the model's backend (remote: retries, clear errors, byte count,
    the result checked against ``expect``)."""
    return model.runs_on.run(model, call, n_prompts=n_prompts, expect=expect)  # type: ignore[no-any-return]
