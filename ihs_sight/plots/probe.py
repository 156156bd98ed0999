"""Figures for probes: a metric against the layer index (0 = embeddings)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure

if TYPE_CHECKING:
    from ..probe import ProbeReport

LAYER_AXIS_LABEL = "layer index  (0 = embeddings, l = output of block l)"
"""The x-axis label of every per-layer probe figure."""

_LINESTYLES = ("-", "--", ":", "-.")
METRICS = ("accuracy", "f1", "roc_auc", "fpr", "fnr", "positive_rate")
_TITLES = {"accuracy": "accuracy", "f1": "F1", "roc_auc": "ROC-AUC", "fpr": "false-positive rate",
           "fnr": "false-negative rate", "positive_rate": "share flagged positive"}


BASELINE_STYLES = {"bag_of_words": ("tab:brown", ":"), "form": ("tab:gray", "-.")}
"""Colour and line style of each surface baseline's horizontal line."""


def draw_baselines(ax: Any, accuracy: dict[str, float]) -> None:
    """Each surface baseline's accuracy as a horizontal line: what the prompts' text alone gives."""
    for name, acc in accuracy.items():
        colour, style = BASELINE_STYLES.get(name, ("0.6", ":"))
        ax.axhline(acc, color=colour, linestyle=style, linewidth=1.2,
                   label=f"{name.replace('_', '-')} baseline {acc:.3f} (text only)")


def _values(values: Sequence[float | None] | None) -> list[float]:
    return [math.nan if v is None else float(v) for v in (values or [])]


def plot_probe(
    report: ProbeReport,
    *,
    metric: str = "accuracy",
    classifiers: Sequence[str] | None = None,
    group_by: str | None = None,
    title: str | None = None,
) -> Figure:
    """A per-layer metric, one line per classifier (or per group of prompts).

    Args:
        report: from :func:`ihs_sight.probe` or :func:`ihs_sight.probe_transfer`.
        metric: ``accuracy``, ``f1``, ``roc_auc``, ``fpr``, ``fnr``; with ``group_by`` also
            ``positive_rate`` (e.g. the share of each jailbreak family flagged malicious).
        classifiers: which classifiers to draw (default: all; with ``group_by``: the first).
        group_by: ``label``, ``category`` or ``family``: one line per group of that kind,
            for one classifier (``accuracy`` or ``positive_rate`` within the group).
        title: figure title (default: derived from the report).

    Returns:
        A :class:`matplotlib.figure.Figure`; cv reports get a ±1 std band, accuracy plots a
        dashed line at the report's threshold, a marker at each classifier's first layer
        reaching it, and the surface baselines (bag-of-words, form only) as horizontal lines.
    """
    from ..errors import InputError

    if metric not in METRICS:
        raise InputError(f"metric must be one of {list(METRICS)}, got {metric!r}.")
    names = list(report.scores) if classifiers is None else list(classifiers)
    for name in names:
        if name not in report.scores:
            raise InputError(f"No classifier {name!r} in this report; it has {list(report.scores)}.")
    fig = Figure(figsize=(8 if group_by is None else 10.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    x = report.layers
    if group_by is not None:
        if metric not in ("accuracy", "positive_rate"):
            raise InputError("With group_by, metric must be 'accuracy' or 'positive_rate'.")
        if metric == "positive_rate" and report.positive is None:
            raise InputError("positive_rate needs a binary report (a positive class).")
        name = names[0]
        groups = [g for g in report.groups.values() if g.by == group_by]
        if not groups:
            kinds = sorted({g.by for g in report.groups.values()})
            raise InputError(f"This report has no {group_by!r} groups (it has {kinds}); pass group_by= to probe().")
        # Families are "<label>/<family>": one colour per family, one line style per label, so
        # a jailbreak family and the same wrapper around normal prompts read as a pair.
        keys = [g.name.split("/", 1) if "/" in g.name else ["", g.name] for g in groups]
        colours = {family: f"C{i % 10}" for i, family in enumerate(dict.fromkeys(k[1] for k in keys))}
        styles = {label: _LINESTYLES[i % len(_LINESTYLES)] for i, label in enumerate(dict.fromkeys(k[0] for k in keys))}
        for g, (label, family) in zip(groups, keys):
            values = g.accuracy[name] if metric == "accuracy" else (g.positive_rate or {})[name]
            ax.plot(x, values, marker=".", linewidth=1.2, color=colours[family], linestyle=styles[label],
                    label=f"{g.name} (n={g.n})")
        ylabel = f"{_TITLES[metric]} within group ({name})"
        default_title = f"Probe {_TITLES[metric]} per {group_by}, {report.evaluation} evaluation"
    else:
        if metric == "positive_rate":
            raise InputError("metric='positive_rate' is per group: pass group_by='label', 'category' or 'family'.")
        for name in names:
            s = report.scores[name]
            values = _values(getattr(s, metric))
            if not values:
                continue
            (line,) = ax.plot(x, values, marker=".", linewidth=1.5, label=name)
            std = _values(getattr(s, f"{metric}_std", None))
            if std:
                lo = [v - e for v, e in zip(values, std)]
                hi = [v + e for v, e in zip(values, std)]
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
            if metric == "accuracy" and s.first_layer is not None:
                ax.plot([s.first_layer], [values[x.index(s.first_layer)]], marker="o", markersize=8,
                        markerfacecolor="none", color=line.get_color())
        if metric == "accuracy":
            ax.axhline(report.threshold, color="0.4", linestyle="--", linewidth=1,
                       label=f"threshold {report.threshold:g}")
            draw_baselines(ax, report.baselines.accuracy if report.baselines is not None else {})
        ylabel = _TITLES[metric]
        default_title = f"Probe {_TITLES[metric]} per layer, {report.evaluation} evaluation"
    ax.set_xlabel(LAYER_AXIS_LABEL)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{default_title} ({report.n_train} train / {report.n_test} scored)")
    ax.set_ylim(-0.02, 1.02)
    step = 1 if len(x) <= 16 else (2 if len(x) <= 40 else 5)
    ax.set_xticks([v for v in x if v % step == 0] or x)
    ax.grid(alpha=0.3)
    if len(ax.get_lines()) > 6:
        ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize="small", loc="lower right")
    return fig
