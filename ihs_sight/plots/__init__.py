"""Matplotlib figures for every result type; the only place ihs-sight imports matplotlib.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot), so nothing here
needs a display or changes global state.
"""
