"""Steering along a direction: ablate it, add it, or leave it, and read the replies.

Mental model:

1. Prompts are templated and tokenised once and run in left-padded batches, as everywhere.
2. ``mode="ablate"`` removes the unit direction ``r`` from the residual stream everywhere:
   ``x <- x - (x . r) r`` at every block's input and on every attention sublayer's output (so
   the residual after attention is free of it too) and on the last block's output, at every
   position, in the prefill and in every decoding step (Arditi et al. 2024; the same as
   orthogonalising the weights, which the library never writes). ``mode="add"`` adds
   ``scale * r`` to the states of the chosen layers, at every position and step. ``"none"``
   runs the identical path with no edit: the baseline.
3. One next-token trace per batch gives top-k tokens and lexicon masses (as graft reports);
   greedy generation (``generate=n``) gives replies, which a refusal judge reads with their prompts.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from . import checks
from .directions import Direction, attention_name
from .emotions import mass_token_ids
from .errors import InputError
from .extract import encode_for
from .judge import RefusalJudge, default_judge, judge_many, judge_name
from .layers import check_layers
from .models import Model, until_eos
from .runtime import traces
from .runtime.batches import Batch, run_batches
from .runtime.provenance import RunMeta, run_fields

if TYPE_CHECKING:
    from .emotions import Lexicon
    from .prompts import EncodedPrompts

log = logging.getLogger(__name__)

SteerMode = Literal["ablate", "add", "none"]
MODES: tuple[SteerMode, ...] = ("ablate", "add", "none")


class DirectionWarning(UserWarning):
    """A direction computed from other weights is applied to this model."""


# ---------------------------------------------------------------------------- results


class SteerMeta(RunMeta):
    """How a steering run was made: the model and template (:class:`RunMeta`), direction, settings, lexicon, judge."""

    mode: SteerMode
    """``ablate``, ``add`` or ``none``."""
    layers: list[int]
    """Layers the direction was added at (``add``); empty otherwise (ablation acts at every layer)."""
    scale: float | None
    """``add``: the multiple of the unit direction added; ``None`` otherwise."""
    direction_kind: str
    """``refusal``, ``harmfulness`` or ``tensor`` (a raw vector)."""
    direction_layer: int | None
    """The direction's own layer (``None`` for a raw vector)."""
    direction_weights_hash: str | None
    """The weights the direction was computed from (``None`` for a raw vector)."""
    top_k: int
    """Top next tokens recorded per prompt."""
    lexicon: str
    """The emotion lexicon whose negative / positive token sets give the masses."""
    max_new_tokens: int | None
    """Greedy tokens generated per prompt (``None``: next token only)."""
    judge: str | None
    """The refusal judge that read the replies."""


class SteeredPrompt(BaseModel):
    """One prompt's steered next token and reply."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    prompt: str
    """The prompt, before templating."""
    top1: int
    """() the next-token id."""
    topk_ids: list[int]
    """(top_k,) top next-token ids, most probable first."""
    topk_probs: list[float]
    """(top_k,) their probabilities."""
    topk_tokens: list[str]
    """(top_k,) their decoded strings."""
    neg_mass: float
    """() next-token probability mass on the negative (refusal) lexicon."""
    pos_mass: float
    """() next-token probability mass on the positive (affirmative) lexicon."""
    neg_top1: bool
    """Whether the top-1 token is in the negative lexicon."""
    tokens: list[int] | None = None
    """(n_generated,) greedy reply ids, up to and including the first EOS."""
    text: str | None = None
    """The reply, special tokens removed."""
    refusal: bool | None = None
    """The judge's verdict on the reply."""


class SteerResult(BaseModel):
    """Replies and next-token effects of steering every prompt, with rates over all prompts."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True,
                              arbitrary_types_allowed=True)

    mode: SteerMode
    """``ablate``, ``add`` or ``none``."""
    records: list[SteeredPrompt]
    """(n_prompts,) per-prompt results, in input order."""
    texts: list[str] | None
    """(n_prompts,) the replies (``None`` without generation)."""
    refusal_rate: float | None
    """Share of replies the judge calls refusals (``None`` without generation)."""
    neg_top1_rate: float
    """Share of prompts whose next token is a negative-lexicon token."""
    mean_neg_mass: float
    """Mean next-token probability mass on the negative lexicon."""
    mean_pos_mass: float
    """Mean next-token probability mass on the positive lexicon."""
    meta: SteerMeta
    logits: torch.Tensor | None = Field(default=None, exclude=True, repr=False)
    """(n_prompts, vocab) float32 next-token logits (``keep_logits=True`` only; not serialised)."""

    def __len__(self) -> int:
        return len(self.records)


# ---------------------------------------------------------------------------- checks


def check_direction(model: Model, direction: Any, *, strict: bool) -> Direction | torch.Tensor:
    """The direction, checked against the model: width and depth must match; other weights warn (``strict``: refused)."""
    if isinstance(direction, Direction):
        if direction.d_model != model.d_model or direction.n_layers != model.n_layers:
            raise InputError(f"The direction has width {direction.d_model} over {direction.n_layers} blocks; the model "
                             f"has width {model.d_model} over {model.n_layers}. Compute it with this model.")
        if direction.weights_hash != model.weights_hash:
            message = (f"The direction was computed from other weights ({direction.model_name}, hash "
                       f"{direction.weights_hash[:12]}) than this model's ({model.name}, {model.weights_hash[:12]}).")
            if strict:
                raise InputError(message + " Pass strict=False to apply it anyway.")
            warnings.warn(message, DirectionWarning, stacklevel=3)
        return direction
    if isinstance(direction, torch.Tensor):
        if not torch.is_floating_point(direction) or direction.ndim != 1 or direction.shape[0] != model.d_model:
            raise InputError(f"A direction tensor must be a float vector [{model.d_model}], got {direction.dtype} "
                             f"{tuple(direction.shape)}.")
        vec = direction.detach().to("cpu", torch.float32)
        if not bool(torch.isfinite(vec).all()) or float(vec.norm()) == 0.0:
            raise InputError("The direction tensor must be finite and non-zero.")
        return vec
    raise InputError(f"direction must be a Direction (ihs.refusal_direction) or a tensor [D], "
                     f"got {type(direction).__name__}.")


# ---------------------------------------------------------------------------- runs


def _run(model: Model, encoded: EncodedPrompts, *, edit: dict[str, Any], neg_ids: torch.Tensor,
         pos_ids: torch.Tensor, top_k: int, keep_logits: bool, generate: int | None, batch_size: int,
         bar: Any) -> tuple[dict[str, torch.Tensor], list[list[int]] | None]:
    """Next-token effects of every prompt and, with ``generate``, their greedy replies (cut after EOS)."""

    def next_step(batch: Batch) -> dict[str, torch.Tensor]:
        return traces.steered_next_token(model, batch.inputs, neg_ids=neg_ids, pos_ids=pos_ids, top_k=top_k,
                                         keep_logits=keep_logits, **edit)

    effect = run_batches(model, encoded, next_step, batch_size=batch_size, dedupe=False, bar=bar).rows
    if generate is None:
        return effect, None
    eos = model.eos_ids
    replies: dict[int, list[int]] = {}

    def gen_step(batch: Batch) -> dict[str, torch.Tensor]:
        out = traces.steered_generation(model, batch.inputs, max_new_tokens=generate, pad_id=model.pad_id, **edit)
        for i, row in zip(batch.indices, out["generated"].tolist()):
            replies[i] = until_eos(row, eos)
        return {}

    run_batches(model, encoded, gen_step, batch_size=batch_size, dedupe=False, bar=bar)
    return effect, [replies[i] for i in range(len(encoded))]


# ---------------------------------------------------------------------------- public API


def steer(
    model: Model,
    prompts: Any,
    direction: Direction | torch.Tensor,
    *,
    mode: SteerMode,
    scale: float | None = None,
    layers: Sequence[int] | None = None,
    generate: int | None = 24,
    judge: RefusalJudge | None = None,
    top_k: int = 10,
    lexicon: str | Lexicon = "v1",
    batch_size: int = 8,
    chat: bool = True,
    system_prompt: str | None = None,
    strict: bool = False,
    keep_logits: bool = False,
    progress: bool = True,
) -> SteerResult:
    """Run prompts with a direction ablated, added, or left alone; judge the replies.

    ``mode`` has no default on purpose: the same call with another mode answers another question.

    - ``"ablate"``: the direction's unit vector is projected out at every block's input, after
      every attention sublayer and at the last block's output, at every position of the prompt
      and of the reply (``scale`` and ``layers`` do not apply).
    - ``"add"``: ``scale * unit`` is added to the states of ``layers`` (package numbering: layer
      ``l >= 1`` is block ``l``'s output, 0 the first block's input) at every position and step.
      ``scale=None`` is the difference-in-means norm at the direction's layer, i.e. the raw
      difference (a raw tensor: its own norm); a negative scale pushes away from the direction.
    - ``"none"``: the identical path with no edit (the baseline to compare with).

    Args:
        model: from :func:`ihs_sight.load_model`.
        prompts: a ``PromptSet`` or a list of strings.
        direction: a :class:`~ihs_sight.Direction`, or a raw float tensor ``[D]``.
        mode: ``"ablate"``, ``"add"`` or ``"none"`` (required).
        scale: ``add`` only: multiple of the unit vector.
        layers: ``add`` only: layers to add at; ``None``: the direction's own layer.
        generate: greedy new tokens per prompt (``None``: next-token effects only).
        judge: refusal judge for the replies (``None``: :func:`ihs_sight.default_judge`, each
            reply read with its prompt).
        top_k: next tokens recorded per prompt.
        lexicon: emotion lexicon whose negative / positive token sets give the masses.
        batch_size: prompts per forward pass.
        chat: apply the chat template.
        system_prompt: ``None`` keeps the template's default.
        strict: raise instead of warning when the direction comes from other weights.
        keep_logits: also keep the next-token logits (not serialised).
        progress: show a progress bar.

    Returns:
        :class:`SteerResult`: per-prompt next tokens, masses, replies and verdicts; refusal rate.

    Examples:
        >>> direction = ihs.refusal_direction(model)
        >>> harmful = data.test.malicious.head(8)
        >>> ihs.steer(model, harmful, direction, mode="none").refusal_rate
        >>> ihs.steer(model, harmful, direction, mode="ablate").refusal_rate
    """
    mode = checks.one_of("mode", mode, MODES)
    vec = check_direction(model, direction, strict=bool(strict))
    if mode != "add" and scale is not None:
        raise InputError(f"scale applies to mode='add' only (mode={mode!r}); leave it None.")
    if mode != "add" and layers is not None:
        raise InputError(f"layers applies to mode='add' only (ablation acts at every layer); mode={mode!r}.")
    if generate is not None:
        generate = int(checks.number("generate", generate, low=1, integer=True))
    top_k = min(checks.positive_int("top_k", top_k), model.vocab_size)
    bs = checks.batch_size(batch_size)
    if judge is not None and not callable(judge):
        raise InputError(f"judge must be a callable text -> bool (e.g. ihs.default_judge()), got {type(judge).__name__}.")
    unit = vec.unit if isinstance(vec, Direction) else vec / vec.norm()
    chosen: list[int] = []
    amount: float | None = None
    if mode == "add":
        if layers is None and not isinstance(vec, Direction):
            raise InputError("A raw direction tensor has no layer of its own; pass layers=[...] with mode='add'.")
        given = [vec.layer] if layers is None and isinstance(vec, Direction) else layers
        chosen = sorted(set(check_layers(given, model.n_layers)))  # each layer's state is added to once
        amount = (vec.norm if isinstance(vec, Direction) else float(vec.norm())) if scale is None else \
            checks.finite("scale", scale)
    attn = attention_name(model) if mode == "ablate" else ""
    encoded = encode_for(model, prompts, chat=chat, system_prompt=system_prompt)
    lex_name, neg_ids, pos_ids = mass_token_ids(model, lexicon)
    if generate is not None and judge is None:
        judge = default_judge()
    edit = {"mode": None if mode == "none" else mode, "unit": unit,
            "add": unit * (amount or 0.0), "layers": chosen, "attn": attn}
    n = len(encoded)
    with tqdm(total=n * (1 if generate is None else 2), desc=f"steer ({mode})", unit="prompt",
              disable=not progress) as bar:
        effect, replies = _run(model, encoded, edit=edit, neg_ids=neg_ids, pos_ids=pos_ids, top_k=top_k,
                               keep_logits=keep_logits, generate=generate, batch_size=bs, bar=bar)
    tok = model.tokenizer
    texts = None if replies is None else [tok.decode(r, skip_special_tokens=True) for r in replies]
    verdicts = None if texts is None or judge is None else judge_many(judge, texts, encoded.texts)
    negative = set(neg_ids.tolist())
    names: dict[int, str] = {}
    records = []
    for i, prompt in enumerate(encoded.texts):
        ids = [int(v) for v in effect["top_ids"][i].tolist()]
        for t in ids:
            names.setdefault(t, tok.decode([t]))
        records.append(SteeredPrompt(
            prompt=prompt, top1=ids[0], topk_ids=ids, topk_probs=[float(p) for p in effect["top_probs"][i].tolist()],
            topk_tokens=[names[t] for t in ids], neg_mass=float(effect["neg_mass"][i]),
            pos_mass=float(effect["pos_mass"][i]), neg_top1=ids[0] in negative,
            tokens=None if replies is None else replies[i], text=None if texts is None else texts[i],
            refusal=None if verdicts is None else verdicts[i],
        ))
    meta = SteerMeta(
        **run_fields(model, encoded), mode=mode, layers=chosen, scale=amount,
        direction_kind=vec.kind if isinstance(vec, Direction) else "tensor",
        direction_layer=vec.layer if isinstance(vec, Direction) else None,
        direction_weights_hash=vec.weights_hash if isinstance(vec, Direction) else None,
        top_k=top_k, lexicon=lex_name, max_new_tokens=generate,
        judge=judge_name(judge) if judge is not None and generate is not None else None,
    )
    result = SteerResult(
        mode=mode, records=records, texts=texts,
        refusal_rate=None if verdicts is None else sum(verdicts) / n,
        neg_top1_rate=sum(r.neg_top1 for r in records) / n,
        mean_neg_mass=sum(r.neg_mass for r in records) / n,
        mean_pos_mass=sum(r.pos_mass for r in records) / n,
        meta=meta, logits=effect.get("logits") if keep_logits else None,
    )
    log.info("steer (%s): refusal rate %s, mean negative mass %.3f", mode, result.refusal_rate, result.mean_neg_mass)
    return result
