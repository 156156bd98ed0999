"""extract(pack=...): packed rows give each prompt the states it has alone, or a clear error."""

from __future__ import annotations

import weakref
from typing import Any

import pytest
import torch

import ihs_sight as ihs
from ihs_sight.prompts import encode
from ihs_sight.runtime import packing

from .test_extract import VARIED, assert_matches_reference
from .test_models import PROMPTS, _tiny, tokenizer  # noqa: F401 (the tokenizer fixture)


@pytest.mark.parametrize(("pack", "batch_size"), [(True, 16), (64, 2)])
def test_packed_extract_matches_hf_per_prompt(model: ihs.Model, pack: bool | int, batch_size: int) -> None:
    states = ihs.extract(model, VARIED, pack=pack, batch_size=batch_size, cache=False, progress=False)
    assert states.states.shape == (len(VARIED), model.n_layers + 1, model.d_model)
    assert_matches_reference(states, model.hf, encode(model.tokenizer, VARIED))


def test_pack_rows_is_first_fit_decreasing() -> None:
    rows = packing.pack_rows([5, 9, 3, 7, 2], 10)
    assert rows == [[1], [3, 2], [0, 4]]
    assert sorted(i for row in rows for i in row) == [0, 1, 2, 3, 4]


def test_packed_batch_restarts_positions_and_blocks_attention() -> None:
    inputs, last = packing.packed_batch([[[11, 12, 13], [21, 22]], [[31]]], pad_id=0)
    assert inputs["input_ids"].tolist() == [[11, 12, 13, 21, 22], [31, 0, 0, 0, 0]]
    assert inputs["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 0, 1, 2, 3]]
    assert last.tolist() == [2, 4, 5]  # flat index of each prompt's last token
    mask = inputs["attention_mask"][0, 0]
    assert mask[4].tolist() == [False, False, False, True, True]  # the second prompt sees only itself
    assert mask[2].tolist() == [True, True, True, False, False]
    additive, _ = packing.packed_batch([[[1, 2], [3]]], pad_id=0, mask="additive", dtype=torch.bfloat16)
    assert additive["attention_mask"].dtype == torch.bfloat16
    assert float(additive["attention_mask"][0, 0, 2, 0]) == float(torch.finfo(torch.bfloat16).min)
    assert float(additive["attention_mask"][0, 0, 2, 2]) == 0.0


def test_packed_lens_equals_padded_lens(model: ihs.Model) -> None:
    packed = ihs.extract(model, VARIED[:8], pack=True, lens_top_k=5, cache=False, progress=False).lens
    padded = ihs.extract(model, VARIED[:8], lens_top_k=5, cache=False, progress=False).lens
    assert packed is not None and padded is not None
    below_last = slice(0, -1)  # the top-1 of near-ties at the last layer may swap with rounding
    assert torch.equal(packed.token_ids[:, below_last], padded.token_ids[:, below_last])
    torch.testing.assert_close(packed.probs, padded.probs, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed.emotion_mass, padded.emotion_mass, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls_name", sorted(ihs.ARCHITECTURES))
def test_packed_extract_matches_hf_for_tiny_random_model(cls_name: str, tokenizer: Any) -> None:  # noqa: F811
    hf = _tiny(cls_name)
    model = ihs.load_model(hf, tokenizer=tokenizer)
    states = ihs.extract(model, PROMPTS, chat=False, pack=True, batch_size=2, cache=False, progress=False)
    assert_matches_reference(states, hf, encode(model.tokenizer, PROMPTS, chat=False))


def test_packing_with_eager_attention_uses_an_additive_mask(tokenizer: Any) -> None:  # noqa: F811
    hf = _tiny("LlamaForCausalLM")
    hf.config._attn_implementation = "eager"
    model = ihs.load_model(hf, tokenizer=tokenizer)
    assert packing.mask_kind(model) == "additive"
    states = ihs.extract(model, PROMPTS, chat=False, pack=True, cache=False, progress=False)
    assert_matches_reference(states, hf, encode(model.tokenizer, PROMPTS, chat=False))


def test_check_packing_refuses_a_model_that_mixes_prompts(model: ihs.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain causal mask (what a model that ignores the 4D mask computes) must be caught."""
    real = packing.packed_batch

    def leaky(*args: Any, **kwargs: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        inputs, last = real(*args, **kwargs)
        width = inputs["input_ids"].shape[1]
        inputs["attention_mask"] = torch.ones(width, width, dtype=torch.bool).tril().expand_as(inputs["attention_mask"])
        return inputs, last

    monkeypatch.setattr(packing, "packed_batch", leaky)
    monkeypatch.setattr(packing, "_CHECKED", weakref.WeakSet())
    with pytest.raises(ihs.InputError, match="does not keep packed prompts apart"):
        ihs.extract(model, VARIED[:3], pack=True, cache=False, progress=False)


@pytest.mark.parametrize("pack", [0, -4, "yes", 1.5])
def test_extract_rejects_bad_pack(model: ihs.Model, pack: Any) -> None:
    with pytest.raises(ihs.InputError, match="pack must be"):
        ihs.extract(model, VARIED[:2], pack=pack, cache=False, progress=False)


def test_packing_refuses_attention_without_4d_masks(tokenizer: Any) -> None:  # noqa: F811
    hf = _tiny("LlamaForCausalLM")
    model = ihs.load_model(hf, tokenizer=tokenizer)
    hf.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ihs.InputError, match="'sdpa' or 'eager'"):
        ihs.extract(model, PROMPTS, chat=False, pack=True, cache=False, progress=False)


def test_packing_refuses_prompts_longer_than_a_sliding_window(tokenizer: Any) -> None:  # noqa: F811
    hf = _tiny("MistralForCausalLM")
    hf.config.sliding_window = 8
    model = ihs.load_model(hf, tokenizer=tokenizer)
    short = [p for p, ids in zip(PROMPTS, encode(tokenizer, PROMPTS, chat=False)) if len(ids) <= 8]
    states = ihs.extract(model, short, chat=False, pack=True, cache=False, progress=False)
    assert_matches_reference(states, hf, encode(model.tokenizer, short, chat=False))
    with pytest.raises(ihs.InputError, match="sliding attention window"):
        ihs.extract(model, PROMPTS, chat=False, pack=True, cache=False, progress=False)


def test_packing_refuses_alibi_positions(tokenizer: Any) -> None:  # noqa: F811
    """Falcon with ALiBi builds its position bias from a 2D mask: packed rows cannot run, and say so."""
    import transformers as tf

    torch.manual_seed(0)
    config = tf.FalconConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=3,
                             num_attention_heads=4, alibi=True, new_decoder_architecture=False, multi_query=True)
    model = ihs.load_model(tf.FalconForCausalLM(config).eval(), tokenizer=tokenizer)
    with pytest.raises(ihs.InputError, match="pack=False"):
        ihs.extract(model, PROMPTS, chat=False, pack=True, cache=False, progress=False)
    padded = ihs.extract(model, PROMPTS, chat=False, cache=False, progress=False)  # the padded path still works
    assert_matches_reference(padded, model.hf, encode(model.tokenizer, PROMPTS, chat=False))


def test_compiled_extract_matches_hf_and_restores_nnsight(tokenizer: Any) -> None:  # noqa: F811
    """compile=True runs the blocks compiled, gives the reference states, and leaves every hook in place."""
    hf = _tiny("LlamaForCausalLM")
    with torch.no_grad():  # installs transformers' output-recording hooks, which compile sets aside
        hf(torch.tensor([[1, 2, 3]]), output_attentions=True, output_hidden_states=True)
    model = ihs.load_model(hf, tokenizer=tokenizer)

    def hooks() -> tuple[set[str], dict[str, list[Any]]]:
        return ({name for name, m in hf.named_modules() if "forward" in m.__dict__},
                {name: list(m._forward_hooks.values()) for name, m in hf.named_modules() if m._forward_hooks})

    before = hooks()
    assert any(".self_attn" in name for name in before[1])  # the recording hooks are there to set aside
    ids = encode(model.tokenizer, PROMPTS, chat=False)
    for pack in (True, False):  # packed rows, and padded batches of new widths (dynamic shapes)
        states = ihs.extract(model, PROMPTS, chat=False, pack=pack, compile=True, batch_size=2, cache=False,
                             progress=False)
        assert_matches_reference(states, hf, ids)
        assert hooks() == before
    # Each block's nnsight controller runs the class's own forward again, not the compiled one.
    assert all(block.__dict__["forward"].state.body is type(block).forward for block in hf.model.layers)
    import nnsight

    with model.nn.trace(torch.tensor([[1, 2, 3]])):  # a submodule is reachable again
        mlp_out = nnsight.save(model.nn.model.layers[1].mlp.output)
    assert mlp_out.shape == (1, 3, 64)


# ------------------------------------------------------------------ pack= and compile= in the other analyses


def _padded_and_packed(model: ihs.Model, **run: Any) -> dict[str, tuple[Any, Any]]:
    """logit_lens, graft (next token) and guard features of PROMPTS, left-padded and then with ``run``."""
    from ihs_sight.guard import layer_features

    kw: dict[str, Any] = {"chat": False, "progress": False, "batch_size": 2}
    out: dict[str, tuple[Any, Any]] = {}
    for name, fn in {
        "lens": lambda **o: ihs.logit_lens(model, PROMPTS, top_k=5, **kw, **o),
        "graft": lambda **o: ihs.graft(model, PROMPTS, PROMPTS[:3], layer=2, keep_logits=True, cache=False,
                                       **kw, **o),
        "graft_seed": lambda **o: ihs.graft(model, PROMPTS, PROMPTS[:3], layer=2, mode="seed", keep_logits=True,
                                            cache=False, **kw, **o),
        "mean": lambda **o: layer_features(model, PROMPTS, [1, 3], pool="mean", cache=False, **kw, **o),
        "last": lambda **o: layer_features(model, PROMPTS, [3, 1], pool="last", cache=False, **kw, **o),
    }.items():
        out[name] = (fn(), fn(**run))
    return out


def _assert_same_results(results: dict[str, tuple[Any, Any]], tol: float) -> None:
    padded, other = results["lens"]
    # Sorted top-k probabilities and full-vocabulary masses: robust to near-tied ids swapping.
    torch.testing.assert_close(other.probs, padded.probs, atol=tol, rtol=tol)
    torch.testing.assert_close(other.emotion_mass, padded.emotion_mass, atol=tol, rtol=tol)
    for name in ("graft", "graft_seed"):
        padded, other = results[name]
        torch.testing.assert_close(other.logits_before, padded.logits_before, atol=tol, rtol=tol)
        torch.testing.assert_close(other.logits_after, padded.logits_after, atol=tol, rtol=tol)
        assert [t.prompt for t in other.targets] == PROMPTS
    for name in ("mean", "last"):
        padded, other = results[name]
        assert other.shape == padded.shape == (len(PROMPTS), 2, padded.shape[-1])
        torch.testing.assert_close(other, padded, atol=tol, rtol=tol)


@pytest.mark.parametrize("cls_name", sorted(ihs.ARCHITECTURES))
def test_packed_lens_graft_and_guard_equal_padded_for_tiny_random_model(cls_name: str, tokenizer: Any) -> None:  # noqa: F811
    model = ihs.load_model(_tiny(cls_name), tokenizer=tokenizer)
    _assert_same_results(_padded_and_packed(model, pack=True), tol=1e-4)


def test_compiled_lens_graft_and_guard_equal_padded(tokenizer: Any) -> None:  # noqa: F811
    model = ihs.load_model(_tiny("LlamaForCausalLM"), tokenizer=tokenizer)
    _assert_same_results(_padded_and_packed(model, pack=True, compile=True), tol=1e-4)


def test_packed_analyses_equal_padded_on_the_default_model(model: ihs.Model) -> None:
    """The bundled model with its chat template: the mean pool skips the template's common prefix."""
    from ihs_sight.guard import layer_features

    prompts = VARIED[:6]
    for pool in ("mean", "last"):
        padded = layer_features(model, prompts, [4, 9], pool=pool, batch_size=3, cache=False, progress=False)
        packed = layer_features(model, prompts, [4, 9], pool=pool, pack=True, cache=False, progress=False)
        torch.testing.assert_close(packed, padded, atol=1e-4, rtol=1e-4)
    padded_lens = ihs.logit_lens(model, prompts, top_k=5, layers=[10, 20, 30], progress=False)
    packed_lens = ihs.logit_lens(model, prompts, top_k=5, layers=[10, 20, 30], pack=True, progress=False)
    torch.testing.assert_close(packed_lens.probs, padded_lens.probs, atol=1e-5, rtol=0)


def test_tail_weights_average_a_tails_opening_left_padded_and_packed() -> None:
    """``Batch.tail_weights(counts, head=k)`` puts 1/k on the first k tokens of each prompt's last
    ``counts`` tokens (fewer if the tail is shorter), for a left-padded and a packed batch alike."""
    from ihs_sight.runtime.batches import Batch

    padded = Batch(indices=[0, 1], inputs={"input_ids": torch.zeros(2, 6, dtype=torch.long)}, last=None, lengths=[4, 6])
    w = padded.tail_weights([3, 5], head=2)
    want = torch.zeros(2, 6)
    want[0, 3:5] = 0.5  # row 0 ends at column 5; its last 3 tokens start at column 3
    want[1, 1:3] = 0.5
    assert torch.equal(w, want)
    assert torch.equal(padded.tail_weights([3, 1], head=4)[1], torch.eye(6)[5])  # a 1-token tail: its one token
    assert torch.equal(padded.tail_weights([3, 5]), padded.tail_weights([3, 5], head=99))
    # packed: two prompts in one row of width 8, last tokens at flat positions 3 and 7
    packed = Batch(indices=[0, 1], inputs={"input_ids": torch.zeros(1, 8, dtype=torch.long)},
                   last=torch.tensor([3, 7]), lengths=[4, 4])
    w = packed.tail_weights([2, 3], head=1)
    assert torch.equal(w, torch.stack([torch.eye(8)[2], torch.eye(8)[5]]))
    with pytest.raises(ValueError, match="head must be at least 1"):
        packed.tail_weights([2, 3], head=0)
