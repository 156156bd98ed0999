"""Logit grafting: overwrite a prompt's last-token state at one layer and watch what follows.

The paper approximates a jailbreak by grafting a "positive" state (e.g. the mean state of
normal prompts) onto a malicious prompt's last token at a middle layer: if the refusal goes
away, the middle-layer state carried it. Mental model:

1. Targets are templated and tokenised once, length-bucketed and left-padded exactly as in
   :func:`ihs_sight.extract`, so ``[:, -1]`` is every row's last real token.
2. ``source`` gives one graft vector per target: donor prompts' last-token states at the same
   layer (their mean, or donor ``i`` for target ``i``), or a tensor you pass.
3. Per batch, a clean trace and a grafted trace read the last-token logits; only top-k ids,
   probabilities and lexicon masses leave the trace (small on the NDIF path).
4. With ``generate=n``, greedy generation runs with the graft written outside
   ``tracer.iter``, so it binds to the prefill step only: later tokens see the graft through
   the KV cache of the blocks after the graft layer, as a jailbreak's prompt would.

Layer numbering is the package's (``l = 0`` is ``blocks[0].input``, ``l >= 1`` the output of
block ``l``); ``graft(..., layer=l)`` overwrites the same state ``HiddenStates.layer(l)`` holds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from . import checks
from .donors import resolve_donors
from .emotions import mass_token_ids
from .errors import InputError
from .extract import encode_for
from .judge import RefusalJudge, default_judge, judge_many, judge_name
from .layers import check_layer, check_layers
from .models import Model, until_eos
from .prompts import EncodedPrompts
from .runtime import traces
from .runtime.batches import Batch, run_batches
from .runtime.compiled import check_compilable
from .runtime.packing import check_pack
from .runtime.provenance import RunMeta, run_fields

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .emotions import Lexicon

log = logging.getLogger(__name__)

Mode = Literal["replace", "add", "seed"]
Pairing = Literal["mean", "paired"]
MODES: tuple[Mode, ...] = ("replace", "add", "seed")
PAIRINGS: tuple[Pairing, ...] = ("mean", "paired")


# ---------------------------------------------------------------------------- results


class GraftMeta(RunMeta):
    """How a graft was made: the model and template (:class:`RunMeta`), graft settings, lexicon and judge."""

    mode: Mode
    """``replace``, ``add`` or ``seed`` (see :func:`graft`)."""
    pairing: Pairing
    """``mean`` (one vector for all targets) or ``paired`` (source row ``i`` to target ``i``)."""
    scale: float
    """The graft vector is ``scale * source``."""
    source_kind: Literal["prompts", "states", "tensor"]
    """What ``source`` was: donor prompts, a ``HiddenStates``, or a tensor."""
    n_source: int
    """Number of donor prompts / source rows."""
    top_k: int
    """Number of top tokens recorded per target."""
    lexicon: str
    """The emotion lexicon whose negative/positive token sets give the masses."""
    n_negative_ids: int
    """Number of distinct token ids in the negative lexicon."""
    n_positive_ids: int
    """Number of distinct token ids in the positive lexicon."""
    max_new_tokens: int | None
    """Greedy tokens generated per target, or ``None`` when nothing was generated."""
    judge: str | None
    """The refusal judge used on generated text, or ``None``."""


class GraftedTarget(BaseModel):
    """One target prompt's next token (and optional continuation), before and after the graft."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    prompt: str
    """The target prompt, before templating."""
    top1_before: int
    """() the clean next-token id."""
    top1_after: int
    """() the grafted next-token id."""
    topk_ids_before: list[int]
    """(top_k,) clean top-k token ids, most probable first."""
    topk_probs_before: list[float]
    """(top_k,) their probabilities."""
    topk_tokens_before: list[str]
    """(top_k,) their decoded strings."""
    topk_ids_after: list[int]
    """(top_k,) grafted top-k token ids."""
    topk_probs_after: list[float]
    """(top_k,) their probabilities."""
    topk_tokens_after: list[str]
    """(top_k,) their decoded strings."""
    neg_mass_before: float
    """() clean probability mass on the negative (refusal) lexicon's tokens."""
    neg_mass_after: float
    """() grafted probability mass on the negative lexicon's tokens."""
    pos_mass_before: float
    """() clean probability mass on the positive (affirmative) lexicon's tokens."""
    pos_mass_after: float
    """() grafted probability mass on the positive lexicon's tokens."""
    flipped: bool
    """Whether the top-1 token changed."""
    neg_before: bool
    """Whether the clean top-1 token is in the negative lexicon."""
    neg_after: bool
    """Whether the grafted top-1 token is in the negative lexicon."""
    neg_to_nonneg: bool
    """Whether the top-1 moved from a negative-lexicon token to a non-negative one."""
    tokens_before: list[int] | None = None
    """(n_generated,) clean greedy continuation ids (up to and including the first EOS)."""
    tokens_after: list[int] | None = None
    """(n_generated,) grafted greedy continuation ids."""
    text_before: str | None = None
    """The clean continuation, special tokens removed."""
    text_after: str | None = None
    """The grafted continuation."""
    refusal_before: bool | None = None
    """The judge's verdict on ``text_before``."""
    refusal_after: bool | None = None
    """The judge's verdict on ``text_after``."""

    @property
    def top1_token_before(self) -> str:
        return self.topk_tokens_before[0]

    @property
    def top1_token_after(self) -> str:
        return self.topk_tokens_after[0]


class GraftResult(BaseModel):
    """The effect of grafting at one layer on every target: per-target records and rates.

    Rates are shares of all targets. ``logits_before`` / ``logits_after`` are kept only
    with ``keep_logits=True`` and are never serialised.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", use_attribute_docstrings=True, arbitrary_types_allowed=True
    )

    layer: int
    """The layer index grafted (package numbering; for ``seed``, the skipped block)."""
    targets: list[GraftedTarget]
    """(n_targets,) per-target effects, in input order."""
    flip_rate: float
    """Share of targets whose top-1 token changed."""
    neg_to_nonneg_rate: float
    """Share of targets whose top-1 moved from a negative-lexicon token to a non-negative one."""
    neg_top1_rate_before: float
    """Share of targets whose clean top-1 is a negative-lexicon token."""
    neg_top1_rate_after: float
    """Share of targets whose grafted top-1 is a negative-lexicon token."""
    mean_neg_mass_before: float
    """Mean clean probability mass on the negative lexicon."""
    mean_neg_mass_after: float
    """Mean grafted probability mass on the negative lexicon."""
    mean_pos_mass_before: float
    """Mean clean probability mass on the positive lexicon."""
    mean_pos_mass_after: float
    """Mean grafted probability mass on the positive lexicon."""
    refusal_rate_before: float | None = None
    """Share of clean continuations the judge calls refusals (``None`` without generation)."""
    refusal_rate_after: float | None = None
    """Share of grafted continuations the judge calls refusals."""
    meta: GraftMeta
    logits_before: torch.Tensor | None = Field(default=None, exclude=True, repr=False)
    """(n_targets, vocab) float32 clean last-token logits (``keep_logits=True`` only; not serialised)."""
    logits_after: torch.Tensor | None = Field(default=None, exclude=True, repr=False)
    """(n_targets, vocab) float32 grafted last-token logits (``keep_logits=True`` only; not serialised)."""

    def __len__(self) -> int:
        return len(self.targets)

    def plot(self) -> Figure:
        """Lexicon masses before and after, per target and on average."""
        from .plots.graft import plot_graft

        return plot_graft(self)


class SweepResult(BaseModel):
    """Grafting at several layers: per-layer rates, the clean baseline, and each layer's result."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    layers: list[int]
    """(n_layers_swept,) the layer indices grafted, in the order given."""
    flip_rate: list[float]
    """(n_layers_swept,) share of targets whose top-1 changed."""
    neg_to_nonneg_rate: list[float]
    """(n_layers_swept,) share of targets whose top-1 moved from negative to non-negative."""
    mean_neg_mass: list[float]
    """(n_layers_swept,) mean grafted probability mass on the negative lexicon."""
    mean_pos_mass: list[float]
    """(n_layers_swept,) mean grafted probability mass on the positive lexicon."""
    refusal_rate: list[float] | None = None
    """(n_layers_swept,) share of grafted continuations judged refusals (``None`` without generation)."""
    mean_neg_mass_before: float
    """Clean baseline: mean probability mass on the negative lexicon."""
    mean_pos_mass_before: float
    """Clean baseline: mean probability mass on the positive lexicon."""
    refusal_rate_before: float | None = None
    """Clean baseline: share of continuations judged refusals."""
    results: list[GraftResult]
    """(n_layers_swept,) the full result at each layer."""
    meta: GraftMeta

    def plot(self) -> Figure:
        """Flip, negative-to-non-negative and refusal rates and lexicon masses against the layer."""
        from .plots.graft import plot_sweep

        return plot_sweep(self)


# ---------------------------------------------------------------------------- preparation


def check_graft_layer(layer: Any, n_layers: int, mode: str) -> int:
    """A graft layer: ``0..L`` (``seed`` skips a block, so ``1..L``)."""
    return check_layer(layer, n_layers, low=1 if mode == "seed" else 0)


@dataclass(frozen=True)
class _Options:
    """The scalar options of :func:`graft` and :func:`graft_sweep`, checked once."""

    mode: Mode
    pairing: Pairing
    scale: float
    generate: int | None
    top_k: int
    batch_size: int
    judge: RefusalJudge | None
    pack: int | None
    compile: bool

    @classmethod
    def check(cls, model: Model, *, mode: Any, pairing: Any, scale: Any, generate: Any, top_k: Any,
              batch_size: Any, judge: Any, pack: Any, compile: Any) -> _Options:
        mode = checks.one_of("mode", mode, MODES)
        pairing = checks.one_of("pairing", pairing, PAIRINGS)
        scale = checks.finite("scale", scale)
        if generate is not None:
            generate = int(checks.number("generate", generate, low=1, integer=True))
        top_k = checks.positive_int("top_k", top_k)
        batch_size = checks.batch_size(batch_size)
        if judge is not None and not callable(judge):
            raise InputError(
                f"judge must be a callable text -> bool (e.g. ihs.default_judge()), got {type(judge).__name__}."
            )
        width = check_pack(pack)
        if compile:
            check_compilable(model)
        return cls(mode, pairing, scale, generate, top_k, batch_size, judge, width, bool(compile))




# ---------------------------------------------------------------------------- runs


def _next_token(model: Model, targets: EncodedPrompts, opts: _Options, *, mode: str | None, layer: int,
                vecs: torch.Tensor | None, neg_ids: torch.Tensor, pos_ids: torch.Tensor, keep_logits: bool,
                bar: Any) -> dict[str, torch.Tensor]:
    """Next-token top-k and lexicon masses of every target (``mode=None``: clean), in target order."""

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        rows = vecs[batch.indices] if vecs is not None else torch.zeros(0)
        return traces.grafted_next_token(model, batch.inputs, last=batch.last, mode=mode, layer=layer, vecs=rows,
                                         neg_ids=neg_ids, pos_ids=pos_ids, top_k=opts.top_k,
                                         keep_logits=keep_logits)

    return run_batches(model, targets, step, batch_size=opts.batch_size, pack=opts.pack, compile=opts.compile,
                       dedupe=False, bar=bar).rows


def _generation(model: Model, targets: EncodedPrompts, opts: _Options, *, mode: str | None, layer: int,
                vecs: torch.Tensor | None, max_new_tokens: int, bar: Any) -> list[list[int]]:
    """Greedy continuations of every target (left-padded batches), each cut after its first EOS."""
    eos = model.eos_ids
    generated: dict[int, list[int]] = {}

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        rows = vecs[batch.indices] if vecs is not None else torch.zeros(0)
        out = traces.grafted_generation(model, batch.inputs, mode=mode, layer=layer, vecs=rows,
                                        max_new_tokens=max_new_tokens, pad_id=model.pad_id)
        for i, row in zip(batch.indices, out["generated"].tolist()):
            generated[i] = until_eos(row, eos)
        return {}

    run_batches(model, targets, step, batch_size=opts.batch_size, dedupe=False, bar=bar)
    return [generated[i] for i in range(len(targets))]






# ---------------------------------------------------------------------------- assembly


@dataclass(frozen=True)
class _Clean:
    effect: dict[str, Any]
    generated: list[list[int]] | None


def _assemble(
    model: Model,
    targets: EncodedPrompts,
    *,
    layer: int,
    clean: _Clean,
    effect: dict[str, Any],
    generated: list[list[int]] | None,
    neg_ids: torch.Tensor,
    judge: RefusalJudge | None,
    meta: GraftMeta,
    keep_logits: bool,
) -> GraftResult:
    tok = model.tokenizer
    names: dict[int, str] = {}

    def decode(ids: list[int]) -> list[str]:
        for i in ids:
            if i not in names:
                names[i] = tok.decode([i])
        return [names[i] for i in ids]

    negative = set(neg_ids.tolist())
    verdicts: tuple[list[bool], list[bool]] | None = None
    if generated is not None and clean.generated is not None and judge is not None:
        # One batch per side, each reply read with its prompt (judges that take prompts use them).
        before = [tok.decode(ids, skip_special_tokens=True) for ids in clean.generated]
        after = [tok.decode(ids, skip_special_tokens=True) for ids in generated]
        verdicts = (judge_many(judge, before, targets.texts), judge_many(judge, after, targets.texts))
    records = []
    for i, text in enumerate(targets.texts):
        ids_b = [int(v) for v in clean.effect["top_ids"][i].tolist()]
        ids_a = [int(v) for v in effect["top_ids"][i].tolist()]
        neg_b, neg_a = ids_b[0] in negative, ids_a[0] in negative
        extra: dict[str, Any] = {}
        if generated is not None and clean.generated is not None:
            text_b = tok.decode(clean.generated[i], skip_special_tokens=True)
            text_a = tok.decode(generated[i], skip_special_tokens=True)
            extra = {"tokens_before": clean.generated[i], "tokens_after": generated[i],
                     "text_before": text_b, "text_after": text_a}
            if verdicts is not None:
                extra |= {"refusal_before": verdicts[0][i], "refusal_after": verdicts[1][i]}
        records.append(GraftedTarget(
            prompt=text,
            top1_before=ids_b[0],
            top1_after=ids_a[0],
            topk_ids_before=ids_b,
            topk_probs_before=[float(p) for p in clean.effect["top_probs"][i].tolist()],
            topk_tokens_before=decode(ids_b),
            topk_ids_after=ids_a,
            topk_probs_after=[float(p) for p in effect["top_probs"][i].tolist()],
            topk_tokens_after=decode(ids_a),
            neg_mass_before=float(clean.effect["neg_mass"][i]),
            neg_mass_after=float(effect["neg_mass"][i]),
            pos_mass_before=float(clean.effect["pos_mass"][i]),
            pos_mass_after=float(effect["pos_mass"][i]),
            flipped=ids_b[0] != ids_a[0],
            neg_before=neg_b,
            neg_after=neg_a,
            neg_to_nonneg=neg_b and not neg_a,
            **extra,
        ))

    def share(flags: list[bool]) -> float:
        return sum(flags) / len(flags)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    judged = generated is not None and judge is not None
    return GraftResult(
        layer=layer,
        targets=records,
        flip_rate=share([r.flipped for r in records]),
        neg_to_nonneg_rate=share([r.neg_to_nonneg for r in records]),
        neg_top1_rate_before=share([r.neg_before for r in records]),
        neg_top1_rate_after=share([r.neg_after for r in records]),
        mean_neg_mass_before=mean([r.neg_mass_before for r in records]),
        mean_neg_mass_after=mean([r.neg_mass_after for r in records]),
        mean_pos_mass_before=mean([r.pos_mass_before for r in records]),
        mean_pos_mass_after=mean([r.pos_mass_after for r in records]),
        refusal_rate_before=share([bool(r.refusal_before) for r in records]) if judged else None,
        refusal_rate_after=share([bool(r.refusal_after) for r in records]) if judged else None,
        meta=meta,
        logits_before=clean.effect.get("logits") if keep_logits else None,
        logits_after=effect.get("logits") if keep_logits else None,
    )


# ---------------------------------------------------------------------------- public API


def _sweep_core(
    model: Model,
    targets: Any,
    source: Any,
    opts: _Options,
    *,
    layers: list[int],
    lexicon: str | Lexicon,
    chat: bool,
    system_prompt: str | None,
    cache: bool | str | Any,
    keep_logits: bool,
    progress: bool,
) -> list[GraftResult]:
    encoded = encode_for(model, targets, chat=chat, system_prompt=system_prompt, what="targets")
    n = len(encoded)
    lex_name, neg_ids, pos_ids = mass_token_ids(model, lexicon)
    src = resolve_donors(
        model, source, pairing=opts.pairing, n_targets=n, chat=chat, system_prompt=system_prompt,
        batch_size=opts.batch_size, cache=cache, progress=progress,
    )
    vectors = {layer: src.vectors(layer, opts.pairing, n, opts.scale) for layer in layers}
    generate = opts.generate
    judge = opts.judge
    if judge is None and generate is not None:
        judge = default_judge()
    top_k = min(opts.top_k, int(getattr(model.config, "vocab_size", opts.top_k) or opts.top_k))
    opts = _Options(opts.mode, opts.pairing, opts.scale, generate, top_k, opts.batch_size, judge, opts.pack,
                    opts.compile)
    meta = GraftMeta(
        **run_fields(model, encoded),
        mode=opts.mode,
        pairing=opts.pairing,
        scale=opts.scale,
        source_kind=src.kind,
        n_source=src.n,
        top_k=top_k,
        lexicon=lex_name,
        n_negative_ids=len(neg_ids),
        n_positive_ids=len(pos_ids),
        max_new_tokens=generate,
        judge=judge_name(judge) if judge is not None and generate is not None else None,
    )
    runs = (1 + len(layers)) * (1 if generate is None else 2)
    masses: dict[str, Any] = {"neg_ids": neg_ids, "pos_ids": pos_ids, "keep_logits": keep_logits}
    with tqdm(total=runs * n, desc="graft", unit="prompt", disable=not progress) as bar:
        clean_effect = _next_token(model, encoded, opts, mode=None, layer=0, vecs=None, bar=bar, **masses)
        clean_gen = None
        if generate is not None:
            clean_gen = _generation(model, encoded, opts, mode=None, layer=0, vecs=None, max_new_tokens=generate,
                                    bar=bar)
        clean = _Clean(effect=clean_effect, generated=clean_gen)
        results = []
        for layer in layers:
            effect = _next_token(model, encoded, opts, mode=opts.mode, layer=layer, vecs=vectors[layer], bar=bar,
                                 **masses)
            generated = None
            if generate is not None:
                generated = _generation(model, encoded, opts, mode=opts.mode, layer=layer, vecs=vectors[layer],
                                        max_new_tokens=generate, bar=bar)
            results.append(_assemble(
                model, encoded, layer=layer, clean=clean, effect=effect, generated=generated,
                neg_ids=neg_ids, judge=judge, meta=meta, keep_logits=keep_logits,
            ))
            log.info("graft layer %d: flip rate %.3f, neg->nonneg %.3f", layer, results[-1].flip_rate,
                     results[-1].neg_to_nonneg_rate)
    return results


def graft(
    model: Model,
    targets: Any,
    source: Any,
    *,
    layer: int,
    pairing: Pairing = "mean",
    mode: Mode = "replace",
    scale: float = 1.0,
    generate: int | None = None,
    top_k: int = 10,
    judge: RefusalJudge | None = None,
    lexicon: str | Lexicon = "v1",
    batch_size: int = 8,
    chat: bool = True,
    system_prompt: str | None = None,
    cache: bool | str | Any = True,
    keep_logits: bool = False,
    progress: bool = True,
    pack: bool | int = False,
    compile: bool = False,
) -> GraftResult:
    """Graft a state onto each target's last token at one layer; compare next token and text.

    Modes (``v`` is ``scale * source``, the source read at ``layer``):

    - ``"replace"``: the last-token state at ``layer`` becomes ``v`` (``layer`` 0..L; 0
      overwrites the input of block 1).
    - ``"add"``: ``v`` is added to it (steering along a direction).
    - ``"seed"``: the original paper code's graft. Block ``layer`` (1..L) still runs — its KV
      cache comes from the un-grafted input — but its output is replaced by its *input* with
      the last position overwritten by ``v``: the last token leaves block ``layer`` as ``v``
      (as with ``"replace"``), while every other position skips the block. The original's
      ``layer2graft=k`` (0-based) is ``layer=k + 1`` here.

    Args:
        model: from :func:`ihs_sight.load_model`.
        targets: prompts to graft onto (a ``PromptSet`` or list of strings), e.g. malicious ones.
        source: donor prompts (``PromptSet`` / list: their last-token states at ``layer``,
            extracted with the same template), a ``HiddenStates``, or a tensor ``[D]`` or
            ``[N, D]`` (used at any layer as given).
        layer: the layer index, in the package numbering (see the module docstring).
        pairing: ``"mean"``: the mean of the source rows for every target; ``"paired"``:
            source row ``i`` for target ``i`` (needs as many rows as targets).
        mode: ``"replace"``, ``"add"`` or ``"seed"`` (above).
        scale: multiplies the source vector in every mode.
        generate: ``None`` for next-token effects only, or a number of greedy new tokens; the
            graft applies to the first generated step only (later steps see it through the cache).
        top_k: tokens recorded per target.
        judge: refusal judge for generated text (any ``str -> bool``; one that takes ``prompt=`` reads
            each reply with its target); default :func:`ihs_sight.default_judge`, validated on the gold set.
        lexicon: emotion lexicon version or object; its negative/positive token sets give the masses.
        batch_size: prompts per forward pass.
        chat: apply the chat template (``False``: raw text, for base models).
        system_prompt: ``None`` keeps the template's default.
        cache: states cache for donor prompts, as in :func:`ihs_sight.extract`.
        keep_logits: also keep the full last-token logits (not serialised).
        progress: show a progress bar.
        pack: pack the next-token traces' prompts into rows of this many tokens (``True``: 256),
            as in :func:`ihs_sight.extract`; generation keeps left-padded batches.
        compile: compile the blocks for this call, as in :func:`ihs_sight.extract`.

    Returns:
        :class:`GraftResult` with per-target top-k, lexicon masses, flips and (optionally)
        texts and refusal verdicts, plus rates over all targets.

    Examples:
        >>> data = ihs.load_prompts()
        >>> result = ihs.graft(model, data.test.malicious.head(8), data.train.normal, layer=16)
        >>> result.flip_rate, result.mean_neg_mass_before, result.mean_neg_mass_after
    """
    opts = _Options.check(model, mode=mode, pairing=pairing, scale=scale, generate=generate, top_k=top_k,
                          batch_size=batch_size, judge=judge, pack=pack, compile=compile)
    layer = check_graft_layer(layer, model.n_layers, opts.mode)
    return _sweep_core(model, targets, source, opts, layers=[layer], lexicon=lexicon, chat=chat,
                       system_prompt=system_prompt, cache=cache, keep_logits=keep_logits, progress=progress)[0]


def graft_sweep(
    model: Model,
    targets: Any,
    source: Any,
    *,
    layers: Sequence[int] | None = None,
    pairing: Pairing = "mean",
    mode: Mode = "replace",
    scale: float = 1.0,
    generate: int | None = None,
    top_k: int = 10,
    judge: RefusalJudge | None = None,
    lexicon: str | Lexicon = "v1",
    batch_size: int = 8,
    chat: bool = True,
    system_prompt: str | None = None,
    cache: bool | str | Any = True,
    progress: bool = True,
    pack: bool | int = False,
    compile: bool = False,
) -> SweepResult:
    """:func:`graft` at several layers: per-layer flip, negative-to-non-negative and refusal rates.

    The clean run (and clean generation) is done once; donor states are extracted once for
    all layers. A tensor source is used as given at every layer.

    Args:
        layers: layer indices to graft at; ``None`` means every block output, 1..L.
        Others: as in :func:`graft`.

    Returns:
        :class:`SweepResult`; ``.plot()`` draws the rates against the layer.

    Examples:
        >>> malicious = data.test.malicious.head(16)
        >>> sweep = ihs.graft_sweep(model, malicious, data.train.normal, layers=[8, 16, 24])
        >>> sweep.flip_rate
    """
    opts = _Options.check(model, mode=mode, pairing=pairing, scale=scale, generate=generate, top_k=top_k,
                          batch_size=batch_size, judge=judge, pack=pack, compile=compile)
    chosen = check_layers(range(1, model.n_layers + 1) if layers is None else layers, model.n_layers,
                          low=1 if opts.mode == "seed" else 0)
    results = _sweep_core(model, targets, source, opts, layers=chosen, lexicon=lexicon, chat=chat,
                          system_prompt=system_prompt, cache=cache, keep_logits=False, progress=progress)
    first = results[0]
    refusals = [r.refusal_rate_after for r in results]
    return SweepResult(
        layers=chosen,
        flip_rate=[r.flip_rate for r in results],
        neg_to_nonneg_rate=[r.neg_to_nonneg_rate for r in results],
        mean_neg_mass=[r.mean_neg_mass_after for r in results],
        mean_pos_mass=[r.mean_pos_mass_after for r in results],
        refusal_rate=[float(r) for r in refusals if r is not None] if generate is not None else None,
        mean_neg_mass_before=first.mean_neg_mass_before,
        mean_pos_mass_before=first.mean_pos_mass_before,
        refusal_rate_before=first.refusal_rate_before,
        results=results,
        meta=first.meta,
    )
