"""The ihs-sight web demo: a Gradio app over the library (installed as ``ihs_sight_demo``).

``ihs-sight demo`` calls :func:`ihs_sight_demo.app.launch`; tests build the app with
:func:`ihs_sight_demo.app.build_app`. Models, fitted probes and test-split reports live in a
:class:`ihs_sight_demo.state.Workbench`, shared by every browser session of the process.

Gradio is imported only when the app is used, so importing this package stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Workbench", "build_app", "launch"]


def __getattr__(name: str) -> Any:
    if name in ("build_app", "launch"):
        from . import app

        return getattr(app, name)
    if name == "Workbench":
        from .state import Workbench

        return Workbench
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
