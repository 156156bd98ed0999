"""The remote backend against a loopback NDIF stand-in (``tests/ndif_server.py``).

The server is a separate process where ``ihs_sight`` is not importable (as on NDIF); the client
is nnsight's real ``remote=True`` client on a weightless model. Both sides run torch with one
thread, so remote results must equal local ones bit for bit. The reference for every remote
number is the same analysis run locally on the real model (``model`` fixture).

The server is a plain-http loopback host, so every remote model here is loaded with
``trust_host=True``; its fault modes also spoil results (``nan``, ``shape``) and quote the API
key back (``key_in_error``, ``key_refused``).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import traceback
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from ihs_sight import backends
from ihs_sight.backends import (
    InvalidResultError,
    ModelNotServedError,
    NoApiKeyError,
    RemoteNetworkError,
    RemoteTimeoutError,
    ServerError,
    VersionMismatchError,
)
from ihs_sight.errors import InputError, RemoteError
from ihs_sight.extract import extract
from ihs_sight.graft import graft
from ihs_sight.lens import logit_lens
from ihs_sight.models import default_gguf_path, gguf_to_safetensors, load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SERVER = Path(__file__).with_name("ndif_server.py")
KEY = "test-secret-key-5f3a9c"
PROMPTS = ["How do I bake bread?", "Write a haiku about rain.", "Hi"]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return gguf_to_safetensors(default_gguf_path())


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[str]:
    # -I: no PYTHONPATH, no user site, no cwd on sys.path; the script also removes the
    # editable install's finder, and asserts ihs_sight cannot be imported.
    proc = subprocess.Popen(
        [sys.executable, "-I", str(SERVER), str(model_dir), "--port", "0", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd="/",
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY"), f"fake NDIF did not start: {line!r}"
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def control(host: str, **settings: Any) -> dict[str, Any]:
    """Set the server's fault mode (POST) or read its job count (no settings)."""
    if settings:
        req = urllib.request.Request(f"{host}/control", data=json.dumps(settings).encode(), method="POST")
        urllib.request.urlopen(req, timeout=10).read()
    return json.loads(urllib.request.urlopen(f"{host}/control", timeout=10).read())  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def healthy(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts and ends with a well-behaved server."""
    if "server" in request.fixturenames:
        control(request.getfixturevalue("server"), fail="none", fail_after=0, min_version="")
    yield
    if "server" in request.fixturenames:
        control(request.getfixturevalue("server"), fail="none", fail_after=0, min_version="")


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("NDIF_API_KEY", KEY)
    monkeypatch.setattr(backends, "BACKOFF_S", 0.1)
    return KEY


@pytest.fixture
def remote(server: str, model_dir: Path, key: str) -> Any:
    return load_model(str(model_dir), backend="remote", host=server, trust_host=True)


def test_remote_model_has_no_weights(remote: Any) -> None:
    assert remote.backend == "remote" and remote.remote is True
    assert remote.device.type == "meta"


def test_remote_extract_and_lens_equal_local(remote: Any, model: Any, server: str) -> None:
    local = extract(model, PROMPTS, cache=False, progress=False, lens_top_k=5)
    got = extract(remote, PROMPTS, cache=False, progress=False, lens_top_k=5)
    assert control(server)["jobs"] >= 1  # it really went through the server
    assert torch.equal(got.states, local.states)
    assert got.lens is not None and local.lens is not None
    assert torch.equal(got.lens.token_ids, local.lens.token_ids)
    assert torch.equal(got.lens.probs, local.lens.probs)
    assert torch.equal(got.lens.emotion_mass, local.lens.emotion_mass)
    # Only last-token slices come back: about (L+1) * D floats per prompt, never [T, D] or [V].
    per_prompt = remote.bytes_received / len(PROMPTS)
    assert 0 < per_prompt < 2 * (model.n_layers + 1) * model.d_model * 4
    # ... and the result says so.
    assert got.meta.bytes_per_prompt is not None and local.meta.bytes_per_prompt is None
    assert 0 < got.meta.bytes_per_prompt < 2 * (model.n_layers + 1) * model.d_model * 4


def test_remote_packed_extract_equals_local(remote: Any, model: Any, server: str) -> None:
    """Packed rows (4D mask, restarting positions, flat last-token index) go through the server unchanged."""
    jobs = control(server)["jobs"]
    local = extract(model, PROMPTS, cache=False, progress=False, pack=True)
    got = extract(remote, PROMPTS, cache=False, progress=False, pack=True)
    assert control(server)["jobs"] > jobs
    assert torch.equal(got.states, local.states)


def test_remote_logit_lens_equals_local(remote: Any, model: Any) -> None:
    local = logit_lens(model, PROMPTS[:2], top_k=3, progress=False)
    got = logit_lens(remote, PROMPTS[:2], top_k=3, progress=False)
    assert torch.equal(got.token_ids, local.token_ids)
    assert torch.equal(got.logits, local.logits)


def test_remote_graft_equals_local(remote: Any, model: Any) -> None:
    vec = torch.linspace(-1.0, 1.0, model.d_model)
    kw: dict[str, Any] = {"layer": 20, "cache": False, "keep_logits": True, "progress": False}
    local = graft(model, PROMPTS[:2], vec, **kw)
    got = graft(remote, PROMPTS[:2], vec, **kw)
    assert local.logits_after is not None and got.logits_after is not None
    assert torch.equal(got.logits_after, local.logits_after)
    assert torch.equal(got.logits_before, local.logits_before)


def test_remote_generation_equals_local(remote: Any, model: Any, server: str) -> None:
    vec = torch.linspace(-1.0, 1.0, model.d_model)
    kw: dict[str, Any] = {"layer": 12, "cache": False, "generate": 3, "progress": False}
    jobs = control(server)["jobs"]
    local = graft(model, PROMPTS[:2], vec, **kw)
    got = graft(remote, PROMPTS[:2], vec, **kw)
    assert control(server)["jobs"] > jobs
    for a, b in zip(got.targets, local.targets):
        assert a.tokens_before == b.tokens_before and a.tokens_after == b.tokens_after
        assert a.text_after == b.text_after


def test_remote_guard_features_stop_early_and_equal_local(remote: Any, model: Any) -> None:
    from ihs_sight.guard import layer_features

    local = layer_features(model, PROMPTS[:3], [3, 6], cache=False, progress=False)
    got = layer_features(remote, PROMPTS[:3], [3, 6], cache=False, progress=False)
    assert torch.equal(got, local)


def test_simulate_extract_equals_local(model: Any) -> None:
    sim = load_model(backend="simulate")
    assert sim.remote == "local"
    local = extract(model, PROMPTS[:2], cache=False, progress=False)
    got = extract(sim, PROMPTS[:2], cache=False, progress=False)
    assert torch.equal(got.states, local.states)
    with pytest.raises(InputError, match="local models only"):  # the server compiles nothing
        extract(sim, PROMPTS[:2], cache=False, progress=False, compile=True)


def test_remote_key_never_logged(remote: Any, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    with caplog.at_level(logging.DEBUG):
        out = extract(remote, PROMPTS[:1], cache=tmp_path, progress=False)
    assert "bytes per prompt" in caplog.text
    assert KEY not in caplog.text
    assert KEY not in out.meta.model_dump_json()
    for file in tmp_path.rglob("*"):
        if file.is_file():
            assert KEY.encode() not in file.read_bytes()


@pytest.mark.parametrize("fail", ["key_in_error", "key_refused"])
def test_remote_key_echoed_by_server_is_redacted(
    remote: Any, server: str, fail: str, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """A server that quotes the key back (in a job error, or refusing the submission, which is
    retried and logged) must not get it into logs, the raised error, its traceback, or files."""
    control(server, fail=fail)
    with caplog.at_level(logging.DEBUG), pytest.raises(RemoteError) as raised:
        extract(remote, PROMPTS[:1], cache=tmp_path, progress=False)
    error = raised.value
    assert KEY not in str(error)
    assert "***" in str(error)  # the server did quote the key: the test has teeth
    if fail == "key_refused":
        assert "retry 1 of" in caplog.text  # the quoted key also went through the retry warnings
    assert KEY not in "".join(traceback.format_exception(error))
    assert KEY not in caplog.text
    out, err = capfd.readouterr()
    assert KEY not in out and KEY not in err
    for file in tmp_path.rglob("*"):
        if file.is_file():
            assert KEY.encode() not in file.read_bytes()


def test_remote_no_key(monkeypatch: pytest.MonkeyPatch, model_dir: Path, server: str) -> None:
    from nnsight import CONFIG

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    with pytest.raises(NoApiKeyError, match="NDIF_API_KEY"):
        load_model(str(model_dir), backend="remote", host=server, trust_host=True)


def test_remote_model_not_served(server: str, model_dir: Path, key: str, tmp_path: Path) -> None:
    other = tmp_path / "other-model"
    other.mkdir()
    for file in model_dir.iterdir():
        (other / file.name).symlink_to(file)
    stranger = load_model(str(other), backend="remote", host=server, trust_host=True)
    with pytest.raises(ModelNotServedError, match="not served"):
        extract(stranger, PROMPTS[:1], cache=False, progress=False)


def test_remote_version_mismatch(remote: Any, server: str) -> None:
    control(server, min_version="99.0.0")
    with pytest.raises(VersionMismatchError, match="99.0.0"):
        extract(remote, PROMPTS[:1], cache=False, progress=False)


def test_remote_server_error_keeps_finished_batches(
    remote: Any, server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    control(server, fail="error", fail_after=1)
    with pytest.raises(ServerError, match="injected failure"):
        extract(remote, PROMPTS[:2], batch_size=1, cache=tmp_path, progress=False)
    control(server, fail="none")  # also resets the job count
    with caplog.at_level(logging.INFO, logger="ihs_sight.runtime.batches"):
        done = extract(remote, PROMPTS[:2], batch_size=1, cache=tmp_path, progress=False)
    assert "1 of 2 prompts loaded" in caplog.text
    assert control(server)["jobs"] == 1  # only the missing batch was run again
    assert done.states.shape[0] == 2


def test_remote_dropped_connection(
    remote: Any, server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    control(server, fail="drop", fail_after=1)
    with caplog.at_level(logging.WARNING, logger="ihs_sight.backends"), pytest.raises(RemoteNetworkError):
        extract(remote, PROMPTS[:2], batch_size=1, cache=tmp_path, progress=False)
    assert "retry 1 of" in caplog.text  # a transient failure is retried before giving up
    control(server, fail="none")
    extract(remote, PROMPTS[:2], batch_size=1, cache=tmp_path, progress=False)
    assert control(server)["jobs"] == 1


def test_remote_server_down(model_dir: Path, key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(backends, "RETRIES", 1)
    down = load_model(str(model_dir), backend="remote", host=f"http://127.0.0.1:{port}", trust_host=True)
    with pytest.raises(RemoteNetworkError, match="Network failure"):
        extract(down, PROMPTS[:1], cache=False, progress=False)


def test_remote_too_slow(remote: Any, server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    control(server, fail="slow")
    monkeypatch.setattr(backends, "TIMEOUT_S", 2.0)
    with pytest.raises(RemoteTimeoutError, match="within 2 s"):
        extract(remote, PROMPTS[:1], cache=False, progress=False)


def test_remote_errors_are_remote_errors() -> None:
    for cls in (NoApiKeyError, ModelNotServedError, VersionMismatchError, RemoteNetworkError,
                RemoteTimeoutError, ServerError, InvalidResultError):
        assert issubclass(cls, RemoteError)


# ---------------------------------------------------------------------------- hosts


def test_host_policy() -> None:
    """NDIF's own host as is; any other needs trust_host; plain http only on loopback, even trusted."""
    from nnsight.schema.config import ApiConfig

    ndif = ApiConfig.model_fields["HOST"].default
    assert backends.default_host() == ndif
    backends.check_host(ndif)
    backends.check_host(ndif + "/")
    trusted_only = ("http://127.0.0.1:8001", "http://localhost:8001", "http://[::1]:8001",
                    "https://ndif.example.org")
    for host in trusted_only:
        with pytest.raises(InputError, match=r"trust_host=True \(CLI --trust-host\)") as refused:
            backends.check_host(host)
        assert "run code" in str(refused.value)  # says why: results are unpickled
        backends.check_host(host, trust_host=True)
    for host in (ndif.replace("https://", "http://"), "http://10.1.2.3:8001", "http://ndif.example.org"):
        for trust in (False, True):
            with pytest.raises(InputError, match="clear text") as refused:
                backends.check_host(host, trust_host=trust)
            assert "unpickles" in str(refused.value)
    for host in ("ftp://ndif.example.org", "api.ndif.us", "https://user@ndif.example.org", "https://h/x"):
        with pytest.raises(InputError, match="not a URL"):
            backends.check_host(host, trust_host=True)


def test_remote_host_needs_trust(
    server: str, model_dir: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "HOST", CONFIG.API.HOST)  # put back afterwards
    with pytest.raises(InputError, match="trust_host=True"):
        load_model(str(model_dir), backend="remote", host=server)
    monkeypatch.setenv("NDIF_HOST", server)  # the environment's host is held to the same rule
    with pytest.raises(InputError, match="trust_host=True"):
        load_model(str(model_dir), backend="remote")
    with pytest.raises(InputError, match="clear text"):
        load_model(str(model_dir), backend="remote", host="http://192.0.2.1:8001", trust_host=True)
    assert load_model(str(model_dir), backend="remote", trust_host=True).backend == "remote"
    monkeypatch.delenv("NDIF_HOST")
    if backends._NNSIGHT_HOST == backends.default_host():  # nnsight's own setting is NDIF's here
        load_model(str(model_dir), backend="remote")  # no host: back to NDIF's, no trust needed
        assert CONFIG.API.HOST == backends.default_host()


def test_remote_refuses_a_host_changed_after_loading(
    remote: Any, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nnsight's host is process-wide: a job goes only to NDIF's host or one trusted in this process."""
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "HOST", "https://ndif.example.org")
    with pytest.raises(InputError, match="trust_host=True"):
        extract(remote, PROMPTS[:1], cache=False, progress=False)
    monkeypatch.setattr(CONFIG.API, "HOST", "http://192.0.2.1:8001")
    with pytest.raises(InputError, match="clear text"):
        extract(remote, PROMPTS[:1], cache=False, progress=False)
    assert control(server)["jobs"] == 0


def test_cli_trust_host(server: str, model_dir: Path, key: str, tmp_path: Path) -> None:
    from ihs_sight_cli.app import app
    from typer.testing import CliRunner

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"text": PROMPTS[0], "label": "normal"}) + "\n")
    args = ["extract", "--model", str(model_dir), "--remote", "--host", server, "--prompts", str(prompts),
            "--no-cache", "--quiet", "--out", str(tmp_path / "out")]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2, refused.output
    assert "--trust-host" in refused.output
    trusted = CliRunner().invoke(app, [*args, "--trust-host"])
    assert trusted.exit_code == 0, trusted.output
    assert control(server)["jobs"] == 1


# ---------------------------------------------------------------------------- results checked before kept


@pytest.mark.parametrize(("fail", "problem"), [
    ("nan", "has 1 non-finite"),
    ("shape", r"has shape \[1, 30, 576\], expected \[1, 31, 576\]"),  # one layer short
])
def test_remote_invalid_result_is_not_cached(
    remote: Any, model: Any, server: str, fail: str, problem: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    control(server, fail=fail, fail_after=1)  # the first batch is sound, the second is not
    with pytest.raises(InvalidResultError, match=f"'states' {problem}"):
        extract(remote, PROMPTS[:2], batch_size=1, cache=tmp_path, progress=False)
    control(server, fail="none")
    with caplog.at_level(logging.INFO, logger="ihs_sight.runtime.batches"):
        done = extract(remote, PROMPTS[:2], batch_size=1, cache=tmp_path, progress=False)
    assert "1 of 2 prompts loaded" in caplog.text  # the bad batch was not cached ...
    assert control(server)["jobs"] == 1  # ... so it ran again
    local = extract(model, PROMPTS[:2], batch_size=1, cache=False, progress=False)
    assert torch.equal(done.states, local.states)


def test_remote_invalid_lens_and_graft_results(remote: Any, model: Any, server: str) -> None:
    control(server, fail="nan")
    with pytest.raises(InvalidResultError, match="'lens_probs' has 1 non-finite"):
        logit_lens(remote, PROMPTS[:2], top_k=3, progress=False)
    control(server, fail="shape")
    vec = torch.zeros(model.d_model)
    with pytest.raises(InvalidResultError, match=r"'top_ids' has shape \[2, 9\], expected \[2, 10\]"):
        graft(remote, PROMPTS[:2], vec, layer=3, cache=False, progress=False)


def test_check_result() -> None:
    spec = {"x": backends.Expected((2, range(3, 5)), "float"), "ids": backends.Expected((2,), "index", 10)}
    backends.check_result({"x": torch.zeros(2, 4), "ids": torch.tensor([0, 9])}, spec)
    bad = [
        ({"x": torch.zeros(2, 4)}, "not the outputs"),
        ([torch.zeros(2, 4)], "not the outputs"),
        ({"x": torch.zeros(2, 5), "ids": torch.tensor([0, 9])}, r"shape \[2, 5\], expected \[2, 3..4\]"),
        ({"x": torch.zeros(2, 4, dtype=torch.int64), "ids": torch.tensor([0, 9])}, "float dtype"),
        ({"x": torch.full((2, 4), float("inf")), "ids": torch.tensor([0, 9])}, "8 non-finite"),
        ({"x": torch.zeros(2, 4), "ids": torch.tensor([0, 10])}, r"outside 0..9"),
        ({"x": torch.zeros(2, 4), "ids": torch.tensor([0.0, 1.0])}, "torch.int64"),
        ({"x": "zeros", "ids": torch.tensor([0, 9])}, "not a dense tensor"),
    ]
    for result, message in bad:
        with pytest.raises(InvalidResultError, match=message):
            backends.check_result(result, spec)


# ---------------------------------------------------------------------------- concurrency, the client hooks


def test_remote_concurrent_extracts(server: str, model_dir: Path, key: str, model: Any) -> None:
    """Two remote runs in two threads (as the demo runs two models): each gets its own results and
    byte count, and nnsight's client is left as it was."""
    import websocket
    from nnsight.intervention.backends.remote import RemoteBackend

    connect, finalize = websocket.create_connection, RemoteBackend.finalize
    alone = load_model(str(model_dir), backend="remote", host=server, trust_host=True)
    extract(alone, PROMPTS, batch_size=1, cache=False, progress=False)
    models = [load_model(str(model_dir), backend="remote", host=server, trust_host=True) for _ in range(2)]
    start = threading.Barrier(len(models))
    results: dict[int, Any] = {}

    def work(i: int) -> None:
        start.wait()
        try:
            results[i] = extract(models[i], PROMPTS, batch_size=1, cache=False, progress=False)
        except BaseException as error:  # noqa: BLE001 (reported below)
            results[i] = error

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(models))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    local = extract(model, PROMPTS, batch_size=1, cache=False, progress=False)
    for i, m in enumerate(models):
        assert not isinstance(results[i], BaseException), results[i]
        assert torch.equal(results[i].states, local.states)
        # Its own results, counted once (torch.save's random serialisation id moves a few bytes).
        assert m.bytes_received == pytest.approx(alone.bytes_received, rel=0.01)
    assert websocket.create_connection is connect
    assert RemoteBackend.finalize is finalize


def test_remote_watch_failure_is_a_remote_error(remote: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while setting up the job's watch is mapped like any other, not an UnboundLocalError."""
    monkeypatch.setitem(sys.modules, "websocket", None)  # `import websocket` now fails
    with pytest.raises(RemoteError, match="websocket"):
        extract(remote, PROMPTS[:1], cache=False, progress=False)
