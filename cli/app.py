"""The ``ihs-sight`` command: a thin Typer shell over the ihs_sight library."""

from __future__ import annotations

from typing import Annotated

import typer

from . import analyses, inspect_cmds, steer_cmds
from .common import EXIT_CODES_HELP
from .guard_cmds import guard_app

app = typer.Typer(
    name="ihs-sight",
    help="Explain LLM safety through intermediate hidden states: probes, logit lens, logit grafting.\n\n"
    + EXIT_CODES_HELP,
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)

COMMANDS = {
    "probe": ("The main job: extract states, fit per-layer probes, write the accuracy plot and report.",
              analyses.probe_cmd),
    "lens": ("Logit lens: top-tokens heatmap, emotion curves and Top-K Intermediate Consistency.", analyses.lens_cmd),
    "graft": ("Logit grafting at one layer or a sweep over layers.", analyses.graft_cmd),
    "directions": ("Refusal and harmfulness directions (difference in means), saved for steer.",
                   steer_cmds.directions_cmd),
    "steer": ("Generate with a direction ablated or added, beside the clean run; example replies in summary.md.",
              steer_cmds.steer_cmd),
    "extract": ("Compute and cache last-token hidden states.", analyses.extract_cmd),
    "models": ("List the bundled models and supported architectures.", inspect_cmds.models_cmd),
    "data": ("List the bundled prompt sets, or inspect a prompt file.", inspect_cmds.data_cmd),
}
for _name, (_help, _fn) in COMMANDS.items():
    app.command(_name, help=f"{_help}\n\n{EXIT_CODES_HELP}", short_help=_help)(_fn)

app.add_typer(guard_app, name="guard", short_help="Early-exit safety guard: fit a guard, score prompts.")


@app.command("demo", help="Launch the web demo (binds 127.0.0.1 unless --host says otherwise). It serves the "
             "bundled models only; --allow-models lets web clients load others.\n\n" + EXIT_CODES_HELP,
             short_help="Launch the web demo on 127.0.0.1.")
def demo_cmd(
    host: Annotated[str, typer.Option(help="Interface to bind. Anything but loopback lets whoever reaches the port "
                                           "run models on this machine (a warning says so).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: a free one).")] = 7860,
    allow_models: Annotated[list[str] | None, typer.Option(
        "--allow-models", metavar="PATTERN",
        help="Let web clients load models whose name (local path or Hub id) matches this fnmatch pattern, "
             "e.g. 'HuggingFaceTB/*' or '/data/models/*' (quote it); repeat it or give a comma list. "
             "Default: the bundled models only.")] = None,
) -> None:
    try:
        from ihs_sight_demo.app import exposure_warning, free_port, launch
    except ImportError as e:
        typer.echo(f"error: the demo is not available: {e}", err=True)
        raise typer.Exit(1) from None
    patterns = [p.strip() for value in allow_models or [] for p in value.split(",") if p.strip()]
    port = port or free_port(host)
    warning = exposure_warning(host, port)
    if warning:
        typer.echo(warning, err=True)  # one line on stderr; launch() would log it again
    launch(host=host, port=port, allow_models=patterns, warn=False)


def main() -> None:
    """Console-script entry point: usage errors (bad option values, unknown commands) as one line on stderr, exit 2."""
    import sys

    # Typer raises click's exceptions, from click itself or from the copy newer Typer versions vendor.
    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
    try:
        code = app(standalone_mode=False)
    except usage_error as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as before
            e.show()
        else:
            typer.echo(f"error: {' '.join(e.format_message().split())}", err=True)  # one line, always
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["app", "main"]
