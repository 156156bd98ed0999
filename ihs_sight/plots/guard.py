"""Figures for the early-exit guard: the layer search of :meth:`ihs_sight.guard.Guard.fit`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from matplotlib.figure import Figure

from .probe import LAYER_AXIS_LABEL, draw_baselines

if TYPE_CHECKING:
    from ..guard import GuardFitReport


def layer_search_plot(report: GuardFitReport, title: str | None = None) -> Figure:
    """Out-of-fold accuracy of every searched layer, with the target and the chosen layer marked.

    Args:
        report: ``Guard.fit``'s report (``guard.report``).
        title: figure title (default: ``"guard layer search"``).

    Returns:
        A :class:`matplotlib.figure.Figure`: one line per ``C`` tried (one line for the MLP),
        a dashed line at ``target_accuracy``, a vertical line at the guard's layer and the surface
        baselines (bag-of-words, form only) as horizontal lines.
    """
    fig = Figure(figsize=(6.4, 3.6), layout="tight")
    ax = fig.add_subplot()
    for c, accs in report.cv_accuracy_by_C.items():
        name = report.classifier if c == "None" else f"{report.classifier}, C={float(c):g}"
        ax.plot(report.cv_layers, accs, marker="o", ms=3,
                label=f"{name} ({report.cv}-fold x {report.cv_repeats}, out of fold)")
    ax.axhline(report.target_accuracy, color="grey", ls="--", lw=1, label=f"target {report.target_accuracy:g}")
    ax.axvline(report.layer, color="tab:red", lw=1, label=f"guard layer {report.layer}")
    draw_baselines(ax, report.cv_baselines.accuracy if report.cv_baselines is not None else {})
    ax.set_xlabel(LAYER_AXIS_LABEL)
    ax.set_ylabel("cross-validated accuracy")
    ax.set_title("guard layer search" if title is None else title)
    ax.legend(loc="lower right", fontsize=8)
    return fig
