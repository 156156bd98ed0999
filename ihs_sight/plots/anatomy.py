"""Figure for jailbreak anatomy: each family's mean projection per layer on both directions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from matplotlib.figure import Figure

if TYPE_CHECKING:
    from ..anatomy import JailbreakAnatomy

_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")


def plot_anatomy(result: JailbreakAnatomy) -> Figure:
    """Two panels (harmfulness, refusal): mean projection per layer of every family's jailbreaks
    (solid) and controls (dashed), with the direct malicious and normal prompts in black and a
    dotted line at each direction's own layer, where the table's scores are read."""
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    axes = fig.subplots(1, 2)
    layers = list(range(result.n_layers + 1))
    panels = (("harmfulness", "harm_per_layer", result.harm_layer, result.harm_position),
              ("refusal", "refusal_per_layer", result.refusal_layer, result.refusal_position))
    for ax, (name, field, layer, position) in zip(axes, panels, strict=True):
        ax.plot(layers, getattr(result.malicious, field), color="black", lw=2, label="direct malicious")
        ax.plot(layers, getattr(result.normal, field), color="black", lw=2, ls="--", label="direct normal")
        for i, fam in enumerate(result.families):
            color = _COLORS[i % len(_COLORS)]
            ax.plot(layers, getattr(fam.jailbreak, field), color=color, lw=1.3, label=f"{fam.family}")
            if fam.control is not None:
                ax.plot(layers, getattr(fam.control, field), color=color, lw=1.0, ls="--", alpha=0.7)
        ax.axvline(layer, color="grey", ls=":", lw=1)
        ax.set_xlabel("layer l (0 = first block's input)")
        ax.set_ylabel(f"projection on the {name} direction")
        ax.set_title(f"{name} direction (position {position}; scores read at layer {layer})", fontsize=9)
    axes[1].legend(fontsize=7, frameon=False, loc="upper left", title="solid: jailbreak, dashed: control",
                   title_fontsize=7)
    fig.suptitle(f"Jailbreak anatomy on {result.model_name}", fontsize=10)
    return fig
