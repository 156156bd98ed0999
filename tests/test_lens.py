"""Logit lens: parity with a plain-transformers lens, extract(lens_top_k), TIC, result I/O, plots.

The reference lens is computed here without ihs-sight's trace code: one plain transformers
forward per prompt (unpadded, ``output_hidden_states=True``), then ``lm_head(norm(h))`` on the
last position. transformers' ``hidden_states[L]`` is already final-normed, so the last layer is
also checked through a forward hook on the last block (raw output, normed once here).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ihs_sight as ihs
from ihs_sight.lens import (
    Consistency,
    LensResult,
    compare_consistency,
    logit_lens,
    middle_band,
    topk_consistency,
)
from ihs_sight.prompts import encode

K = 5
LOGIT_TOL = 1e-4
"""Max abs difference of lens logits against plain transformers (the issue's bound; ~2e-5 seen
with a left-padded batch of 40- and 70-token prompts)."""
PROB_TOL = 1e-5
"""Max abs difference of lens probabilities against the plain-transformers reference."""


@pytest.fixture(scope="module")
def prompts(data: ihs.PromptSet) -> ihs.PromptSet:
    """Two malicious and two normal prompts of different lengths (so the batch is left-padded)."""
    return data.malicious.head(2) + data.normal.head(2)


@pytest.fixture(scope="module")
def lens(model: ihs.Model, prompts: ihs.PromptSet) -> LensResult:
    return logit_lens(model, prompts, top_k=K, progress=False)


@pytest.fixture(scope="module")
def reference(model: ihs.Model, prompts: ihs.PromptSet) -> dict[str, torch.Tensor]:
    """Plain transformers, one unpadded prompt at a time: the lens logits of every layer, the
    model's own last-position logits, and the raw (un-normed) last-block output via a hook."""
    hf = model.hf
    n_layers = model.n_layers
    lens_logits, final_logits, raw_last = [], [], []
    captured: list[torch.Tensor] = []
    hook = hf.model.layers[n_layers - 1].register_forward_hook(lambda mod, inp, out: captured.append(out))
    try:
        with torch.no_grad():
            for ids in encode(model.tokenizer, prompts.texts, chat=True):
                captured.clear()
                out = hf(torch.tensor([ids]), output_hidden_states=True)
                hs = out.hidden_states
                assert len(hs) == n_layers + 1
                # hidden_states[l] for l < L is the raw residual; hidden_states[L] is already normed.
                per_layer = [hf.lm_head(hf.model.norm(hs[layer][0, -1])) for layer in range(n_layers)]
                per_layer.append(hf.lm_head(hs[n_layers][0, -1]))
                lens_logits.append(torch.stack(per_layer))
                final_logits.append(out.logits[0, -1])
                raw_last.append(captured[0][0, -1])
    finally:
        hook.remove()
    return {
        "lens_logits": torch.stack(lens_logits).float(),
        "final_logits": torch.stack(final_logits).float(),
        "raw_last": torch.stack(raw_last).float(),
    }


def test_logit_lens_matches_plain_transformers_at_every_layer(
    lens: LensResult, reference: dict[str, torch.Tensor], model: ihs.Model
) -> None:
    assert lens.token_ids.shape == (4, model.n_layers + 1, K)
    assert lens.layers == list(range(model.n_layers + 1))
    ref_probs = reference["lens_logits"].softmax(-1)
    top = ref_probs.topk(K, dim=-1)
    for layer in range(model.n_layers + 1):
        mismatch = (top.indices[:, layer] != lens.token_ids[:, layer]).nonzero().tolist()
        assert not mismatch, (
            f"layer {layer}: top-{K} ids differ from plain transformers at (prompt, rank) {mismatch}"
        )
    prob_diff = (top.values - lens.probs).abs().max().item()
    assert prob_diff <= PROB_TOL, f"lens probabilities drift {prob_diff:.2e} from plain transformers"
    ref_top_logits = reference["lens_logits"].gather(-1, lens.token_ids)
    logit_diff = (ref_top_logits - lens.logits).abs().max().item()
    assert logit_diff <= LOGIT_TOL, (
        f"lens logits drift {logit_diff:.2e} from plain transformers (batched, left-padded)"
    )


def test_logit_lens_last_layer_equals_model_logits(
    lens: LensResult, reference: dict[str, torch.Tensor], model: ihs.Model
) -> None:
    n_layers = model.n_layers
    own = reference["final_logits"].gather(-1, lens.token_ids[:, n_layers])
    diff = (own - lens.logits[:, n_layers]).abs().max().item()
    assert diff <= LOGIT_TOL, f"lens at layer {n_layers} differs from the model's logits by {diff:.2e}"
    assert torch.equal(reference["final_logits"].topk(K, -1).indices, lens.token_ids[:, n_layers])


def test_logit_lens_applies_final_norm_once_at_last_layer(
    lens: LensResult, reference: dict[str, torch.Tensor], model: ihs.Model
) -> None:
    hf = model.hf
    with torch.no_grad():
        once = hf.lm_head(hf.model.norm(reference["raw_last"])).float()
        twice = hf.lm_head(hf.model.norm(hf.model.norm(reference["raw_last"]))).float()
    n_layers = model.n_layers
    assert torch.equal(once.topk(K, -1).indices, lens.token_ids[:, n_layers])
    assert (once.gather(-1, lens.token_ids[:, n_layers]) - lens.logits[:, n_layers]).abs().max() <= LOGIT_TOL
    # The seed normalised the last layer twice; that gives a different distribution.
    assert not torch.equal(twice.topk(K, -1).indices, lens.token_ids[:, n_layers])


def test_logit_lens_layers_subset_matches_full(
    model: ihs.Model, prompts: ihs.PromptSet, lens: LensResult
) -> None:
    part = logit_lens(model, prompts.head(2), top_k=3, layers=[15, 0, 30], progress=False)
    assert part.layers == [0, 15, 30]
    assert torch.equal(part.token_ids, lens.token_ids[:2, [0, 15, 30], :3])
    with pytest.raises(ihs.InputError, match="not in this lens"):
        part.top_tokens(16)


def test_extract_lens_top_k_equals_logit_lens(
    model: ihs.Model, prompts: ihs.PromptSet, lens: LensResult, states_cache: Path, tmp_path: Path
) -> None:
    plain = ihs.extract(model, prompts, cache=states_cache, progress=False)
    assert plain.lens is None
    both = ihs.extract(model, prompts, cache=states_cache, progress=False, lens_top_k=K)
    assert both.lens is not None
    assert torch.equal(both.lens.token_ids, lens.token_ids)
    assert torch.allclose(both.lens.probs, lens.probs, atol=PROB_TOL)
    assert torch.allclose(both.lens.emotion_mass, lens.emotion_mass, atol=PROB_TOL)
    assert both.lens.labels == prompts.labels
    assert torch.equal(both.states, plain.states)  # served from the states cache
    # A second call is served from the lens cache, rows identical.
    again = ihs.extract(model, prompts, cache=states_cache, progress=False, lens_top_k=K)
    assert again.lens is not None and torch.equal(again.lens.token_ids, both.lens.token_ids)
    assert torch.equal(again.lens.probs, both.lens.probs)
    # HiddenStates.save / load keep the lens.
    stem = both.save(tmp_path / "states")
    loaded = ihs.HiddenStates.load(stem)
    assert loaded.lens is not None and torch.equal(loaded.lens.token_ids, both.lens.token_ids)
    assert loaded.lens.vocab == both.lens.vocab


def test_extract_rejects_bad_lens_top_k(model: ihs.Model) -> None:
    for bad in (0, -1, True, 2.5, 10**9):
        with pytest.raises(ihs.InputError, match="top_k"):
            ihs.extract(model, ["hi"], cache=False, progress=False, lens_top_k=bad)  # type: ignore[arg-type]


def test_logit_lens_rejects_bad_layers(model: ihs.Model) -> None:
    with pytest.raises(ihs.InputError, match="out of range"):
        logit_lens(model, ["hi"], layers=[model.n_layers + 1], progress=False)
    with pytest.raises(ihs.InputError, match="empty"):
        logit_lens(model, ["hi"], layers=[], progress=False)
    with pytest.raises(ihs.InputError, match="single string"):
        logit_lens(model, "hi", progress=False)


def test_lens_result_round_trips_json_and_files(lens: LensResult, tmp_path: Path) -> None:
    back = LensResult.model_validate_json(lens.model_dump_json())
    assert torch.equal(back.token_ids, lens.token_ids) and torch.equal(back.probs, lens.probs)
    assert back.vocab == lens.vocab and back.token_category == lens.token_category
    loaded = LensResult.load(lens.save(tmp_path / "lens"))
    assert torch.equal(loaded.emotion_mass, lens.emotion_mass) and loaded.meta == lens.meta
    with pytest.raises(ihs.InputError, match="Missing"):
        LensResult.load(tmp_path / "nothing")


def test_lens_result_top_tokens_counts_by_hand(lens: LensResult) -> None:
    layer = 20
    counts: dict[int, int] = {}
    for row in lens.token_ids[:, layer].tolist():
        for i in row:
            counts[i] = counts.get(i, 0) + 1
    expected = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    got = lens.top_tokens(layer)
    assert [(t.token_id, t.count) for t in got] == expected
    assert got[0].token == lens.vocab[expected[0][0]] and got[0].share == expected[0][1] / len(lens)
    assert lens.select("malicious").prompts == lens.prompts[:2]


def test_consistency_matches_hand_computed_values(lens: LensResult) -> None:
    # 3 prompts, k = 2, two layers. Layer 0: sets {1,2}, {1,3}, {2,1}; counts 1:3, 2:2, 3:1;
    # F = {1, 2}; TIC = (3/3 + 2/3) / 2 = 5/6. Layer 1: sets {4,5}, {6,7}, {8,9}; every count is
    # 1; ties go to the smaller ids, F = {4, 5}; TIC = (1/3 + 1/3) / 2 = 1/3.
    ids = torch.tensor([[[1, 2], [4, 5]], [[1, 3], [6, 7]], [[2, 1], [8, 9]]])
    values, frequent = topk_consistency(ids)
    assert values == pytest.approx([5 / 6, 1 / 3])
    assert frequent == [[1, 2], [4, 5]]
    # The same through a LensResult, with a band covering both layers.
    small = lens.subset([0, 1, 2]).model_copy(update={"token_ids": ids, "layers": [14, 15], "top_k": 2})
    tic = small.consistency(band=(14, 15))
    assert tic.per_layer == pytest.approx([5 / 6, 1 / 3])
    assert tic.band_mean == pytest.approx((5 / 6 + 1 / 3) / 2)
    assert small.consistency(band=(15, 15)).band_mean == pytest.approx(1 / 3)


def test_consistency_is_one_for_identical_prompts(model: ihs.Model, data: ihs.PromptSet) -> None:
    same = logit_lens(model, [data.normal[0].text] * 3, top_k=K, progress=False)
    tic = same.consistency()
    assert tic.per_layer == pytest.approx([1.0] * (model.n_layers + 1))
    assert tic.band == middle_band(model.n_layers) == (15, 22)
    assert tic.band_mean == pytest.approx(1.0)


def test_compare_consistency_reports_differences(lens: LensResult) -> None:
    mal, norm = lens.select("malicious"), lens.select("normal")
    cmp = compare_consistency(mal, norm, names=("malicious", "normal"))
    assert cmp.a.name == "malicious" and cmp.b.name == "normal"
    assert cmp.band_mean_diff == pytest.approx(mal.consistency().band_mean - norm.consistency().band_mean)
    assert cmp.per_layer_diff is not None and len(cmp.per_layer_diff) == len(lens.layers)
    with pytest.raises(ihs.InputError, match="band"):
        compare_consistency(mal.consistency(), norm.consistency(), band=(3, 4))
    with pytest.raises(ihs.InputError, match="lo <= hi"):
        mal.consistency(band=(20, 10))
    assert isinstance(Consistency.model_validate_json(cmp.a.model_dump_json()), Consistency)


def test_lens_plots_write_png(lens: LensResult, output_dir: Path) -> None:
    figures = {
        "lens_heatmap.png": lens.heatmap(),
        "lens_heatmap_one_prompt.png": lens.subset([0]).heatmap(layers=range(10, 31)),
        "lens_emotions.png": lens.select("malicious")
        .emotions("malicious")
        .plot(lens.select("normal").emotions("normal")),
        "lens_consistency.png": compare_consistency(
            lens.select("malicious"), lens.select("normal"), names=("malicious", "normal")
        ).plot(),
    }
    for name, fig in figures.items():
        path = output_dir / name
        fig.savefig(path, dpi=80)
        assert path.stat().st_size > 10_000, f"{name} looks empty"


def test_logit_lens_is_identical_through_nnsight_remote_serialisation(
    model: ihs.Model, prompts: ihs.PromptSet
) -> None:
    # backend="simulate" serialises each trace exactly as for NDIF and runs it here: the trace
    # body (lens, top-k, masses) must survive shipping and give the same numbers.
    simulated = ihs.load_model(backend="simulate")
    local = logit_lens(model, prompts.head(2), top_k=K, layers=[0, 15, model.n_layers], progress=False)
    shipped = logit_lens(simulated, prompts.head(2), top_k=K, layers=[0, 15, model.n_layers], progress=False)
    assert torch.equal(shipped.token_ids, local.token_ids)
    assert torch.equal(shipped.probs, local.probs) and torch.equal(shipped.emotion_mass, local.emotion_mass)


def test_lens_heatmap_draws_dollar_tokens_as_text(lens: LensResult, output_dir: Path) -> None:
    # Gemma's vocabulary has tokens such as "$$\\": drawn as mathtext they crashed the heatmap.
    odd = lens.model_copy(update={"vocab": {tid: "$$\\ " + text for tid, text in lens.vocab.items()}})
    path = output_dir / "lens_heatmap_dollar_tokens.png"
    odd.heatmap().savefig(path, dpi=60)
    assert path.stat().st_size > 5_000
