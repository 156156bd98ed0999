"""Reliability: caches that cannot be written, killed writers, stale tokenizers, typed load errors.

Each test fails when the protection it checks is taken out (see the closing note of the issue
that added them for how each was checked).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import ihs_sight as ihs
from ihs_sight import io as ihs_io
from ihs_sight.runtime.cache import TensorCache

from .test_extract import VARIED

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **extra}


# ------------------------------------------------------------------ caches that cannot be used


def test_unwritable_cache_warns_once_and_returns_results(model: ihs.Model, tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    reference = ihs.extract(model, VARIED[:4], batch_size=2, cache=False, progress=False)
    with pytest.warns(ihs.CacheWarning, match="cannot be written") as caught:
        got = ihs.extract(model, VARIED[:4], batch_size=2, cache=blocked / "cache", progress=False)
    assert len([w for w in caught if issubclass(w.category, ihs.CacheWarning)]) == 1
    assert torch.equal(got.states, reference.states)


def test_full_disk_mid_run_keeps_results_and_leaves_no_orphan(model: ihs.Model, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real = ihs_io.write_bytes
    calls = {"n": 0}

    def full_disk(path: Any, data: bytes, **kw: Any) -> Path:
        calls["n"] += 1
        if calls["n"] >= 3:  # the second batch's data file (each batch writes data, then JSON) finds the disk full
            raise OSError(28, "No space left on device")
        return real(path, data, **kw)

    monkeypatch.setattr(ihs_io, "write_bytes", full_disk)
    with pytest.warns(ihs.CacheWarning, match="No space left"):
        got = ihs.extract(model, VARIED[:6], batch_size=2, cache=tmp_path, progress=False)
    monkeypatch.setattr(ihs_io, "write_bytes", real)
    assert got.states.shape[0] == 6 and torch.isfinite(got.states).all()
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert len([f for f in files if f.endswith(".safetensors")]) == len([f for f in files if f.endswith(".json")]) == 1
    again = ihs.extract(model, VARIED[:6], batch_size=2, cache=tmp_path, progress=False)
    assert torch.equal(again.states, got.states)


def test_bad_cache_argument_is_an_input_error(model: ihs.Model) -> None:
    with pytest.raises(ihs.InputError, match="cache must be True, False or a directory path"):
        ihs.extract(model, VARIED[:1], cache=3, progress=False)  # type: ignore[arg-type]


def test_opening_a_cache_sweeps_dead_writers_files_only(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    entry = TensorCache(tmp_path, {"x": 1}).dir
    entry.mkdir(parents=True)
    dead_tmp = entry / f".abc.safetensors.tmp-{dead.pid}-0123abcd"
    live_tmp = entry / f".def.safetensors.tmp-{os.getpid()}-4567abcd"
    old_orphan = entry / "orphan.safetensors"  # its JSON commit marker never came
    young_orphan = entry / "young.safetensors"  # a live writer is about to write its JSON
    for p in (dead_tmp, live_tmp, old_orphan, young_orphan):
        p.write_bytes(b"x")
    long_ago = time.time() - 2 * ihs_io.STALE_S
    os.utime(old_orphan, (long_ago, long_ago))
    TensorCache(tmp_path, {"x": 1})
    assert not dead_tmp.exists() and not old_orphan.exists()
    assert live_tmp.exists() and young_orphan.exists()  # a live writer's files are never touched


# ------------------------------------------------------------------ killed writers

KILL_WRITER = r"""
import os, signal, sys
import ihs_sight as ihs
from ihs_sight import io
real = io.write_bytes
state = {"n": 0}
def dying(path, data, **kw):
    state["n"] += 1
    if state["n"] == int(sys.argv[2]):  # half of this file's bytes land, then the process is killed
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-deadbeef")
        tmp.write_bytes(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, data, **kw)
io.write_bytes = dying
ihs.extract(ihs.load_model(), sys.argv[3].split("|"), batch_size=2, cache=sys.argv[1], progress=False)
"""


def test_writer_killed_mid_write_leaves_a_usable_cache(model: ihs.Model, tmp_path: Path) -> None:
    prompts = VARIED[:6]
    proc = subprocess.run([sys.executable, "-c", KILL_WRITER, str(tmp_path), "3", "|".join(prompts)],
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert list(tmp_path.rglob(".*.tmp-*")), "the killed writer should have left a temporary file"
    got = ihs.extract(model, prompts, batch_size=2, cache=tmp_path, progress=False)
    reference = ihs.extract(model, prompts, batch_size=2, cache=False, progress=False)
    torch.testing.assert_close(got.states, reference.states, atol=1e-5, rtol=1e-5)
    assert not list(tmp_path.rglob(".*.tmp-*"))  # the dead writer's leftovers were swept


KILL_CONVERSION = r"""
import os, signal, sys
from pathlib import Path
from ihs_sight import models
if sys.argv[1] == "kill":
    from transformers import PreTrainedModel
    real = PreTrainedModel.save_pretrained
    def dying(self, path, *a, **kw):
        real(self, path, *a, **kw)  # the weights land in the temporary directory, then the process dies
        os.kill(os.getpid(), signal.SIGKILL)
    PreTrainedModel.save_pretrained = dying
path = models.gguf_to_safetensors(models.default_gguf_path())
print("HASH", models.load_model(str(path)).weights_hash)
"""


def test_gguf_conversion_killed_mid_write_then_redone(model: ihs.Model, tmp_path: Path) -> None:
    env = _env(IHS_SIGHT_CACHE=str(tmp_path))
    killed = subprocess.run([sys.executable, "-c", KILL_CONVERSION, "kill"], env=env, capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    models_dir = tmp_path / "models"
    assert any(p.name.startswith(".") for p in models_dir.iterdir())  # its half-built copy is left behind
    done = subprocess.run([sys.executable, "-c", KILL_CONVERSION, "run"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"HASH {model.weights_hash}" in done.stdout  # the same weights as the session's default model
    assert not [p for p in models_dir.iterdir() if p.name.startswith(".") and ".tmp-" in p.name]


# ------------------------------------------------------------------ stale tokenizers and remote revisions


def test_cache_is_keyed_by_token_ids_not_text(model: ihs.Model, tmp_path: Path) -> None:
    """The same weights with an edited tokenizer.json must not reuse the first tokenizer's rows."""
    from transformers import AutoTokenizer

    saved = tmp_path / "tok"
    model.tokenizer.save_pretrained(saved)
    spec = json.loads((saved / "tokenizer.json").read_text(encoding="utf-8"))
    spec["model"]["merges"] = spec["model"]["merges"][:200]  # words now split into many more pieces
    (saved / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    other = ihs.load_model(model.hf, tokenizer=AutoTokenizer.from_pretrained(saved))
    cache = tmp_path / "cache"
    first = ihs.extract(model, VARIED[:3], chat=False, cache=cache, progress=False)
    second = ihs.extract(other, VARIED[:3], chat=False, cache=cache, progress=False)
    fresh = ihs.extract(other, VARIED[:3], chat=False, cache=False, progress=False)
    assert not torch.equal(first.states, fresh.states)
    assert torch.equal(second.states, fresh.states)


def test_remote_weights_hash_includes_the_revision() -> None:
    from accelerate import init_empty_weights
    from transformers import LlamaConfig, LlamaForCausalLM

    from ihs_sight.models import weights_hash

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2)
    with init_empty_weights():
        meta = LlamaForCausalLM(config)
    meta.config._commit_hash = "a" * 40
    before = weights_hash(meta)
    meta.config._commit_hash = "b" * 40
    assert weights_hash(meta) != before


# ------------------------------------------------------------------ loading


def test_cuda_without_a_gpu_fails_before_loading_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from ihs_sight import models

    def never(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("weights were read before the device was checked")

    monkeypatch.setattr(models, "_load_hf", never)
    monkeypatch.setattr(models, "gguf_to_safetensors", never)
    with pytest.raises(ihs.InputError, match="no usable CUDA device"):
        ihs.load_model(device="cuda")


@pytest.mark.parametrize("error", [ImportError("needs an optional package"), RuntimeError("bad shapes"),
                                   AssertionError("inconsistent config")])
def test_untyped_load_errors_become_model_load_errors(error: Exception, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    def broken(*_a: Any, **_k: Any) -> Any:
        raise error

    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", broken)
    with pytest.raises(ihs.ModelLoadError, match=type(error).__name__):
        ihs.load_model(str(tmp_path))
