"""Refusal and harmfulness directions: differences in means of harmful and harmless states.

Mental model (the field's reading of the paper's question, next to grafting):

1. Harmful and harmless prompts are templated and run once; every layer's states are kept at
   the chat template's *post-instruction* tokens (what follows the user's message: end of turn,
   assistant header). The difference of the two classes' means is a candidate direction for
   every (position, layer) pair (Arditi et al. 2024).
2. A **refusal** direction is chosen among them on held-out prompts, without generating:
   ablating it should lower the next-token refusal log-odds on harmful prompts (``bypass``),
   adding it should raise them on harmless ones (``induce``), and ablating it should barely
   move harmless next-token distributions (``kl``). Every candidate's scores are recorded.
3. A **harmfulness** direction is the same difference at the last token of the instruction
   itself, before the template's tokens (Zhao et al. 2025): "harm recognised", as opposed to
   "refusal triggered". Its layer is the one whose projection best separates held-out prompts.

Positions are negative offsets from the end of the templated prompt (``-1`` = the last token).
Layers use the package numbering: ``l = 0`` is ``blocks[0].input``, ``l >= 1`` the output of
block ``l`` (= the input of block ``l + 1``, Arditi's "resid_pre" of that block).
:func:`ihs_sight.steer` ablates or adds a :class:`Direction`.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tqdm.auto import tqdm

from . import checks, io
from .errors import InputError
from .extract import encode_for
from .layers import check_layers
from .models import Model
from .prompts import EncodedPrompts, PromptSet, as_prompts, encode, load_prompts
from .runtime import traces
from .runtime.batches import Batch, run_batches
from .runtime.provenance import dtype_name, versions

log = logging.getLogger(__name__)

Kind = Literal["refusal", "harmfulness"]
KINDS: tuple[Kind, ...] = ("refusal", "harmfulness")
ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
"""Attribute names of a block's attention sublayer across the supported architectures."""
SANDWICH_NORMS = ("post_attention_layernorm", "pre_feedforward_layernorm")
"""A block with both norms (Gemma 2 / 3) writes ``post_attention_layernorm``'s output into the stream."""
REFUSAL_TOKENS = ("I", "As", "Sorry")
"""Default reply openers whose first token ids make up the refusal score (Arditi et al.: "I", "As")."""
LATE_FRACTION = 0.8
"""Refusal candidates at layers ``>= int(LATE_FRACTION * L)`` are not chosen (Arditi et al.)."""


# ---------------------------------------------------------------------------- results


class Candidate(BaseModel):
    """One (position, layer) candidate and its validation scores."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    layer: int
    """The layer index (package numbering)."""
    position: int
    """Negative offset from the end of the templated prompt."""
    norm: float
    """Norm of the difference in means (the scale of one ``add``)."""
    bypass: float | None = None
    """Refusal: mean refusal log-odds on held-out harmful prompts with the direction ablated (lower is better)."""
    induce: float | None = None
    """Refusal: mean refusal log-odds on held-out harmless prompts with the difference added at ``layer``."""
    kl: float | None = None
    """Refusal: mean KL(clean || ablated) of held-out harmless next-token distributions."""
    accuracy: float | None = None
    """Harmfulness: held-out accuracy of the projection, thresholded halfway between the class means."""
    separation: float | None = None
    """Harmfulness: gap of the held-out class means along the direction, in pooled standard deviations."""
    kept: bool = True
    """Whether the candidate passed the filters."""
    reason: str | None = None
    """Why it was filtered out (every filter it failed, ``; ``-separated)."""


class Direction(BaseModel):
    """A difference-in-means direction at every layer, with the chosen layer and position.

    ``vectors[l]`` is ``mean(harmful) - mean(harmless)`` of the states at layer ``l`` and
    ``position``; :attr:`vector` is the chosen layer's, :attr:`unit` its unit vector.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True,
                              arbitrary_types_allowed=True)

    kind: Kind
    """``refusal`` (post-instruction tokens) or ``harmfulness`` (last instruction token)."""
    layer: int
    """The chosen layer index (package numbering)."""
    position: int
    """The chosen position: a negative offset from the end of the templated prompt."""
    vectors: torch.Tensor = Field(exclude=True, repr=False)
    """(n_layers + 1, d_model) float32 differences in means at ``position``, every layer."""
    n_layers: int
    """Number of blocks ``L`` of the model."""
    d_model: int
    """Width of the residual stream."""
    model_name: str
    """What was passed to ``load_model``."""
    model_class: str
    """The transformers class."""
    weights_hash: str
    """blake2b of the weights the direction was computed from."""
    dtype: str
    """The model's compute dtype."""
    chat: bool
    """Whether the chat template was applied (always ``True``: positions are template tokens)."""
    system_prompt: str | None
    """The system prompt passed (``None``: the template's default)."""
    template: str
    """The template rendered around ``{prompt}``."""
    n_harmful: int
    """Harmful prompts in the means."""
    n_harmless: int
    """Harmless prompts in the means."""
    n_val: int
    """Held-out prompts per side used to choose the candidate."""
    clean_harmful: float | None = None
    """Refusal: mean refusal log-odds of the held-out harmful prompts without any edit (``bypass``'s baseline)."""
    clean_harmless: float | None = None
    """Refusal: mean refusal log-odds of the held-out harmless prompts without any edit (``induce``'s baseline)."""
    refusal_ids: list[int] = Field(default_factory=list)
    """Token ids whose next-token probability makes up the refusal score (refusal only)."""
    candidates: list[Candidate] = Field(default_factory=list)
    """Every candidate scored, in search order; the chosen one has ``layer``/``position`` above."""
    versions: dict[str, str] = Field(default_factory=dict)
    """Package versions."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:  # say which field, as InputError
            raise InputError(f"Invalid Direction: {checks.validation_message(e)}") from None

    @model_validator(mode="after")
    def _consistent(self) -> Direction:
        v = self.vectors
        if not isinstance(v, torch.Tensor) or v.ndim != 2 or not torch.is_floating_point(v):
            raise ValueError("vectors must be a float tensor (n_layers + 1, d_model)")
        if tuple(v.shape) != (self.n_layers + 1, self.d_model):
            raise ValueError(f"vectors have shape {tuple(v.shape)}; expected ({self.n_layers + 1}, {self.d_model})")
        if not bool(torch.isfinite(v).all()):
            raise ValueError("vectors hold NaN or inf")
        if not 0 <= self.layer <= self.n_layers:
            raise ValueError(f"layer={self.layer} is out of range 0..{self.n_layers}")
        if self.position >= 0:
            raise ValueError(f"position must be a negative offset from the end, got {self.position}")
        if float(v[self.layer].norm()) == 0.0:
            raise ValueError(f"the vector at layer {self.layer} is zero; it has no direction")
        return self

    def __eq__(self, other: object) -> bool:
        # pydantic's field-wise == would ask a tensor for its truth value.
        if not isinstance(other, Direction):
            return NotImplemented
        return self.model_dump() == other.model_dump() and torch.equal(self.vectors, other.vectors)

    __hash__ = None  # type: ignore[assignment]

    @property
    def vector(self) -> torch.Tensor:
        """(d_model,) the difference in means at the chosen layer."""
        return self.vectors[self.layer]

    @property
    def norm(self) -> float:
        """Norm of :attr:`vector`: the default scale of ``steer(..., mode="add")``."""
        return float(self.vector.norm())

    @property
    def unit(self) -> torch.Tensor:
        """(d_model,) the unit vector at the chosen layer (what ablation projects out)."""
        return self.unit_at(self.layer)

    def unit_at(self, layer: int) -> torch.Tensor:
        """(d_model,) the unit vector of the difference in means at ``layer``."""
        v: torch.Tensor = self.vectors[layer].double()
        unit: torch.Tensor = v / v.norm().clamp_min(1e-30)
        return unit.float()

    def cosine(self, other: Direction) -> list[float]:
        """Per-layer cosine with another direction (see :func:`direction_cosines`)."""
        return direction_cosines(self, other)

    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` (the vectors) and ``path.json`` (everything else), atomically."""
        return io.save_pair(path, self.model_dump(mode="json"), {"vectors": self.vectors.contiguous()})

    @classmethod
    def load(cls, path: str | Path) -> Direction:
        """Read what :meth:`save` wrote."""
        payload, tensors, _ = io.load_pair(path, what="a direction")
        stem = io.pair_stem(path)
        if "vectors" not in tensors:
            raise InputError(f"Cannot read a direction at {stem}: no 'vectors' tensor.")
        try:
            return cls(vectors=tensors["vectors"], **payload)
        except (InputError, TypeError) as e:
            raise InputError(f"Cannot read a direction at {stem}: {e}") from None


def direction_cosines(a: Direction, b: Direction) -> list[float]:
    """(n_layers + 1,) cosine of two directions' difference vectors at every layer.

    E.g. refusal against harmfulness: how far "refusal triggered" and "harm recognised" part
    along the depth. Both must come from models of the same shape; a zero vector gives 0.0.
    """
    if not isinstance(a, Direction) or not isinstance(b, Direction):
        raise InputError("direction_cosines takes two Direction objects.")
    if a.vectors.shape != b.vectors.shape:
        raise InputError(f"The directions have shapes {tuple(a.vectors.shape)} and {tuple(b.vectors.shape)}; "
                         "compute both with the same model.")
    if a.weights_hash != b.weights_hash:
        log.warning("the two directions come from different weights")
    x, y = a.vectors.double(), b.vectors.double()
    dots = (x * y).sum(-1)
    norms = x.norm(dim=-1) * y.norm(dim=-1)
    return [float(d / n) if n > 0 else 0.0 for d, n in zip(dots.tolist(), norms.tolist())]


# ---------------------------------------------------------------------------- helpers


def attention_name(model: Model) -> str:
    """The module whose output is each block's attention write into the residual stream (ablation edits it).

    Llama-like blocks add the attention sublayer's output (``self_attn``). Blocks with sandwich
    norms (Gemma 2 and 3: ``post_attention_layernorm`` after attention, ``pre_feedforward_layernorm``
    before the MLP) add the post-attention norm's output instead, so that is the site: projecting
    the direction out of the attention output before that norm would leave a component in the write.
    """
    block = model.block_modules()[0]
    if all(isinstance(getattr(block, name, None), torch.nn.Module) for name in SANDWICH_NORMS):
        return SANDWICH_NORMS[0]
    for name in ATTENTION_NAMES:
        if isinstance(getattr(block, name, None), torch.nn.Module):
            return name
    raise InputError(f"Cannot find the attention sublayer of {type(block).__name__} (looked for "
                     f"{', '.join(ATTENTION_NAMES)}); directions need it to ablate.")


def post_instruction_length(model: Model, *, system_prompt: str | None) -> int:
    """Number of template tokens after the user's message (end of turn, assistant header).

    Found as the common suffix of two rendered one-word prompts, so it holds for any template.
    """
    tok = model.tokenizer
    if not getattr(tok, "chat_template", None):
        raise InputError("Directions are read at the chat template's tokens after the instruction, and this "
                         "tokenizer has no chat template; use a chat model.")
    a, b = encode(tok, ["Tell me about apples", "Explain rivers"], chat=True, system_prompt=system_prompt)
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    if n == 0:
        raise InputError("The chat template adds no tokens after the user's message; directions need some.")
    return n


def refusal_ids(model: Model, tokens: Sequence[str]) -> list[int]:
    """The first token id of each reply opener (as the reply's first word, no leading space)."""
    words = checks.as_list("refusal_tokens", tokens, "a list of strings")
    if not words or not all(isinstance(w, str) and w for w in words):
        raise InputError("refusal_tokens must be a non-empty list of non-empty strings, e.g. ['I', 'As'].")
    ids = {int(model.tokenizer(w, add_special_tokens=False)["input_ids"][0]) for w in words}
    return sorted(ids)


def refusal_score(logits: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """(B,) refusal log-odds ``log p - log(1 - p)`` of next-token logits (B, V), ``p`` the mass on ``ids``."""
    probs = logits.double().softmax(-1)
    p = probs[:, list(ids)].sum(-1)
    return torch.log(p + 1e-8) - torch.log(1 - p + 1e-8)


def _split(prompts: Any, *, what: str, n_train: int | None, n_val: int, rng: random.Random) -> tuple[
        PromptSet, PromptSet]:
    """(train, val): a seeded shuffle; the first ``n_val`` held out, then up to ``n_train``."""
    given = as_prompts(prompts, what=what)
    if len(given) < n_val + 1:
        raise InputError(f"{what} has {len(given)} prompts; at least n_val + 1 = {n_val + 1} are needed.")
    order = rng.sample(range(len(given)), len(given))
    val = [given.items[i] for i in order[:n_val]]
    rest = order[n_val:] if n_train is None else order[n_val:n_val + n_train]
    return PromptSet(items=[given.items[i] for i in rest]), PromptSet(items=val)


def _class_mean(model: Model, encoded: EncodedPrompts, n_tail: int, batch_size: int, bar: Any) -> torch.Tensor:
    """(n_tail, L+1, D) float64 mean of the states at the last ``n_tail`` positions."""

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        states = traces.tail_states(model, batch.inputs, n_tail=n_tail)["states"]
        return {"sum": states.double().sum(0)}

    run = run_batches(model, encoded, step, batch_size=batch_size, reduce=("sum",), dedupe=False, bar=bar)
    return run.sums["sum"] / len(encoded)


def _inst_states(model: Model, encoded: EncodedPrompts, n_tail: int, batch_size: int, bar: Any) -> torch.Tensor:
    """(n, L+1, D) float32 states at the position ``-n_tail`` (the last instruction token)."""

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        return {"states": traces.tail_states(model, batch.inputs, n_tail=n_tail)["states"][:, 0]}

    return run_batches(model, encoded, step, batch_size=batch_size, dedupe=False, bar=bar).rows["states"]


def _next_logits(model: Model, encoded: EncodedPrompts, *, mode: str | None, unit: torch.Tensor,
                 add: torch.Tensor, layers: list[int], attn: str, batch_size: int, bar: Any) -> torch.Tensor:
    """(n, V) float32 next-token logits of every prompt, clean, ablated or with ``add`` added."""
    empty = torch.zeros(0, dtype=torch.long)

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        out = traces.steered_next_token(model, batch.inputs, mode=mode, unit=unit, add=add, layers=layers,
                                        attn=attn, neg_ids=empty, pos_ids=empty, top_k=1, keep_logits=True)
        return {"logits": out["logits"]}

    return run_batches(model, encoded, step, batch_size=batch_size, dedupe=False, bar=bar).rows["logits"]


def _check_common(*, n_train: Any, n_val: Any, batch_size: Any, chat: Any) -> tuple[int | None, int, int]:
    if chat is not True:
        raise InputError("Directions are read at chat-template positions; chat must be True (use a chat model).")
    train = None if n_train is None else checks.positive_int("n_train", n_train)
    return train, checks.positive_int("n_val", n_val), checks.batch_size(batch_size)


def _default_sets(harmful: Any, harmless: Any) -> tuple[Any, Any]:
    if (harmful is None) != (harmless is None):
        raise InputError("Pass both harmful and harmless prompts, or neither (the bundled train split).")
    if harmful is None:
        train = load_prompts().train
        return train.malicious, train.normal
    return harmful, harmless


def _direction(model: Model, kind: Kind, means: tuple[torch.Tensor, torch.Tensor], *, layer: int, position: int,
               encoded: EncodedPrompts, n: tuple[int, int], n_val: int, system_prompt: str | None,
               ids: list[int], candidates: list[Candidate],
               clean: tuple[float | None, float | None] = (None, None)) -> Direction:
    return Direction(
        kind=kind, layer=layer, position=position, vectors=(means[0] - means[1]).float().contiguous(),
        n_layers=model.n_layers, d_model=model.d_model, model_name=model.name, model_class=type(model.hf).__name__,
        weights_hash=model.weights_hash, dtype=dtype_name(model), chat=True, system_prompt=system_prompt,
        template=encoded.template, n_harmful=n[0], n_harmless=n[1], n_val=n_val, clean_harmful=clean[0],
        clean_harmless=clean[1], refusal_ids=ids,
        candidates=candidates, versions=versions(),
    )


# ---------------------------------------------------------------------------- public API


def choose_candidate(candidates: Sequence[Candidate]) -> Candidate:
    """The refusal candidate with the lowest ``bypass`` among those kept.

    If none was kept, among those that failed the KL cap alone (Arditi's cap was set for 2B-8B
    models; a small model's harmless outputs move more), else among every scored one, with a
    warning. Ties go to the earlier layer.
    """
    scored = [c for c in candidates if c.bypass is not None and math.isfinite(c.bypass)]
    if not scored:
        raise InputError("No candidate direction could be scored (every difference in means was zero or "
                         "non-finite); check the prompts and the model's dtype.")
    pool = [c for c in scored if c.kept]
    if not pool:
        pool = [c for c in scored if (c.reason or "").startswith("kl ") and ";" not in (c.reason or "")]
        what = "passing the other filters (the KL cap relaxed)"
        if not pool:
            pool, what = scored, "of all"
        log.warning("no refusal candidate passed the filters (late layer, kl > kl_max, induce < 0); choosing the "
                    "lowest bypass score of the %d %s", len(pool), what)
    return min(pool, key=lambda c: (float(c.bypass or 0.0), c.layer))


def default_candidate_layers(n_layers: int, count: int = 4) -> list[int]:
    """``count`` layers evenly spread over ``[L // 4, int(0.8 L) - 1]``: a CPU-affordable search.

    For SmolLM2-135M (L = 30): 7, 12, 17, 23.
    """
    lo, hi = n_layers // 4, max(n_layers // 4, int(LATE_FRACTION * n_layers) - 1)
    if count <= 1 or hi == lo:
        return [lo]
    return sorted({round(lo + k * (hi - lo) / (count - 1)) for k in range(count)})


def refusal_direction(
    model: Model,
    harmful: Any = None,
    harmless: Any = None,
    *,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    n_train: int | None = 64,
    n_val: int = 8,
    refusal_tokens: Sequence[str] = REFUSAL_TOKENS,
    kl_max: float = 0.1,
    chat: bool = True,
    system_prompt: str | None = None,
    batch_size: int = 8,
    random_state: int = 0,
    progress: bool = True,
) -> Direction:
    """The refusal direction: a difference in means at a post-instruction position, chosen without generating.

    Candidates are every (position, layer) pair searched. Each is scored on ``n_val`` held-out
    prompts per side by next-token forwards only: ``bypass`` (refusal log-odds of harmful
    prompts with the unit direction ablated everywhere), ``induce`` (of harmless prompts with
    the difference added at its layer) and ``kl`` (harmless next-token KL under ablation).
    Candidates with a non-finite score, ``layer >= int(0.8 L)``, ``kl > kl_max`` or
    ``induce < 0`` are dropped; the lowest ``bypass`` wins. If none is left, the KL cap is
    relaxed first (it was set for 2B-8B models), then every filter, with a warning. The clean
    scores the candidates move from are recorded (``clean_harmful``, ``clean_harmless``).

    Cost: one forward per mean prompt plus ``3 * n_val`` forwards per candidate, so the
    defaults (4 layers x the template's post-instruction positions, 64 + 8 prompts per side)
    stay affordable on a CPU: ~2.5 min for SmolLM2-135M (24 candidates) on one thread. Widen
    ``layers``, ``n_train`` and ``n_val`` on a GPU.

    Args:
        model: a chat model from :func:`ihs_sight.load_model`.
        harmful, harmless: prompts (``PromptSet`` or lists); ``None`` for both = the bundled
            train split's malicious and normal prompts.
        layers: candidate layers (package numbering); ``None``: :func:`default_candidate_layers`.
        positions: candidate negative offsets among the post-instruction tokens; ``None``: all of them.
        n_train: harmful / harmless prompts per side in the means (``None``: all not held out).
        n_val: prompts per side held out for choosing the candidate.
        refusal_tokens: reply openers whose first token ids make up the refusal score.
        kl_max: largest harmless KL under ablation a candidate may cause.
        chat: must be ``True`` (positions are the chat template's tokens).
        system_prompt: ``None`` keeps the template's default.
        batch_size: prompts per forward pass.
        random_state: seeds the train / held-out split.
        progress: show a progress bar.

    Returns:
        :class:`Direction` with ``kind="refusal"`` and every candidate's scores.

    Examples:
        >>> direction = ihs.refusal_direction(model)
        >>> direction.layer, direction.position, direction.norm
        >>> ihs.steer(model, data.test.malicious.head(8), direction, mode="ablate").refusal_rate
    """
    train_n, val_n, bs = _check_common(n_train=n_train, n_val=n_val, batch_size=batch_size, chat=chat)
    kl_cap = checks.number("kl_max", kl_max, low=0.0)
    n_post = post_instruction_length(model, system_prompt=system_prompt)
    pos = list(range(-n_post, 0)) if positions is None else checks.as_list("positions", positions, "a list of ints")
    if not pos or not all(isinstance(p, int) and not isinstance(p, bool) and -n_post <= p <= -1 for p in pos):
        raise InputError(f"positions must be a non-empty list of negative offsets in -{n_post}..-1 (the template's "
                         f"post-instruction tokens), got {positions!r}.")
    chosen_layers = default_candidate_layers(model.n_layers) if layers is None else check_layers(layers, model.n_layers)
    ids = refusal_ids(model, refusal_tokens)
    attn = attention_name(model)
    harmful, harmless = _default_sets(harmful, harmless)
    rng = random.Random(random_state)
    (h_train, h_val), (s_train, s_val) = (_split(harmful, what="harmful", n_train=train_n, n_val=val_n, rng=rng),
                                          _split(harmless, what="harmless", n_train=train_n, n_val=val_n, rng=rng))
    enc = {name: encode_for(model, ps, chat=True, system_prompt=system_prompt, what=name)
           for name, ps in (("harmful", h_train), ("harmless", s_train), ("held-out", h_val + s_val))}
    n_cand = len(pos) * len(chosen_layers)
    total = len(h_train) + len(s_train) + 2 * val_n + n_cand * 3 * val_n
    empty = torch.zeros(0)
    with tqdm(total=total, desc="refusal direction", unit="prompt", disable=not progress) as bar:
        mean_h = _class_mean(model, enc["harmful"], n_post, bs, bar)
        mean_s = _class_mean(model, enc["harmless"], n_post, bs, bar)
        held = enc["held-out"]
        clean = _next_logits(model, held, mode=None, unit=empty, add=empty, layers=[], attn=attn, batch_size=bs,
                             bar=bar)
        harmless_held = EncodedPrompts(prompts=s_val, labelled=False, ids=held.ids[val_n:], template=held.template,
                                       hashes=held.hashes[val_n:], chat=True, system_prompt=system_prompt)
        clean_logp = clean[val_n:].double().log_softmax(-1)
        candidates: list[Candidate] = []
        for p in pos:
            for layer in chosen_layers:
                diff = (mean_h[n_post + p, layer] - mean_s[n_post + p, layer]).float()
                norm = float(diff.norm())
                if norm == 0.0 or not math.isfinite(norm):
                    candidates.append(Candidate(layer=layer, position=p, norm=norm if math.isfinite(norm) else 0.0,
                                                kept=False, reason="zero or non-finite difference"))
                    bar.update(3 * val_n)
                    continue
                unit = diff / norm
                ablated = _next_logits(model, held, mode="ablate", unit=unit, add=empty, layers=[], attn=attn,
                                       batch_size=bs, bar=bar)
                added = _next_logits(model, harmless_held, mode="add", unit=empty, add=diff, layers=[layer],
                                     attn=attn, batch_size=bs, bar=bar)
                bypass = float(refusal_score(ablated[:val_n], ids).mean())
                induce = float(refusal_score(added, ids).mean())
                abl_logp = ablated[val_n:].double().log_softmax(-1)
                kl = float((clean_logp.exp() * (clean_logp - abl_logp)).sum(-1).mean())
                reasons = []
                if not all(math.isfinite(x) for x in (bypass, induce, kl)):
                    reasons.append("non-finite score")
                if layer >= int(LATE_FRACTION * model.n_layers):
                    reasons.append(f"layer >= int({LATE_FRACTION} * L)")
                if kl > kl_cap:
                    reasons.append(f"kl {kl:.3g} > kl_max {kl_cap:g}")
                if induce < 0:
                    reasons.append("induce < 0")
                candidates.append(Candidate(layer=layer, position=p, norm=norm, bypass=bypass, induce=induce, kl=kl,
                                            kept=not reasons, reason="; ".join(reasons) or None))
    best = choose_candidate(candidates)
    log.info("refusal direction: layer %d, position %d (bypass %.3f, induce %.3f, kl %.4f)", best.layer,
             best.position, best.bypass, best.induce, best.kl)
    return _direction(model, "refusal", (mean_h[n_post + best.position], mean_s[n_post + best.position]),
                      layer=best.layer, position=best.position, encoded=enc["harmful"],
                      n=(len(h_train), len(s_train)), n_val=val_n, system_prompt=system_prompt, ids=ids,
                      candidates=candidates, clean=(float(refusal_score(clean[:val_n], ids).mean()),
                                                    float(refusal_score(clean[val_n:], ids).mean())))


def harmfulness_direction(
    model: Model,
    harmful: Any = None,
    harmless: Any = None,
    *,
    layers: Sequence[int] | None = None,
    n_train: int | None = 64,
    n_val: int = 8,
    chat: bool = True,
    system_prompt: str | None = None,
    batch_size: int = 8,
    random_state: int = 0,
    progress: bool = True,
) -> Direction:
    """The harmfulness direction: a difference in means at the last token of the instruction.

    That token is the one just before the template's post-instruction tokens, where the
    harmfulness of the request is read before any refusal is prepared (Zhao et al. 2025).
    Every layer's difference is kept; the chosen layer is the candidate whose projection best
    separates ``n_val`` held-out prompts per side (threshold halfway between the class means;
    ties go to the larger separation), which needs no extra forward passes.

    Args:
        layers: candidate layers; ``None``: every block output ``1..L``.
        Others: as in :func:`refusal_direction`.

    Returns:
        :class:`Direction` with ``kind="harmfulness"``; each candidate's ``accuracy`` and ``separation``.

    Examples:
        >>> harm = ihs.harmfulness_direction(model)
        >>> refusal = ihs.refusal_direction(model)
        >>> ihs.direction_cosines(refusal, harm)     # per layer: where the two part
    """
    train_n, val_n, bs = _check_common(n_train=n_train, n_val=n_val, batch_size=batch_size, chat=chat)
    n_post = post_instruction_length(model, system_prompt=system_prompt)
    chosen_layers = check_layers(range(1, model.n_layers + 1) if layers is None else layers, model.n_layers)
    harmful, harmless = _default_sets(harmful, harmless)
    rng = random.Random(random_state)
    (h_train, h_val), (s_train, s_val) = (_split(harmful, what="harmful", n_train=train_n, n_val=val_n, rng=rng),
                                          _split(harmless, what="harmless", n_train=train_n, n_val=val_n, rng=rng))
    enc = {name: encode_for(model, ps, chat=True, system_prompt=system_prompt, what=name)
           for name, ps in (("harmful", h_train), ("harmless", s_train), ("held-out", h_val + s_val))}
    n_tail = n_post + 1
    total = len(h_train) + len(s_train) + 2 * val_n
    with tqdm(total=total, desc="harmfulness direction", unit="prompt", disable=not progress) as bar:
        mean_h = _class_mean(model, enc["harmful"], n_tail, bs, bar)[0]
        mean_s = _class_mean(model, enc["harmless"], n_tail, bs, bar)[0]
        held = _inst_states(model, enc["held-out"], n_tail, bs, bar).double()
    candidates = []
    for layer in chosen_layers:
        diff = mean_h[layer] - mean_s[layer]
        norm = float(diff.norm())
        if norm == 0.0 or not math.isfinite(norm):
            candidates.append(Candidate(layer=layer, position=-n_tail, norm=0.0, kept=False,
                                        reason="zero or non-finite difference"))
            continue
        unit = diff / norm
        proj = held[:, layer] @ unit
        threshold = float(((mean_h[layer] + mean_s[layer]) / 2) @ unit)
        pred = proj > threshold
        truth = torch.arange(len(proj)) < val_n
        accuracy = float((pred == truth).double().mean())
        a, b = proj[:val_n], proj[val_n:]
        pooled = math.sqrt((float(a.var(unbiased=False)) + float(b.var(unbiased=False))) / 2)
        separation = float(a.mean() - b.mean()) / pooled if pooled > 0 else 0.0
        candidates.append(Candidate(layer=layer, position=-n_tail, norm=norm, accuracy=accuracy,
                                    separation=separation))
    pool = [c for c in candidates if c.kept]
    if not pool:
        raise InputError("Every difference in means was zero or non-finite; check the prompts and the dtype.")
    best = max(pool, key=lambda c: (c.accuracy or 0.0, c.separation or 0.0, -c.layer))
    log.info("harmfulness direction: layer %d (held-out accuracy %.3f)", best.layer, best.accuracy)
    return _direction(model, "harmfulness", (mean_h, mean_s), layer=best.layer, position=-n_tail,
                      encoded=enc["harmful"], n=(len(h_train), len(s_train)), n_val=val_n,
                      system_prompt=system_prompt, ids=[], candidates=candidates)
