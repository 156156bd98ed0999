"""Jailbreak anatomy: projections against plain PyTorch hooks, scores recomputed by hand, bad input.

The reference reads every layer's state with ``register_forward_pre_hook`` (block 1's input) and
``register_forward_hook`` (each block's output) on one unpadded prompt at a time, then projects on
unit vectors normalised here from the direction's raw differences; the library runs left-padded
batches through nnsight traces. Torch runs on one thread (two threads on two shared cores crawl).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ihs_sight as ihs
from ihs_sight.anatomy import THRESHOLD, verdict
from ihs_sight.directions import Direction
from ihs_sight.prompts import encode
from ihs_sight.steer import DirectionWarning

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REL_TOL = 1e-4
"""Max relative difference of a projection against the hook reference (float32 states)."""
FAMILIES = ("roleplay", "obfuscation")
"""Two jailbreak families, two prompts each (and two controls each): 8 wrapped prompts."""


@pytest.fixture(scope="module")
def sets(data: ihs.PromptSet) -> dict[str, Any]:
    def per_family(ps: ihs.PromptSet) -> ihs.PromptSet:
        return ihs.PromptSet.concat(ps.select(family=f).head(2) for f in FAMILIES)

    return {"jailbreaks": per_family(data.jailbreak), "controls": per_family(data.wrapped_normal),
            "malicious": data.test.malicious.head(2), "normal": data.test.normal.head(2)}


@pytest.fixture(scope="module")
def directions(model: ihs.Model, data: ihs.PromptSet) -> tuple[Direction, Direction]:
    """Cheap directions from 3 + 3 train prompts per side (one held out): a refusal candidate at
    layer 12, position -2 (not the last token, so the position offset is exercised), and the
    harmfulness direction at the last instruction token."""
    h, s = data.train.malicious.head(4), data.train.normal.head(4)
    refusal = ihs.refusal_direction(model, h, s, layers=[12], positions=[-2], n_val=1, progress=False)
    harm = ihs.harmfulness_direction(model, h, s, n_val=1, progress=False)
    return refusal, harm


def hook_projections(model: ihs.Model, texts: list[str], direction: Direction) -> torch.Tensor:
    """(n, L + 1) projections through plain transformers with hooks, one unpadded prompt at a time."""
    blocks = model.hf.model.layers
    v = direction.vectors.double()
    norms = v.norm(dim=-1, keepdim=True)
    units = torch.where(norms > 0, v / norms.clamp_min(1e-300), torch.zeros_like(v))
    seen: list[torch.Tensor] = []
    handles = [blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0][0].detach()))]
    handles += [b.register_forward_hook(
        lambda _m, _a, out: seen.append((out[0] if isinstance(out, tuple) else out)[0].detach())) for b in blocks]
    rows = []
    try:
        for ids in encode(model.tokenizer, texts, system_prompt=direction.system_prompt):
            seen.clear()
            with torch.no_grad():
                model.hf(input_ids=torch.tensor([ids]))
            states = torch.stack([x[direction.position] for x in seen]).double()  # (L + 1, D)
            rows.append((states * units).sum(-1))
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(rows)


def test_project_matches_hooks_on_a_padded_batch(model: ihs.Model, directions: tuple[Direction, Direction],
                                                 sets: dict[str, Any]) -> None:
    texts = sets["jailbreaks"].texts[:2] + sets["normal"].texts[:1]  # lengths differ: left padding
    assert len({len(x) for x in encode(model.tokenizer, texts)}) > 1
    for direction in directions:
        got = ihs.project(model, texts, direction, batch_size=3, progress=False)
        ref = hook_projections(model, texts, direction)
        values = torch.tensor(got.values, dtype=torch.float64)
        assert values.shape == (3, model.n_layers + 1)
        scale = ref.abs().amax(1, keepdim=True)
        assert float(((values - ref).abs() / scale).max()) <= REL_TOL, direction.kind
        assert got.position == direction.position and got.direction_layer == direction.layer
        assert got.mean() == pytest.approx(values.mean(0).tolist(), rel=1e-9)
        assert got.at(direction.layer) == [row[direction.layer] for row in got.values]
    # The harmfulness direction's layer-0 difference is 0 only if the token embeddings agree; a zero
    # vector projects to 0, never NaN.
    assert all(math.isfinite(x) for row in got.values for x in row)


def test_anatomy_scores_recomputed_from_hook_projections(
    model: ihs.Model, directions: tuple[Direction, Direction], sets: dict[str, Any], data: ihs.PromptSet,
    states_cache: Path
) -> None:
    refusal, harm = directions
    guard = ihs.Guard.fit(model, data.train.normal.sample(60, random_state=1)
                          + data.train.malicious.sample(60, random_state=1),
                          layer=4, pool="last", cv=2, cache=states_cache, progress=False)
    a = ihs.jailbreak_anatomy(model, refusal, harm, guard=guard, progress=False, **sets)
    assert [f.family for f in a.families] == list(FAMILIES)
    assert (a.harm_layer, a.refusal_layer, a.guard_layer) == (harm.layer, refusal.layer, 4)

    def mean_at(name: str, direction: Direction, family: str | None = None) -> float:
        ps = sets[name] if family is None else sets[name].select(family=family)
        return float(hook_projections(model, ps.texts, direction)[:, direction.layer].mean())

    anchors = {d.kind: (mean_at("normal", d), mean_at("malicious", d)) for d in directions}
    for fam in a.families:
        for group, name in ((fam.jailbreak, "jailbreaks"), (fam.control, "controls")):
            assert group is not None and group.n == 2
            for d, score in ((harm, group.harm), (refusal, group.refusal)):
                low, high = anchors[d.kind]
                assert score == pytest.approx((mean_at(name, d, fam.family) - low) / (high - low), abs=1e-3)
            flags = guard.score(sets[name].select(family=fam.family)).flagged
            assert group.guard_flagged == sum(flags) / len(flags)
        assert fam.verdict == verdict(fam.jailbreak.harm, fam.jailbreak.refusal)
        assert fam.wrapper_reads_harmful == (fam.control is not None and fam.control.harm >= THRESHOLD)
    assert a.malicious.harm == pytest.approx(1.0) and a.normal.refusal == pytest.approx(0.0, abs=1e-9)
    table = a.table()
    assert table.count("\n") == 1 + len(FAMILIES) and f"{a.families[0].jailbreak.harm:.2f}" in table
    fig = a.plot()
    assert len(fig.axes) == 2
    assert all(len(ax.lines) == 3 + 2 * len(FAMILIES) + 1 for ax in fig.axes)  # refs + threshold, families, layer
    # Each panel's first family line, at the direction's own layer, is the table's score.
    for ax, layer, score in ((fig.axes[0], a.harm_layer, a.families[0].jailbreak.harm),
                             (fig.axes[1], a.refusal_layer, a.families[0].jailbreak.refusal)):
        assert float(np.asarray(ax.lines[3].get_ydata())[layer]) == pytest.approx(score)


def test_verdict_rule() -> None:
    assert verdict(0.9, 0.8) == "harm recognised, refusal signal kept"
    assert verdict(0.9, 0.1) == "harm recognised, refusal signal suppressed"
    assert verdict(0.2, 0.1) == "harm not recognised, refusal signal suppressed"
    assert verdict(THRESHOLD, THRESHOLD) == "harm recognised, refusal signal kept"


def test_anatomy_and_project_refuse_bad_input(
    model: ihs.Model, directions: tuple[Direction, Direction], sets: dict[str, Any], data: ihs.PromptSet
) -> None:
    refusal, harm = directions
    with pytest.raises(ihs.InputError, match="Direction"):
        ihs.project(model, ["hi"], refusal.vector)  # type: ignore[arg-type]
    wide = refusal.model_copy(update={"d_model": model.d_model + 1})
    with pytest.raises(ihs.InputError, match="width"):
        ihs.project(model, ["hi"], wide)
    other = refusal.model_copy(update={"weights_hash": "0" * 32})
    with pytest.warns(DirectionWarning):
        ihs.project(model, ["hi"], other, progress=False)
    with pytest.raises(ihs.InputError, match="strict"):
        ihs.project(model, ["hi"], other, strict=True)
    with pytest.raises(ihs.InputError, match="batch_size"):
        ihs.project(model, ["hi"], refusal, batch_size=0)
    with pytest.raises(ihs.InputError, match="refusal and a harmfulness"):
        ihs.jailbreak_anatomy(model, harm, refusal, **sets)
    with pytest.raises(ihs.InputError, match="must be Directions"):
        ihs.jailbreak_anatomy(model, refusal.vector, harm, **sets)  # type: ignore[arg-type]
    with pytest.raises(ihs.InputError, match="ihs.Guard"):
        ihs.jailbreak_anatomy(model, refusal, harm, guard="guard", **sets)  # type: ignore[arg-type]
    unlabelled = ihs.PromptSet.from_texts(sets["jailbreaks"].texts)
    with pytest.raises(ihs.InputError, match="family"):
        ihs.jailbreak_anatomy(model, refusal, harm, **(sets | {"jailbreaks": unlabelled}))
    with pytest.raises(ihs.InputError, match="non-empty"):
        ihs.jailbreak_anatomy(model, refusal, harm, **(sets | {"normal": data.test.normal.head(0)}))
