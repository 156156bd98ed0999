"""Logit grafting: parity with plain PyTorch hooks, generation, judge, bad input, sweeps, plots.

Every reference here is built without ihs-sight's trace code: plain transformers forwards of
one unpadded prompt at a time, with the graft done by ``register_forward_hook`` (replace, add,
seed) or ``register_forward_pre_hook`` (layer 0) on the transformers block, and
``hf.generate(do_sample=False)`` with a hook that fires on the first (prefill) call only.
ihs-sight runs the same targets batched and left-padded through nnsight.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

import ihs_sight as ihs
from ihs_sight.emotions import load_lexicon
from ihs_sight.graft import GraftResult, SweepResult, graft, graft_sweep
from ihs_sight.judge import PhraseJudge, normalize
from ihs_sight.prompts import encode

LOGIT_TOL = 1e-4
"""Max abs logit difference between our graft and a plain-hook reference on the same input rows."""
BATCH_NOISE_TOL = 5e-4
"""Max abs logit difference between a left-padded batch and the same prompts run one at a time.

Batching alone changes fp32 results (other matmul shapes, the masked attention kernel): even
without a graft, rows of a batch differ from single runs by up to ~5e-5 here, more when the
grafted vector is large. Parity of the graft itself is checked at LOGIT_TOL on identical rows.
"""
MASS_TOL = 1e-5
"""Max abs difference of lexicon probability masses against the reference softmax."""
LAYER = 12
"""A middle layer of the 30-block default model."""


# ---------------------------------------------------------------------------- references


@contextmanager
def hooked(model: ihs.Model, *, mode: str, layer: int, vec: torch.Tensor, first_call_only: bool = False
           ) -> Iterator[None]:
    """The graft as a plain PyTorch hook on the transformers block (no nnsight)."""
    blocks = model.hf.model.layers
    calls = {"n": 0}

    def fire() -> bool:
        calls["n"] += 1
        return not (first_call_only and calls["n"] > 1)

    def pre_hook(_m: Any, args: tuple[Any, ...]) -> Any:
        if not fire():
            return None
        x = args[0].clone()
        x[:, -1] = vec if mode == "replace" else x[:, -1] + vec
        return (x, *args[1:])

    def post_hook(_m: Any, args: tuple[Any, ...], out: torch.Tensor) -> Any:
        if not fire():
            return None
        if mode == "seed":  # the block's output discarded: its input, last position overwritten
            x = args[0].clone()
            x[:, -1] = vec
            return x
        x = out.clone()
        x[:, -1] = vec if mode == "replace" else x[:, -1] + vec
        return x

    if layer == 0:
        handle = blocks[0].register_forward_pre_hook(pre_hook)
    else:
        handle = blocks[layer - 1].register_forward_hook(post_hook)
    try:
        yield
    finally:
        handle.remove()


def hf_logits(model: ihs.Model, ids: list[int]) -> torch.Tensor:
    """(V,) last-position logits of one unpadded prompt, plain transformers."""
    with torch.no_grad():
        return model.hf(input_ids=torch.tensor([ids])).logits[0, -1].float()  # type: ignore[no-any-return]


def hf_greedy(model: ihs.Model, ids: list[int], n: int) -> list[int]:
    """Greedy continuation ids of one unpadded prompt, plain transformers, stopped after EOS."""
    with torch.no_grad():
        mask = torch.ones(1, len(ids), dtype=torch.long)
        out = model.hf.generate(input_ids=torch.tensor([ids]), attention_mask=mask, max_new_tokens=n,
                                do_sample=False)
    return [int(t) for t in out[0, len(ids):]]


def hf_batch_logits(model: ihs.Model, rows: list[list[int]], pad_id: int) -> torch.Tensor:
    """(B, V) last-position logits of a left-padded batch built here by hand, plain transformers."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model.hf(input_ids=input_ids, attention_mask=mask, position_ids=positions)
    return out.logits[:, -1].float()  # type: ignore[no-any-return]


def hf_state(model: ihs.Model, ids: list[int], layer: int) -> torch.Tensor:
    """(D,) the last-token output of block ``layer`` (1 <= layer < L), plain transformers."""
    with torch.no_grad():
        out = model.hf(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[layer][0, -1].float()  # type: ignore[no-any-return]


def assert_close(ours: torch.Tensor, ref: torch.Tensor, tol: float, what: str) -> None:
    diff = float((ours - ref).abs().max())
    assert diff <= tol, f"{what}: max abs diff {diff:.2e} > {tol:.0e}"


# ---------------------------------------------------------------------------- fixtures


def _shortest(model: ihs.Model, texts: list[str], n: int, *, distinct: bool) -> list[str]:
    """The ``n`` shortest prompts after templating (of distinct lengths when ``distinct``): cheap forwards."""
    lengths = [len(r) for r in encode(model.tokenizer, texts)]
    chosen: list[str] = []
    seen: set[int] = set()
    for i in sorted(range(len(texts)), key=lambda i: (lengths[i], i)):
        if distinct and lengths[i] in seen:
            continue
        seen.add(lengths[i])
        chosen.append(texts[i])
        if len(chosen) == n:
            break
    return chosen


@pytest.fixture(scope="module")
def targets(model: ihs.Model, data: ihs.PromptSet) -> list[str]:
    """Three short malicious prompts of different token lengths, so the batch is left-padded."""
    return _shortest(model, data.test.malicious.texts, 3, distinct=True)


@pytest.fixture(scope="module")
def donors(model: ihs.Model, data: ihs.PromptSet) -> list[str]:
    """Three short normal prompts."""
    return _shortest(model, data.test.normal.texts, 3, distinct=False)


@pytest.fixture(scope="module")
def target_ids(model: ihs.Model, targets: list[str]) -> list[list[int]]:
    ids = encode(model.tokenizer, targets)
    assert len({len(r) for r in ids}) > 1, "targets should differ in length so the batch is padded"
    return ids


@pytest.fixture(scope="module")
def normal_mean(model: ihs.Model, donors: list[str]) -> torch.Tensor:
    """(D,) mean last-token state of the donors at LAYER, from plain transformers."""
    return torch.stack([hf_state(model, ids, LAYER) for ids in encode(model.tokenizer, donors)]).mean(0)


@pytest.fixture(scope="module")
def lexicon_ids(model: ihs.Model) -> dict[str, list[int]]:
    return load_lexicon("v1").token_ids(model.tokenizer)


@pytest.fixture(scope="module")
def sweep(model: ihs.Model, data: ihs.PromptSet, donors: list[str], states_cache: Path) -> SweepResult:
    return graft_sweep(model, _shortest(model, data.test.malicious.texts, 4, distinct=False),
                       ihs.PromptSet.from_texts(donors, label="normal"), layers=[6, 14, 22],
                       cache=states_cache, progress=False)


# ---------------------------------------------------------------------------- parity


@pytest.mark.parametrize("mode", ["replace", "add", "seed"])
def test_graft_matches_forward_hook_single_and_batched(
    model: ihs.Model, targets: list[str], target_ids: list[list[int]], normal_mean: torch.Tensor,
    lexicon_ids: dict[str, list[int]], mode: str,
) -> None:
    # Single: one unpadded target, the donors' mean state (halved for add: a steering step).
    scale = 0.5 if mode == "add" else 1.0
    single = graft(model, targets[:1], normal_mean, layer=LAYER, mode=mode, scale=scale, keep_logits=True,
                   progress=False)
    assert single.logits_after is not None and single.logits_before is not None
    with hooked(model, mode=mode, layer=LAYER, vec=scale * normal_mean):
        ref = hf_logits(model, target_ids[0])
    assert_close(single.logits_after[0], ref, LOGIT_TOL, f"{mode} single")
    assert single.meta.mode == mode and single.meta.source_kind == "tensor" and single.meta.scale == scale

    # Batched and left-padded, one vector per target (paired), against the hook on the same
    # padded batch: the graft itself must agree to LOGIT_TOL.
    gen = torch.Generator().manual_seed(0)
    vecs = normal_mean + 2.0 * torch.randn(len(targets), model.d_model, generator=gen)
    batched = graft(model, targets, vecs, layer=LAYER, mode=mode, pairing="paired", keep_logits=True,
                    progress=False)
    assert batched.logits_after is not None
    with hooked(model, mode=mode, layer=LAYER, vec=vecs):
        ref_batch = hf_batch_logits(model, target_ids, model.tokenizer.pad_token_id)
    assert_close(batched.logits_after, ref_batch, LOGIT_TOL, f"{mode} batched")
    neg, pos = torch.tensor(lexicon_ids["negative"]), torch.tensor(lexicon_ids["positive"])
    for i, rec in enumerate(batched.targets):
        probs = ref_batch[i].softmax(-1)
        assert rec.top1_after == int(ref_batch[i].argmax())
        assert abs(rec.neg_mass_after - float(probs[neg].sum())) <= MASS_TOL
        assert abs(rec.pos_mass_after - float(probs[pos].sum())) <= MASS_TOL
        assert rec.topk_ids_after == probs.topk(len(rec.topk_ids_after)).indices.tolist()

    if mode == "replace":
        # Clean logits, and batching against one-prompt-at-a-time runs (fp32 noise only).
        assert_close(single.logits_before[0], hf_logits(model, target_ids[0]), LOGIT_TOL, "clean single")
        for i, ids in enumerate(target_ids):
            with hooked(model, mode=mode, layer=LAYER, vec=vecs[i]):
                ref = hf_logits(model, ids)
            assert_close(batched.logits_after[i], ref, BATCH_NOISE_TOL, f"batched vs alone, target {i}")


def test_graft_at_layer_zero_matches_pre_hook(
    model: ihs.Model, targets: list[str], target_ids: list[list[int]]
) -> None:
    # Layer 0 is the input of block 1: give the last token the embedding of " Sure".
    sure = model.tokenizer(" Sure", add_special_tokens=False)["input_ids"][0]
    vec = model.hf.model.embed_tokens.weight[sure].detach().float()
    result = graft(model, targets[:2], vec, layer=0, keep_logits=True, progress=False)
    assert result.logits_after is not None
    with hooked(model, mode="replace", layer=0, vec=vec):
        ref_batch = hf_batch_logits(model, target_ids[:2], model.tokenizer.pad_token_id)
    assert_close(result.logits_after, ref_batch, LOGIT_TOL, "layer 0 batched")


def test_graft_last_block_with_donor_state_reproduces_donor_logits(
    model: ihs.Model, targets: list[str], donors: list[str]
) -> None:
    last = model.n_layers
    donor_ids = encode(model.tokenizer, donors[:2])
    # Single donor onto a single target, then two donors paired with two targets (both padded).
    for n in (1, 2):
        result = graft(model, targets[:n], donors[:n], layer=last, pairing="paired", keep_logits=True,
                       cache=False, progress=False)
        assert result.logits_after is not None
        for i in range(n):
            tol = LOGIT_TOL if n == 1 else BATCH_NOISE_TOL  # two donors are extracted as a padded batch
            assert_close(result.logits_after[i], hf_logits(model, donor_ids[i]), tol,
                         f"last-block graft of donor {i} (batch of {n})")
        assert result.meta.source_kind == "prompts" and result.meta.n_source == n


def test_graft_mean_of_donor_prompts_matches_hook_with_reference_mean(
    model: ihs.Model, targets: list[str], target_ids: list[list[int]], donors: list[str],
    normal_mean: torch.Tensor,
) -> None:
    # batch_size=1: donors and targets unpadded, so the only difference left is the mean itself.
    result = graft(model, targets[:1], donors, layer=LAYER, batch_size=1, keep_logits=True, cache=False,
                   progress=False)
    assert result.logits_after is not None
    for i, ids in enumerate(target_ids[:1]):
        with hooked(model, mode="replace", layer=LAYER, vec=normal_mean):
            ref = hf_logits(model, ids)
        assert_close(result.logits_after[i], ref, LOGIT_TOL, f"mean-of-donors graft, target {i}")
    assert result.meta.pairing == "mean" and result.meta.n_source == len(donors)


def test_graft_simulated_remote_equals_local(
    model: ihs.Model, targets: list[str], normal_mean: torch.Tensor
) -> None:
    # NDIF serialisation run in-process: the trace bodies must ship without ihs_sight.
    sim = ihs.Model(model.nn, arch=model.arch, name=model.name, backend="simulate")
    sim._weights_hash = model.weights_hash  # same module: skip re-hashing every weight
    local = graft(model, targets[:1], normal_mean, layer=LAYER, mode="seed", keep_logits=True, progress=False)
    remote = graft(sim, targets[:1], normal_mean, layer=LAYER, mode="seed", keep_logits=True, progress=False)
    assert local.logits_after is not None and remote.logits_after is not None
    assert torch.equal(local.logits_after, remote.logits_after)


# ---------------------------------------------------------------------------- generation


def test_graft_generation_matches_hook_reference_token_for_token(
    model: ihs.Model, targets: list[str], target_ids: list[list[int]], normal_mean: torch.Tensor
) -> None:
    seen: list[str] = []

    def judge(text: str) -> bool:  # any str -> bool is a judge
        seen.append(text)
        return "sorry" in text.lower()

    n_new = 6
    result = graft(model, targets[:2], normal_mean, layer=LAYER, generate=n_new, judge=judge, progress=False)
    for i, ids in enumerate(target_ids[:2]):
        rec = result.targets[i]
        with hooked(model, mode="replace", layer=LAYER, vec=normal_mean, first_call_only=True):
            ref_after = hf_greedy(model, ids, n_new)
        assert rec.tokens_after == ref_after, f"target {i}: grafted {rec.tokens_after} != hook {ref_after}"
        assert rec.tokens_before == hf_greedy(model, ids, n_new), f"target {i}: clean generation differs"
        assert rec.text_after == model.tokenizer.decode(ref_after, skip_special_tokens=True)
        assert rec.refusal_after == ("sorry" in (rec.text_after or "").lower())
    assert len(seen) == 4
    assert result.refusal_rate_after is not None and result.meta.max_new_tokens == n_new
    assert result.meta.judge is not None and result.meta.judge.endswith("judge")


# ---------------------------------------------------------------------------- judge


def test_phrase_judge_normalises_and_matches_whole_phrases() -> None:
    judge = PhraseJudge()
    assert judge("I\u2019m Sorry, But I can\u2019t help with that.")
    assert judge("  I   CANNOT   assist with this request.")
    assert not judge("Sure, here is how to bake bread.")
    assert not judge("As an airline pilot, I would check the weather first.")  # not "as an ai"
    assert judge("As an AI, I have no opinions.")
    assert not judge("x" * 250 + " I'm sorry, but no.")  # beyond the 200-character window
    assert PhraseJudge(window=400)("x" * 250 + " I'm sorry, but no.")
    assert judge.verdict("Sure, here is a plan.") == "compliance"
    assert judge.verdict("I'm sorry, but I can't.") == "refusal"
    assert judge.verdict("Paris is the capital.") == "unclear"
    assert normalize("I\u2019M  Here") == "i'm here"
    assert normalize("I am sure I CANNOT, and will not") == "i'm sure i can't, and won't"
    assert judge("I cannot give you that.")  # the data has "i can't give" only
    custom = PhraseJudge(["no way"])
    assert custom("No way!") and not custom("I'm sorry, but no.")
    with pytest.raises(ihs.InputError):
        PhraseJudge([])
    with pytest.raises(ihs.InputError):
        PhraseJudge(window=0)


# ---------------------------------------------------------------------------- bad input


def test_graft_rejects_bad_input(model: ihs.Model, targets: list[str]) -> None:
    d, last = model.d_model, model.n_layers
    ok = torch.zeros(d)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"source": torch.zeros(d + 1)}, r"shape \(577,\)"),
        ({"source": torch.zeros(2, 3, d)}, "shape"),
        ({"source": torch.zeros(d, dtype=torch.long)}, "floating point"),
        ({"source": torch.full((d,), float("nan"))}, "NaN or inf"),
        ({"source": torch.tensor([float("inf")] + [0.0] * (d - 1))}, "NaN or inf"),
        ({"layer": last + 1}, "out of range"),
        ({"layer": -1}, "out of range"),
        ({"layer": 0, "mode": "seed"}, "out of range"),
        ({"layer": 3.0}, "integer"),
        ({"targets": []}, "targets is empty"),
        ({"targets": "one string"}, "not a single string"),
        ({"source": torch.zeros(2, d), "pairing": "paired"}, "2 rows for 3 targets"),
        ({"source": ok, "pairing": "paired"}, "one source row per target"),
        ({"source": []}, "source is empty"),
        ({"source": 3}, "source must be"),
        ({"mode": "swap"}, "mode"),
        ({"pairing": "nearest"}, "pairing"),
        ({"scale": float("nan")}, "scale"),
        ({"generate": 0}, "generate"),
        ({"top_k": 0}, "top_k"),
        ({"lexicon": 3}, "lexicon"),
    ]
    for change, match in cases:
        base: dict[str, Any] = {"targets": targets, "source": ok, "layer": LAYER, "progress": False}
        kwargs = base | change
        with pytest.raises(ihs.InputError, match=match):
            graft(model, kwargs.pop("targets"), kwargs.pop("source"), **kwargs)
    with pytest.raises(ihs.InputError, match="layers is empty"):
        graft_sweep(model, targets, ok, layers=[], progress=False)
    with pytest.raises(ihs.InputError, match="out of range"):
        graft_sweep(model, targets, ok, layers=[1, last + 1], progress=False)


# ---------------------------------------------------------------------------- results, sweep, plots


def test_graft_result_json_round_trip(sweep: SweepResult) -> None:
    one = sweep.results[0]
    again = GraftResult.model_validate_json(one.model_dump_json())
    assert again == one
    assert again.logits_after is None
    assert SweepResult.model_validate_json(sweep.model_dump_json()) == sweep


def test_graft_sweep_reports_per_layer_rates_and_plots(sweep: SweepResult, output_dir: Path) -> None:
    assert sweep.layers == [6, 14, 22]
    assert [r.layer for r in sweep.results] == sweep.layers
    for i, r in enumerate(sweep.results):
        assert sweep.flip_rate[i] == sum(t.flipped for t in r.targets) / len(r)
        assert sweep.neg_to_nonneg_rate[i] == sum(t.neg_to_nonneg for t in r.targets) / len(r)
        assert sweep.mean_neg_mass[i] == pytest.approx(sum(t.neg_mass_after for t in r.targets) / len(r))
        for t in r.targets:
            assert t.flipped == (t.top1_before != t.top1_after)
            assert t.neg_to_nonneg == (t.neg_before and not t.neg_after)
    # The clean run is shared: every layer's "before" side is identical.
    assert len({tuple(t.top1_before for t in r.targets) for r in sweep.results}) == 1
    assert sweep.refusal_rate is None and sweep.meta.source_kind == "prompts"
    path = output_dir / "graft_sweep.png"
    sweep.plot().savefig(path)
    assert path.stat().st_size > 10_000
    single = output_dir / "graft_layer14.png"
    sweep.results[1].plot().savefig(single)
    assert single.stat().st_size > 10_000
