"""extract(): last-token states equal plain transformers forward passes, one prompt at a time."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import ihs_sight as ihs
from ihs_sight.prompts import encode
from ihs_sight.runtime.packing import length_batches, pad_batch

from .conftest import FP32_REL_TOL

VARIED = [
    "Hi",
    "kill python process",
    "Write a haiku about rain on a tin roof.",
    "How do I bake sourdough bread at home with a starter that is only two weeks old and smells a bit sour?",
    "What is 17 times 23?",
    "I'm planning a trip to Lisbon in March. Which neighbourhoods are good for a first visit, and how many days do I need?",
    "Explain recursion to a ten-year-old.",
    "history of the Manhattan Project",
    "My tomato plants have yellow leaves at the bottom. Is that a watering problem or a nutrient deficiency, and what should I do this week?",
    "List three uses of baking soda.",
    "Tell me a joke.",
    "Could you summarise the causes of the First World War in five bullet points for a school revision sheet?",
    "Why is the sky blue?",
    "Draft a polite email asking my landlord to fix the heating, which has been broken for nine days now.",
    "Describe the water cycle.",
    "What are the rules of chess castling, including the cases where castling is not allowed?",
    "Give me a packing list for a weekend of camping in the rain.",
]


def reference_states(hf: Any, ids: list[int]) -> torch.Tensor:
    """(L+1, D) from a plain transformers forward of one unpadded prompt.

    ``hidden_states[l]`` for l < L; the last block's raw output comes from a plain forward
    hook, because transformers' last ``hidden_states`` entry already has the final norm.
    """
    blocks = _blocks(hf)
    captured: dict[str, torch.Tensor] = {}

    def hook(_m: Any, _i: Any, out: Any) -> None:
        captured["last"] = (out[0] if isinstance(out, tuple) else out)[0, -1].detach().clone()

    handle = blocks[-1].register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = hf(input_ids=torch.tensor([ids]), output_hidden_states=True)
    finally:
        handle.remove()
    hs = out.hidden_states
    n = len(blocks)
    return torch.stack([hs[l][0, -1] for l in range(n)] + [captured["last"]], 0).float()


def _blocks(hf: Any) -> Any:
    for path in ("model.layers", "transformer.h", "gpt_neox.layers"):
        obj = hf
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise AssertionError(f"no blocks found in {type(hf).__name__}")


def assert_matches_reference(states: ihs.HiddenStates, hf: Any, ids: list[list[int]], tol: float = FP32_REL_TOL) -> None:
    for i, row in enumerate(ids):
        ref = reference_states(hf, row)
        err = (states.states[i] - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-12)
        worst = int(err.argmax())
        assert float(err.max()) <= tol, (
            f"prompt {i} ({states.prompts[i][:40]!r}): relative L2 error {float(err.max()):.2e} at layer {worst} "
            f"exceeds {tol:.0e}; padding, position ids or the layer mapping drifted"
        )


@pytest.fixture(scope="module")
def varied_ids(model: ihs.Model) -> list[list[int]]:
    return encode(model.tokenizer, VARIED)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_extract_matches_hf_hidden_states_when_left_padded(
    model: ihs.Model, varied_ids: list[list[int]], batch_size: int
) -> None:
    states = ihs.extract(model, VARIED, batch_size=batch_size, cache=False, progress=False)
    assert states.states.shape == (len(VARIED), model.n_layers + 1, model.d_model)
    assert states.states.dtype == torch.float32
    assert_matches_reference(states, model.hf, varied_ids)


def test_extract_batch_sizes_agree(model: ihs.Model) -> None:
    a = ihs.extract(model, VARIED, batch_size=1, cache=False, progress=False).states
    b = ihs.extract(model, VARIED, batch_size=16, cache=False, progress=False).states
    rel = (a - b).norm(dim=-1) / a.norm(dim=-1)
    assert float(rel.max()) <= FP32_REL_TOL


def test_extract_metadata_records_template_and_hashes(model: ihs.Model) -> None:
    states = ihs.extract(model, VARIED[:2], cache=False, progress=False, system_prompt="Be brief.")
    meta = states.meta
    assert meta.chat and meta.system_prompt == "Be brief."
    assert meta.template == model.tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "{prompt}"}],
        tokenize=False, add_generation_prompt=True,
    )
    assert meta.weights_hash == model.weights_hash and len(meta.weights_hash) == 32
    assert meta.layer_names[0] == "embed" and meta.layer_names[-1] == f"block.{model.n_layers}"
    assert len(set(meta.prompt_hashes)) == 2
    assert meta.dtype == "float32"


def test_extract_system_prompt_changes_states(model: ihs.Model) -> None:
    a = ihs.extract(model, ["Tell me a joke."], cache=False, progress=False)
    b = ihs.extract(model, ["Tell me a joke."], cache=False, progress=False, system_prompt="You are terse.")
    assert not torch.allclose(a.states[:, 5], b.states[:, 5])


def test_extract_carries_promptset_labels(model: ihs.Model, data: ihs.PromptSet, states_cache: Path) -> None:
    subset = data.jailbreak.head(2) + data.test.normal.head(2)
    states = ihs.extract(model, subset, cache=states_cache, progress=False)
    assert states.labels == ["jailbreak", "jailbreak", "normal", "normal"]
    assert states.families is not None and states.families[0] is not None and states.families[3] is None
    assert states.categories == subset.categories


def test_extract_raw_mode_uses_no_template(model: ihs.Model) -> None:
    states = ihs.extract(model, ["The capital of France is"], chat=False, cache=False, progress=False)
    ids = model.tokenizer("The capital of France is")["input_ids"]
    assert_matches_reference(states, model.hf, [ids])
    assert states.meta.template == "{prompt}"


def test_hidden_states_save_load_round_trip(model: ihs.Model, tmp_path: Path) -> None:
    states = ihs.extract(model, VARIED[:3], cache=False, progress=False)
    stem = states.save(tmp_path / "states")
    back = ihs.HiddenStates.load(stem)
    assert torch.equal(back.states, states.states)
    assert back.meta == states.meta and back.prompts == states.prompts


# ------------------------------------------------------------------ cache


def _cache_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.safetensors"))


def test_extract_cache_loads_instead_of_running(model: ihs.Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ihs.extract(model, VARIED[:5], batch_size=2, cache=tmp_path, progress=False)
    assert len(_cache_files(tmp_path)) == 3  # one entry per batch

    ex = importlib.import_module("ihs_sight.extract")

    def boom(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("a cached prompt was recomputed")

    monkeypatch.setattr(ex, "trace_batch", boom)
    again = ihs.extract(model, list(reversed(VARIED[:5])), batch_size=4, cache=tmp_path, progress=False)
    assert torch.equal(again.states, first.states.flip(0))


def test_extract_resumes_after_interruption(model: ihs.Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ex = importlib.import_module("ihs_sight.extract")

    real = ex.trace_batch
    calls = {"n": 0}

    def flaky(m: Any, batch: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(m, batch, **kwargs)

    monkeypatch.setattr(ex, "trace_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        ihs.extract(model, VARIED[:6], batch_size=2, cache=tmp_path, progress=False)
    assert len(_cache_files(tmp_path)) == 2  # two finished batches survived, nothing half-written
    assert not list(tmp_path.rglob(".*tmp*"))

    seen: list[int] = []

    def counting(m: Any, batch: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        seen.append(batch["input_ids"].shape[0])
        return real(m, batch, **kwargs)

    monkeypatch.setattr(ex, "trace_batch", counting)
    resumed = ihs.extract(model, VARIED[:6], batch_size=2, cache=tmp_path, progress=False)
    assert seen == [2]  # only the unfinished batch ran
    fresh = ihs.extract(model, VARIED[:6], batch_size=2, cache=False, progress=False)
    assert torch.equal(resumed.states, fresh.states)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_extract_recomputes_corrupted_cache_entry(
    model: ihs.Model, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = ihs.extract(model, VARIED[:2], cache=tmp_path, progress=False)
    (entry,) = _cache_files(tmp_path)
    raw = bytearray(entry.read_bytes())
    if damage == "truncate":
        entry.write_bytes(bytes(raw[: len(raw) // 2]))
    else:
        raw[-10] ^= 0xFF  # inside the tensor data: the header still parses
        entry.write_bytes(bytes(raw))
    with caplog.at_level("WARNING"):
        again = ihs.extract(model, VARIED[:2], cache=tmp_path, progress=False)
    assert any("corrupted" in r.getMessage() for r in caplog.records)
    assert torch.equal(again.states, first.states)
    # The damaged entry was replaced by an intact one.
    assert len(_cache_files(tmp_path)) == 1


# ------------------------------------------------------------------ helpers


def test_pad_batch_left_pads_and_counts_positions() -> None:
    batch = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]


def test_length_batches_groups_similar_lengths() -> None:
    assert length_batches([3, 10, 4, 9, 1], 2) == [[1, 3], [2, 0], [4]]


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ([], "empty"),
        ([""], "empty string"),
        (["ok", "   "], "empty string"),
        (["ok", 3], "not a string"),
        ("just a string", "single string"),
        (None, "list of strings"),
    ],
)
def test_extract_rejects_bad_prompts(model: ihs.Model, prompts: Any, message: str) -> None:
    with pytest.raises(ihs.InputError, match=message):
        ihs.extract(model, prompts, cache=False, progress=False)


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True])
def test_extract_rejects_bad_batch_size(model: ihs.Model, batch_size: Any) -> None:
    with pytest.raises(ihs.InputError, match="batch_size"):
        ihs.extract(model, ["hi"], batch_size=batch_size, cache=False, progress=False)


def test_extract_rejects_prompt_longer_than_context(model: ihs.Model) -> None:
    too_long = "word " * (model.max_length + 10)
    with pytest.raises(ihs.InputError, match="at most"):
        ihs.extract(model, [too_long], cache=False, progress=False)


def test_extract_raw_mode_rejects_system_prompt(model: ihs.Model) -> None:
    with pytest.raises(ihs.InputError, match="chat=True"):
        ihs.extract(model, ["hi"], chat=False, system_prompt="x", cache=False, progress=False)


# ------------------------------------------------------------------ validation of results


def test_hidden_states_refuses_inconsistent_fields(model: ihs.Model) -> None:
    good = ihs.extract(model, VARIED[:3], cache=False, progress=False)
    fields = good.model_dump(exclude={"states", "lens"})
    fields["meta"] = good.meta
    with pytest.raises(ihs.InputError, match="Invalid HiddenStates: 2 labels for 3 prompts"):
        ihs.HiddenStates(states=good.states, **{**fields, "labels": ["normal", "malicious"]})
    nan = good.states.clone()
    nan[1, 7, 3] = float("nan")
    with pytest.raises(ihs.InputError, match=r"NaN or inf \(first: prompt 1, layer 7\)"):
        ihs.HiddenStates(states=nan, **fields)
    with pytest.raises(ihs.InputError, match="2 prompts for 3 rows"):
        ihs.HiddenStates(states=good.states, **{**fields, "prompts": VARIED[:2]})


def test_hidden_states_load_names_the_file_when_tampered(model: ihs.Model, tmp_path: Path) -> None:
    stem = ihs.extract(model, VARIED[:3], cache=False, progress=False).save(tmp_path / "s")
    meta = json.loads(stem.with_suffix(".json").read_text())
    stem.with_suffix(".json").write_text(json.dumps({**meta, "prompts": meta["prompts"][:2]}))
    with pytest.raises(ihs.InputError, match=r"Cannot read hidden states at .*s: .*2 prompts for 3 rows"):
        ihs.HiddenStates.load(stem)
    stem.with_suffix(".json").write_text(json.dumps({**meta, "meta": {"model_name": 3}}))
    with pytest.raises(ihs.InputError, match="Cannot read hidden states at"):
        ihs.HiddenStates.load(stem)


def test_extract_names_layer_and_dtype_of_overflowing_states(model: ihs.Model,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    ex = importlib.import_module("ihs_sight.extract")
    real = ex.trace_batch

    def overflow(m: Any, batch: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        out = real(m, batch, **kwargs)
        out["states"][:, 12:] = float("inf")  # what a float16 overflow at block 12 looks like
        return out

    monkeypatch.setattr(ex, "trace_batch", overflow)
    with pytest.raises(ihs.InputError, match=r"prompts\[[01]\] has NaN or inf states from layer 12 on in float32"):
        ihs.extract(model, VARIED[:2], cache=False, progress=False)
