"""Directions and steering: parity with plain PyTorch hooks, the baseline, save/load, bad input.

Every reference here is built without ihs-sight's trace code: plain transformers forwards and
``hf.generate`` on a left-padded batch built by hand, with the edit done by
``register_forward_pre_hook`` / ``register_forward_hook``. Ablation is referenced the way
Arditi et al. wrote it (block input, attention output and MLP output of every block), which
also checks that ihs-sight's sites (block inputs, attention outputs, last block output) are
equivalent. Torch runs on one thread here: two threads on a shared two-core box run ~30x slower.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

import ihs_sight as ihs
from ihs_sight.directions import Candidate, Direction, choose_candidate, refusal_score
from ihs_sight.prompts import encode
from ihs_sight.steer import DirectionWarning, SteerMode, SteerResult, steer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REL_TOL = 1e-4
"""Max relative L2 difference of next-token logits against the hook reference on the same batch."""
SCORE_TOL = 1e-3
"""Max abs difference of a candidate's refusal log-odds and KL against the hook reference."""
LAYER = 12
"""A middle layer of the 30-block default model."""
N_NEW = 4
"""Greedy tokens per prompt in the generation checks (2 prompts: 8 tokens per test)."""


# ---------------------------------------------------------------------------- references


@contextmanager
def hooked(model: ihs.Model, *, mode: str, unit: torch.Tensor, add: torch.Tensor, layers: list[int]
           ) -> Iterator[None]:
    """The steering edit as plain PyTorch hooks on the transformers modules, on every forward call."""
    blocks = model.hf.model.layers
    handles = []

    def ablate(x: torch.Tensor) -> torch.Tensor:
        return x - (x @ unit).unsqueeze(-1) * unit

    if mode == "ablate":
        for block in blocks:
            handles.append(block.register_forward_pre_hook(lambda _m, args: (ablate(args[0]), *args[1:])))
            handles.append(block.self_attn.register_forward_hook(
                lambda _m, _a, out: (ablate(out[0]), *out[1:])))
            handles.append(block.mlp.register_forward_hook(lambda _m, _a, out: ablate(out)))
    elif mode == "add":
        for layer in layers:
            if layer == 0:
                handles.append(blocks[0].register_forward_pre_hook(lambda _m, args: (args[0] + add, *args[1:])))
            else:
                handles.append(blocks[layer - 1].register_forward_hook(lambda _m, _a, out: out + add))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def padded(model: ihs.Model, rows: list[list[int]]) -> dict[str, torch.Tensor]:
    """A left-padded batch built here by hand, positions from the mask."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), model.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}


def hf_logits(model: ihs.Model, rows: list[list[int]]) -> torch.Tensor:
    """(B, V) last-position logits of a left-padded batch, plain transformers."""
    with torch.no_grad():
        return model.hf(**padded(model, rows)).logits[:, -1].float()  # type: ignore[no-any-return]


def hf_greedy(model: ihs.Model, rows: list[list[int]], n: int) -> list[list[int]]:
    """Greedy continuations of a left-padded batch, plain ``hf.generate``, each cut after its first EOS."""
    batch = padded(model, rows)
    with torch.no_grad():
        out = model.hf.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                max_new_tokens=n, do_sample=False, pad_token_id=model.pad_id)
    eos = model.tokenizer.eos_token_id
    found = []
    for row in out[:, batch["input_ids"].shape[1]:].tolist():
        cut = row.index(eos) + 1 if eos in row else len(row)
        found.append(row[:cut])
    return found


def rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative L2 difference (absolute where the reference is zero, e.g. the same token's embedding)."""
    return float((ours - ref).norm() / ref.norm().clamp_min(1.0))


def _shortest(model: ihs.Model, texts: list[str], n: int) -> list[str]:
    """The ``n`` shortest prompts of distinct templated lengths (cheap forwards; the batch is padded)."""
    lengths = [len(r) for r in encode(model.tokenizer, texts)]
    chosen: list[str] = []
    seen: set[int] = set()
    for i in sorted(range(len(texts)), key=lambda i: (lengths[i], i)):
        if lengths[i] not in seen:
            seen.add(lengths[i])
            chosen.append(texts[i])
        if len(chosen) == n:
            break
    return chosen


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pair(model: ihs.Model, data: ihs.PromptSet) -> tuple[str, str]:
    """One short malicious and one short normal prompt."""
    return _shortest(model, data.test.malicious.texts, 1)[0], _shortest(model, data.test.normal.texts, 1)[0]


@pytest.fixture(scope="module")
def direction(model: ihs.Model, pair: tuple[str, str]) -> Direction:
    """A refusal direction from one prompt per side, repeated (every split gives the same means), one candidate."""
    harmful, harmless = pair
    return ihs.refusal_direction(model, [harmful] * 2, [harmless] * 2, layers=[LAYER], positions=[-1], n_val=1,
                                 progress=False)


@pytest.fixture(scope="module")
def prompts(model: ihs.Model, data: ihs.PromptSet) -> list[str]:
    """Two short malicious prompts of different lengths, so the batch is left-padded."""
    return _shortest(model, data.test.malicious.texts, 2)


def judge(text: str) -> bool:
    return "sorry" in text.lower() or "can't" in text.lower()


# ---------------------------------------------------------------------------- directions


def test_refusal_direction_is_difference_in_means_with_hook_scores(
    model: ihs.Model, direction: Direction, pair: tuple[str, str]
) -> None:
    harmful, harmless = encode(model.tokenizer, list(pair))
    with torch.no_grad():
        hs_h = model.hf(input_ids=torch.tensor([harmful]), output_hidden_states=True).hidden_states
        hs_s = model.hf(input_ids=torch.tensor([harmless]), output_hidden_states=True).hidden_states
    assert direction.kind == "refusal" and direction.layer == LAYER and direction.position == -1
    assert direction.vectors.shape == (model.n_layers + 1, model.d_model)
    for layer in range(model.n_layers):  # hidden_states[L] is after the final norm in transformers
        ref = (hs_h[layer][0, -1] - hs_s[layer][0, -1]).float()
        assert rel(direction.vectors[layer], ref) < 1e-5, f"layer {layer}: difference in means drifted"
    assert direction.weights_hash == model.weights_hash and direction.n_harmful == direction.n_harmless == 1
    (cand,) = direction.candidates
    assert cand.norm == pytest.approx(direction.norm)
    unit, diff = direction.unit, direction.vector
    ids = direction.refusal_ids
    clean = hf_logits(model, [harmless])
    with hooked(model, mode="ablate", unit=unit, add=diff, layers=[]):
        ablated = hf_logits(model, [harmful, harmless])
    with hooked(model, mode="add", unit=unit, add=diff, layers=[LAYER]):
        added = hf_logits(model, [harmless])
    assert direction.clean_harmful == pytest.approx(float(refusal_score(hf_logits(model, [harmful]), ids)[0]),
                                                    abs=SCORE_TOL)
    assert direction.clean_harmless == pytest.approx(float(refusal_score(clean, ids)[0]), abs=SCORE_TOL)
    assert cand.bypass == pytest.approx(float(refusal_score(ablated[:1], ids)[0]), abs=SCORE_TOL)
    assert cand.induce == pytest.approx(float(refusal_score(added, ids)[0]), abs=SCORE_TOL)
    p, q = clean.double().log_softmax(-1), ablated[1:].double().log_softmax(-1)
    assert cand.kl == pytest.approx(float((p.exp() * (p - q)).sum()), abs=SCORE_TOL)


def test_harmfulness_direction_reads_last_instruction_token(
    model: ihs.Model, pair: tuple[str, str], direction: Direction
) -> None:
    harm = ihs.harmfulness_direction(model, [pair[0]] * 2, [pair[1]] * 2, layers=[4, LAYER], n_val=1,
                                     progress=False)
    harmful, harmless = encode(model.tokenizer, list(pair))
    a, b = encode(model.tokenizer, ["Tell me about apples", "Explain rivers"])
    suffix = 0
    while a[-1 - suffix] == b[-1 - suffix]:
        suffix += 1
    assert harm.kind == "harmfulness" and harm.position == -(suffix + 1)
    with torch.no_grad():
        hs_h = model.hf(input_ids=torch.tensor([harmful]), output_hidden_states=True).hidden_states
        hs_s = model.hf(input_ids=torch.tensor([harmless]), output_hidden_states=True).hidden_states
    ref = (hs_h[LAYER][0, harm.position] - hs_s[LAYER][0, harm.position]).float()
    assert rel(harm.vectors[LAYER], ref) < 1e-5
    assert [c.layer for c in harm.candidates] == [4, LAYER] and harm.layer in (4, LAYER)
    assert all(c.accuracy is not None for c in harm.candidates)
    cos = ihs.direction_cosines(direction, harm)
    assert len(cos) == model.n_layers + 1 and all(-1.0 - 1e-6 <= c <= 1.0 + 1e-6 for c in cos)
    assert direction.cosine(direction)[LAYER] == pytest.approx(1.0)


def test_choose_candidate_prefers_kept_then_relaxes_kl_only() -> None:
    def cand(layer: int, bypass: float, reason: str | None = None) -> Candidate:
        return Candidate(layer=layer, position=-1, norm=1.0, bypass=bypass, induce=0.5, kl=0.05,
                         kept=reason is None, reason=reason)

    kept, better_but_late = cand(5, 1.0), cand(25, -3.0, "layer >= int(0.8 * L)")
    assert choose_candidate([better_but_late, kept]) == kept
    kl_only, kl_and_induce = cand(7, -1.0, "kl 0.3 > kl_max 0.1"), cand(9, -2.0, "kl 0.3 > kl_max 0.1; induce < 0")
    assert choose_candidate([kl_and_induce, kl_only, better_but_late]) == kl_only
    assert choose_candidate([kl_and_induce, better_but_late]) == better_but_late
    assert choose_candidate([cand(9, 0.0), cand(4, 0.0)]).layer == 4
    with pytest.raises(ihs.InputError, match="could be scored"):
        choose_candidate([Candidate(layer=1, position=-1, norm=0.0, kept=False, reason="zero")])


def test_direction_save_load_round_trip(direction: Direction, tmp_path: Path) -> None:
    stem = direction.save(tmp_path / "refusal")
    again = Direction.load(stem)
    assert again == direction and torch.equal(again.vectors, direction.vectors)
    assert again.model_dump() == direction.model_dump()
    assert again.candidates == direction.candidates and again.norm == direction.norm
    (tmp_path / "refusal.safetensors").unlink()
    with pytest.raises(ihs.InputError, match="Missing"):
        Direction.load(stem)


def test_direction_names_with_dots_stay_apart(direction: Direction, tmp_path: Path) -> None:
    """``m.refusal`` and ``m.harmfulness`` are two pairs: the dot is not a suffix to replace."""
    other = direction.model_copy(update={"vectors": -direction.vectors})
    a, b = direction.save(tmp_path / "model-1.5.refusal"), other.save(tmp_path / "model-1.5.harmfulness")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model-1.5.harmfulness.json", "model-1.5.harmfulness.safetensors", "model-1.5.refusal.json",
        "model-1.5.refusal.safetensors"]
    assert torch.equal(Direction.load(a).vectors, direction.vectors)
    assert torch.equal(Direction.load(tmp_path / "model-1.5.harmfulness.json").vectors, -direction.vectors)
    assert Direction.load(b) == other
    # A .json or .safetensors suffix names the pair itself.
    assert direction.save(tmp_path / "plain.json") == tmp_path / "plain"
    assert (tmp_path / "plain.safetensors").is_file() and Direction.load(tmp_path / "plain") == direction


def test_direction_rejects_inconsistent_fields(direction: Direction) -> None:
    fields = direction.model_dump() | {"vectors": direction.vectors}
    cases: list[tuple[dict[str, Any], str]] = [({"vectors": direction.vectors[:, :5]}, "shape"),
                                               ({"vectors": torch.full_like(direction.vectors, float("nan"))}, "NaN"),
                                               ({"layer": direction.n_layers + 1}, "out of range"),
                                               ({"position": 0}, "negative"),
                                               ({"kind": "other"}, "kind")]
    for change, match in cases:
        with pytest.raises(ihs.InputError, match=match):
            Direction(**(fields | change))


def test_directions_reject_bad_input(model: ihs.Model, pair: tuple[str, str]) -> None:
    harmful, harmless = [pair[0]] * 2, [pair[1]] * 2
    cases: list[tuple[dict[str, Any], str]] = [
        ({"chat": False}, "chat must be True"),
        ({"positions": [0]}, "positions"),
        ({"positions": [-50]}, "positions"),
        ({"layers": [model.n_layers + 1]}, "out of range"),
        ({"n_val": 0}, "n_val"),
        ({"n_val": 2}, "at least n_val"),
        ({"refusal_tokens": []}, "refusal_tokens"),
    ]
    for change, match in cases:
        with pytest.raises(ihs.InputError, match=match):
            ihs.refusal_direction(model, harmful, harmless, **({"n_val": 1, "progress": False} | change))
    with pytest.raises(ihs.InputError, match="both"):
        ihs.refusal_direction(model, harmful, progress=False)
    with pytest.raises(ihs.InputError, match="chat template"):
        template = model.tokenizer.chat_template
        model.tokenizer.chat_template = None
        try:
            ihs.harmfulness_direction(model, harmful, harmless, n_val=1, progress=False)
        finally:
            model.tokenizer.chat_template = template


# ---------------------------------------------------------------------------- steering parity


@pytest.mark.parametrize("mode", ["none", "ablate", "add"])
def test_steer_matches_hooks_logits_and_generation(
    model: ihs.Model, direction: Direction, prompts: list[str], mode: SteerMode
) -> None:
    rows = encode(model.tokenizer, prompts)
    assert len({len(r) for r in rows}) == 2, "prompts should differ in length so the batch is padded"
    scale = 2.0 * direction.norm if mode == "add" else None
    layers = [0, LAYER] if mode == "add" else None
    result = steer(model, prompts, direction, mode=mode, scale=scale, layers=layers, generate=N_NEW, judge=judge,
                   keep_logits=True, progress=False)
    unit = direction.unit
    add = unit * (scale or 0.0)
    with hooked(model, mode=mode, unit=unit, add=add, layers=layers or []):
        ref = hf_logits(model, rows)
        ref_gen = hf_greedy(model, rows, N_NEW)
    assert result.logits is not None
    assert rel(result.logits, ref) < REL_TOL, f"{mode}: logits drifted {rel(result.logits, ref):.2e}"
    clean = hf_logits(model, rows)
    if mode != "none":
        assert rel(ref, clean) > 100 * REL_TOL, f"{mode}: the edit should change the logits"
    for i, rec in enumerate(result.records):
        assert rec.tokens == ref_gen[i], f"{mode}, prompt {i}: {rec.tokens} != hook {ref_gen[i]}"
        assert rec.text == model.tokenizer.decode(ref_gen[i], skip_special_tokens=True)
        assert rec.refusal == judge(rec.text or "")
        assert rec.top1 == int(ref[i].argmax())
    assert result.texts == [r.text for r in result.records]
    assert result.refusal_rate == sum(bool(r.refusal) for r in result.records) / len(prompts)
    assert result.meta.mode == mode and result.meta.max_new_tokens == N_NEW
    assert result.meta.layers == (layers or []) and result.meta.scale == scale
    again = SteerResult.model_validate_json(result.model_dump_json())
    assert again.records == result.records and again.logits is None


def test_steer_and_directions_simulated_remote_equal_local(
    model: ihs.Model, pair: tuple[str, str], direction: Direction, prompts: list[str]
) -> None:
    # NDIF serialisation run in-process: the trace bodies must ship without ihs_sight.
    sim = ihs.Model(model.nn, arch=model.arch, name=model.name, backend="simulate")
    sim._weights_hash = model.weights_hash  # same module: skip re-hashing every weight
    remote = ihs.refusal_direction(sim, [pair[0]] * 2, [pair[1]] * 2, layers=[LAYER], positions=[-1], n_val=1,
                                   progress=False)
    assert torch.equal(remote.vectors, direction.vectors) and remote.candidates == direction.candidates
    local = steer(model, prompts, direction, mode="ablate", generate=N_NEW, judge=judge, keep_logits=True,
                  progress=False)
    shipped = steer(sim, prompts, direction, mode="ablate", generate=N_NEW, judge=judge, keep_logits=True,
                    progress=False)
    assert local.logits is not None and shipped.logits is not None
    assert torch.equal(local.logits, shipped.logits)
    assert [r.tokens for r in local.records] == [r.tokens for r in shipped.records]


def test_steer_generation_ending_early_at_eos_matches_hooks_quietly(
    model: ihs.Model, prompts: list[str]
) -> None:
    # Add, at the last layer, a large multiple of the final state of a finished reply (whose next
    # token is EOS): every row ends at once, so the steering loop's later steps never run
    # (nnsight's warning about them is expected and silenced).
    ids = encode(model.tokenizer, ["Say hi."])[0] + model.tokenizer(
        "Hi! How can I help you today?", add_special_tokens=False)["input_ids"]
    seen: dict[str, torch.Tensor] = {}
    handle = model.hf.model.norm.register_forward_pre_hook(
        lambda _m, args: seen.update(x=args[0][0, -1].detach().float().clone()))
    try:
        assert int(hf_logits(model, [ids])[0].argmax()) == model.tokenizer.eos_token_id
    finally:
        handle.remove()
    push, layer, scale = seen["x"], model.n_layers, 1e5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = steer(model, prompts, push, mode="add", scale=scale, layers=[layer], generate=N_NEW, judge=judge,
                       progress=False)
    assert not [w for w in caught if "never reached" in str(w.message)]
    with hooked(model, mode="add", unit=push / push.norm(), add=scale * push / push.norm(), layers=[layer]):
        ref_gen = hf_greedy(model, encode(model.tokenizer, prompts), N_NEW)
    assert [r.tokens for r in result.records] == ref_gen
    assert all(r.tokens is not None and len(r.tokens) < N_NEW for r in result.records)


def test_steer_none_equals_clean_greedy_generation(model: ihs.Model, prompts: list[str], direction: Direction) -> None:
    result = steer(model, prompts[:1], direction, mode="none", generate=N_NEW, judge=judge, progress=False)
    ids = encode(model.tokenizer, prompts[:1])[0]
    with torch.no_grad():
        out = model.hf.generate(input_ids=torch.tensor([ids]), max_new_tokens=N_NEW, do_sample=False)
    assert result.records[0].tokens == out[0, len(ids):].tolist()


def test_steer_add_scale_none_is_the_direction_norm(model: ihs.Model, prompts: list[str], direction: Direction) -> None:
    result = steer(model, prompts[:1], direction, mode="add", generate=None, keep_logits=True, progress=False)
    assert result.meta.scale == pytest.approx(direction.norm) and result.meta.layers == [direction.layer]
    assert result.texts is None and result.refusal_rate is None and result.meta.judge is None
    with hooked(model, mode="add", unit=direction.unit, add=direction.vector, layers=[direction.layer]):
        ref = hf_logits(model, encode(model.tokenizer, prompts[:1]))
    assert result.logits is not None and rel(result.logits, ref) < REL_TOL


def test_steer_default_judge_reads_replies_with_prompts(
    model: ihs.Model, prompts: list[str], direction: Direction, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[list[str], list[str] | None]] = []

    class Spy:
        name = "spy judge"

        def __call__(self, text: str) -> bool:
            return False

        def many(self, texts: list[str], asked: list[str] | None) -> list[bool]:
            seen.append((texts, asked))
            return [True] * len(texts)

    # The package's ``steer`` attribute is the function; the module is in sys.modules.
    monkeypatch.setattr(importlib.import_module("ihs_sight.steer"), "default_judge", lambda: Spy())
    result = steer(model, prompts[:1], direction, mode="none", generate=2, progress=False)
    assert seen == [(result.texts, prompts[:1])]
    assert result.refusal_rate == 1.0 and result.meta.judge == "spy judge"


# ---------------------------------------------------------------------------- bad input


def test_steer_requires_mode(model: ihs.Model, prompts: list[str], direction: Direction) -> None:
    with pytest.raises(TypeError, match="mode"):
        steer(model, prompts, direction)  # type: ignore[call-arg]


def test_steer_rejects_bad_input(model: ihs.Model, prompts: list[str], direction: Direction) -> None:
    d, last = model.d_model, model.n_layers
    cases: list[tuple[dict[str, Any], str]] = [
        ({"mode": "remove"}, "mode must be one of"),
        ({"direction": torch.zeros(d + 1)}, rf"\[{d}\]"),
        ({"direction": torch.zeros(d)}, "non-zero"),
        ({"direction": torch.full((d,), float("nan"))}, "finite"),
        ({"direction": "refusal"}, "direction must be"),
        ({"direction": torch.ones(d), "mode": "add"}, "layers"),
        ({"mode": "add", "scale": float("nan")}, "scale must be a finite number"),
        ({"mode": "add", "scale": float("inf")}, "scale must be a finite number"),
        ({"mode": "add", "layers": [last + 1]}, "out of range"),
        ({"mode": "add", "layers": [-1]}, "out of range"),
        ({"mode": "add", "layers": []}, "layers is empty"),
        ({"mode": "ablate", "scale": 1.0}, "scale applies"),
        ({"mode": "ablate", "layers": [3]}, "layers applies"),
        ({"generate": 0}, "generate"),
        ({"batch_size": 0}, "batch_size"),
        ({"judge": 3}, "judge"),
        ({"prompts": []}, "empty"),
    ]
    for change, match in cases:
        kwargs: dict[str, Any] = {"prompts": prompts, "direction": direction, "mode": "none",
                                  "generate": None, "progress": False} | change
        with pytest.raises(ihs.InputError, match=match):
            steer(model, kwargs.pop("prompts"), kwargs.pop("direction"), **kwargs)


def test_steer_checks_direction_weights_and_width(model: ihs.Model, prompts: list[str], direction: Direction) -> None:
    fields = direction.model_dump() | {"vectors": direction.vectors}
    other = Direction(**(fields | {"weights_hash": "0" * 32}))
    with pytest.warns(DirectionWarning, match="other weights"):
        steer(model, prompts[:1], other, mode="none", generate=None, progress=False)
    with pytest.raises(ihs.InputError, match="other weights"):
        steer(model, prompts[:1], other, mode="none", generate=None, strict=True, progress=False)
    narrow = Direction(**(fields | {"vectors": direction.vectors[:, :64].contiguous(), "d_model": 64}))
    with pytest.raises(ihs.InputError, match="width 64"):
        steer(model, prompts[:1], narrow, mode="ablate", generate=None, progress=False)
