"""Figures for the logit lens: top tokens per layer, emotion mass, consistency, induced lexicons."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from matplotlib.figure import Figure
from matplotlib.patches import Patch

if TYPE_CHECKING:
    from ..emotions import EmotionProfile, InducedLexicon
    from ..lens import Consistency, LensResult

EMOTION_COLORS: dict[str | None, str] = {
    "positive": "#2e9b47",
    "negative": "#d1362f",
    "neutral": "#7a5fb5",
    None: "#9a9a9a",
}
"""Colour of each emotion category (``None``: a token in no category)."""

_LINESTYLES = ("-", "--", ":", "-.")


def display_token(token: str, width: int = 12) -> str:
    """A token made visible: leading space ``·``, ``\\n`` and ``\\t`` escaped, NBSP ``⍽``, empty ``∅``."""
    out = token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r").replace("\u00a0", "⍽")
    if out.startswith(" "):
        out = "·" + out[1:]  # "␣" glued to "I" reads as another letter at small sizes
    if not out:
        out = "∅"
    return out if len(out) <= width else out[: width - 1] + "…"


def _blend(color: str, strength: float) -> tuple[float, float, float]:
    """``color`` mixed with white; ``strength`` 0 -> white, 1 -> the colour."""
    h = color.lstrip("#")
    rgb = [int(h[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    s = min(max(strength, 0.0), 1.0)
    return (1 - s + s * rgb[0], 1 - s + s * rgb[1], 1 - s + s * rgb[2])


def _text_color(rgb: tuple[float, float, float]) -> str:
    """Black on light cells, white on dark ones (relative luminance)."""
    luminance = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]
    return "black" if luminance > 0.5 else "white"


def lens_heatmap(
    lens: LensResult, *, layers: Sequence[int] | None = None, title: str | None = None
) -> Figure:
    """Top tokens per layer, coloured by emotion.

    Row = layer, column = rank. For several prompts a cell holds the rank-r most frequent token
    among the prompts' top-k lists at that layer and its count, shaded by the share of prompts;
    for one prompt it holds that prompt's rank-r token and its probability, shaded by it. The
    hue is the token's emotion category.
    """
    wanted = list(lens.layers) if layers is None else [lens.layers[lens.index_of(layer)] for layer in layers]
    k, n = lens.top_k, len(lens)
    single = n == 1
    grid = []
    for layer in wanted:
        if single:
            j = lens.layers.index(layer)
            ids = lens.token_ids[0, j].tolist()
            vals = lens.probs[0, j].tolist()
            grid.append([(i, v, f"{v:.2f}") for i, v in zip(ids, vals)])
        else:
            top = lens.top_tokens(layer, n=k)
            grid.append([(t.token_id, t.share, str(t.count)) for t in top])
    rows = len(wanted)
    fig = Figure(figsize=(1.9 * k + 1.6, 0.4 * rows + 1.5), layout="constrained")
    ax = fig.add_subplot()
    # Every row has k cells: each prompt contributes k distinct ids, so a layer has at least k.
    image = [
        [_blend(EMOTION_COLORS[lens.token_category.get(tid)], 0.12 + 0.88 * value) for tid, value, _ in row]
        for row in grid
    ]
    ax.imshow(image, aspect="auto", interpolation="nearest")
    for y, row in enumerate(grid):
        for x, (tid, _, note) in enumerate(row):
            category = lens.token_category.get(tid)
            ax.text(
                x,
                y,
                f"{display_token(lens.vocab[tid])}  {note}",
                ha="center",
                va="center",
                fontsize=9,
                color=_text_color(image[y][x]),
                fontweight="bold" if category in ("positive", "negative") else "normal",
                parse_math=False,  # a token such as "$$\\" is text, not mathtext
            )
    ax.set_xticks(range(k), [f"#{r + 1}" for r in range(k)])
    ax.set_yticks(range(rows), [str(layer) for layer in wanted])
    ax.tick_params(axis="both", labelsize=9, length=0)
    ax.xaxis.tick_top()
    ax.set_ylabel("layer (0 = embeddings)")
    shade = "probability" if single else f"share of {n} prompts (number = count)"
    ax.set_title(title or f"Top-{k} logit-lens tokens per layer; shade = {shade}", fontsize=9)
    handles = [Patch(color=EMOTION_COLORS[c], label=str(c) if c else "other") for c in EMOTION_COLORS]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    return fig


def emotion_plot(profiles: Sequence[EmotionProfile], *, title: str | None = None) -> Figure:
    """Emotion mass (full vocabulary, log scale) and top-k share against the layer.

    Colour = category, line style = profile (e.g. malicious solid, normal dashed).
    """
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_mass, ax_share = fig.subplots(1, 2)
    for p_index, profile in enumerate(profiles):
        style = _LINESTYLES[p_index % len(_LINESTYLES)]
        name = profile.name or f"set {p_index + 1}"
        for cat in profile.mass:
            color = EMOTION_COLORS.get(cat, "#444444")
            ax_mass.plot(profile.layers, profile.mass[cat], style, color=color, label=f"{name}: {cat}")
            ax_share.plot(profile.layers, profile.topk_share[cat], style, color=color, label=f"{name}: {cat}")
    ax_mass.set_yscale("log")
    # The embeddings' lens (layer 0) is often ~1e-40 and would flatten every other layer.
    later = [
        v
        for p in profiles
        for cat in p.mass
        for layer, v in zip(p.layers, p.mass[cat])
        if layer > 0 and v > 0
    ]
    if later:
        ax_mass.set_ylim(bottom=max(min(later) / 3, 1e-12))
    ax_mass.set_ylabel("mean lens probability on the category's tokens")
    ax_share.set_ylabel(f"share of top-{profiles[0].top_k} tokens in the category" if profiles else "share")
    ax_share.set_ylim(0, 1)
    for ax in (ax_mass, ax_share):
        ax.set_xlabel("layer (0 = embeddings)")
        ax.grid(alpha=0.3)
    ax_share.legend(fontsize=7, loc="upper left", ncol=max(1, len(profiles)))
    lexicon = profiles[0].lexicon_version if profiles else "?"
    fig.suptitle(title or f"Emotion mass against the layer (lexicon {lexicon})", fontsize=10)
    return fig


def consistency_plot(results: Sequence[Consistency], *, title: str | None = None) -> Figure:
    """Top-K Intermediate Consistency against the layer; the band of each ``band_mean`` is shaded."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    shaded = set()
    for i, c in enumerate(results):
        name = c.name or f"set {i + 1}"
        ax.plot(
            c.layers,
            c.per_layer,
            _LINESTYLES[i % len(_LINESTYLES)],
            marker=".",
            label=f"{name} (band {c.band[0]}-{c.band[1]} mean {c.band_mean:.3f})",
        )
        if c.band not in shaded:
            ax.axvspan(c.band[0], c.band[1], color="#999999", alpha=0.15)
            shaded.add(c.band)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("TIC (1 = every prompt has the same top-k)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    k = results[0].top_k if results else "k"
    ax.set_title(title or f"Top-{k} Intermediate Consistency", fontsize=10)
    return fig


def induced_plot(induced: InducedLexicon, *, n: int = 20, names: tuple[str, str] = ("A", "B")) -> Figure:
    """The ``n`` tokens most over-represented in each set's lens over the band (mean probability gap)."""
    fig = Figure(figsize=(10, 0.26 * n + 1.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, side, name, color in zip(axes, (induced.a, induced.b), names, ("#d1362f", "#2e9b47")):
        items = side[:n][::-1]
        ax.barh(range(len(items)), [abs(t.score) for t in items], color=color)
        ax.set_yticks(range(len(items)), [display_token(t.token, 16) for t in items], fontsize=8)
        for label in ax.get_yticklabels():
            label.set_parse_math(False)  # tokens are text, not mathtext
        ax.set_xlabel("mean lens probability difference")
        ax.set_title(
            f"more likely for {name} (n={induced.n_a if side is induced.a else induced.n_b})", fontsize=9
        )
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"Induced lexicon, layers {induced.band[0]}-{induced.band[1]}", fontsize=10)
    return fig
