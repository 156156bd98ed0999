"""Figures for logit grafting: one layer's per-target masses, and a sweep over layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from matplotlib.figure import Figure
from matplotlib.patches import Patch

if TYPE_CHECKING:
    from ..graft import GraftResult, SweepResult

_NEG = "#c0392b"
_POS = "#2471a3"
_FLIP = "#7d3c98"
_REFUSE = "#d68910"


def _mode_label(meta_mode: str, scale: float) -> str:
    return meta_mode if scale == 1.0 else f"{meta_mode}, scale {scale:g}"


def plot_graft(result: GraftResult) -> Figure:
    """Negative and positive lexicon mass of each target, before and after the graft.

    Left: one line per target from its clean to its grafted mass. Right: the means, with
    the flip and negative-to-non-negative rates (and refusal rates, when generated) in the title.
    """
    fig = Figure(figsize=(9.5, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.4, 1]})
    for i, t in enumerate(result.targets):
        left.plot([0, 1], [t.neg_mass_before, t.neg_mass_after], color=_NEG, alpha=0.45, marker="o", ms=3,
                  label="negative lexicon" if i == 0 else None)
        left.plot([0, 1], [t.pos_mass_before, t.pos_mass_after], color=_POS, alpha=0.45, marker="o", ms=3,
                  label="positive lexicon" if i == 0 else None)
    left.set_xticks([0, 1], ["clean", f"grafted @ layer {result.layer}"])
    left.set_xlim(-0.25, 1.25)
    left.set_ylabel("next-token probability mass")
    left.set_title(f"per target (n={len(result)})")
    left.legend(loc="upper center", fontsize=8, frameon=False)

    x = [0.0, 1.0]
    width = 0.36
    right.bar([v - width / 2 for v in x], [result.mean_neg_mass_before, result.mean_pos_mass_before], width,
              color=["#e6b0aa", "#a9cce3"])
    right.bar([v + width / 2 for v in x], [result.mean_neg_mass_after, result.mean_pos_mass_after], width,
              color=[_NEG, _POS])
    right.set_xticks(x, ["negative", "positive"])
    right.set_ylabel("mean mass")
    shades = [Patch(color="#d5d8dc", label="clean (light)"), Patch(color="#566573", label="grafted (dark)")]
    right.legend(handles=shades, fontsize=8, frameon=False)
    rates = f"flip {result.flip_rate:.0%}, neg→non-neg {result.neg_to_nonneg_rate:.0%}"
    if result.refusal_rate_before is not None and result.refusal_rate_after is not None:
        rates += f"\nrefusals {result.refusal_rate_before:.0%} → {result.refusal_rate_after:.0%}"
    right.set_title(rates, fontsize=9)
    meta = result.meta
    fig.suptitle(f"Logit grafting ({_mode_label(meta.mode, meta.scale)}, {meta.pairing} {meta.source_kind}) "
                 f"on {meta.model_name}", fontsize=10)
    return fig


def plot_sweep(result: SweepResult) -> Figure:
    """Per-layer rates (top) and mean lexicon masses with the clean baseline (bottom)."""
    fig = Figure(figsize=(8.5, 6.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    layers = result.layers
    top.plot(layers, result.flip_rate, color=_FLIP, marker="o", label="top-1 flip rate")
    top.plot(layers, result.neg_to_nonneg_rate, color=_NEG, marker="s", label="negative → non-negative")
    if result.refusal_rate is not None:
        top.plot(layers, result.refusal_rate, color=_REFUSE, marker="^", label="refusal rate (grafted)")
        if result.refusal_rate_before is not None:
            top.axhline(result.refusal_rate_before, color=_REFUSE, ls="--", lw=1,
                        label="refusal rate (clean)")
    top.set_ylim(-0.03, 1.03)
    top.set_ylabel("share of targets")
    top.legend(fontsize=8, frameon=False)

    bottom.plot(layers, result.mean_neg_mass, color=_NEG, marker="o", label="negative mass (grafted)")
    bottom.plot(layers, result.mean_pos_mass, color=_POS, marker="o", label="positive mass (grafted)")
    bottom.axhline(result.mean_neg_mass_before, color=_NEG, ls="--", lw=1, label="negative mass (clean)")
    bottom.axhline(result.mean_pos_mass_before, color=_POS, ls="--", lw=1, label="positive mass (clean)")
    bottom.set_xlabel("graft layer (0 = block 1 input, l = block l output)")
    bottom.set_ylabel("mean next-token mass")
    bottom.legend(fontsize=8, frameon=False)
    if len(layers) <= 32:
        bottom.set_xticks(layers)
    meta = result.meta
    n = len(result.results[0]) if result.results else 0
    fig.suptitle(f"Graft sweep ({_mode_label(meta.mode, meta.scale)}, {meta.pairing} {meta.source_kind}, "
                 f"{n} targets) on {meta.model_name}", fontsize=10)
    return fig
