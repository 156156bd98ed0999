"""Figure for jailbreak anatomy: each family's place between direct normal and malicious, per layer."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from matplotlib.figure import Figure

if TYPE_CHECKING:
    from ..anatomy import GroupReading, JailbreakAnatomy

_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
_YLIM = (-0.75, 2.0)


def _scores(group: GroupReading, low: list[float], high: list[float], field: str) -> list[float]:
    """Per layer: (group - normal) / (malicious - normal) of the mean projections; NaN where they coincide."""
    values: list[float] = getattr(group, field)
    return [(v - lo) / (hi - lo) if abs(hi - lo) > 1e-9 * max(abs(hi), abs(lo), 1.0) else math.nan
            for v, lo, hi in zip(values, low, high, strict=True)]


def plot_anatomy(result: JailbreakAnatomy) -> Figure:
    """Two panels (harmfulness, refusal): per layer, each family's mean projection placed on the scale
    direct normal = 0, direct malicious = 1; jailbreaks solid, their wrapped-normal controls dashed,
    the verdict threshold dotted, and each direction's own layer (where the table reads) marked."""
    fig = Figure(figsize=(11, 5.0), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    # The fixed range, widened to every score the table reports (each read at its direction's layer).
    read = [v for f in result.families for g in (f.jailbreak, f.control) if g is not None
            for v in (g.harm, g.refusal) if math.isfinite(v)]
    ylim = (min([_YLIM[0], *read]) - 0.25 * (min(read, default=0.0) < _YLIM[0]),
            max([_YLIM[1], *read]) + 0.25 * (max(read, default=0.0) > _YLIM[1]))
    layers = list(range(result.n_layers + 1))
    panels = (("harmfulness", "harm_per_layer", result.harm_layer, result.harm_position),
              ("refusal", "refusal_per_layer", result.refusal_layer, result.refusal_position))
    for ax, (name, field, layer, position) in zip(axes, panels, strict=True):
        low, high = getattr(result.normal, field), getattr(result.malicious, field)
        ax.axhline(1.0, color="black", lw=1.5, label="direct malicious")
        ax.axhline(0.0, color="black", lw=1.5, ls="--", label="direct normal")
        ax.axhline(result.threshold, color="grey", lw=0.8, ls=":")
        for i, fam in enumerate(result.families):
            color = _COLORS[i % len(_COLORS)]
            ax.plot(layers, _scores(fam.jailbreak, low, high, field), color=color, lw=1.3, label=fam.family)
            if fam.control is not None:
                ax.plot(layers, _scores(fam.control, low, high, field), color=color, lw=1.0, ls="--", alpha=0.7)
        ax.axvline(layer, color="grey", ls=":", lw=1)
        ax.set_ylim(*ylim)
        ax.set_xlabel("layer l (0 = first block's input)")
        ax.set_title(f"{name} direction (position {position}; the table reads layer {layer})", fontsize=9)
    axes[0].set_ylabel("mean projection, direct normal = 0, direct malicious = 1")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=5, fontsize=7, frameon=False,
               title="solid: jailbreaks, dashed: their wrapped-normal controls (early layers, where the direct "
               "means nearly coincide, leave the scale)", title_fontsize=7)
    fig.suptitle(f"Jailbreak anatomy on {result.model_name}", fontsize=10)
    return fig
