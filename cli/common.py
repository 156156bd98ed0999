"""Shared CLI plumbing: typed options, model loading, output writing and error-to-exit-code mapping.

Exit codes: 0 success; 2 bad arguments or input files; 3 model not found or not loadable;
4 remote/network failure; 1 anything else. Errors print one line on stderr (a traceback only
with ``--debug``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

EXIT_CODES_HELP = "Exit codes: 0 ok, 2 bad arguments or input files, 3 model not found or not loadable, " \
                  "4 remote/network failure, 1 anything else."

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="'default', 'default-aligned', a local path, a .gguf file or a Hub id.")]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 or auto (default: CUDA if available).")]
DtypeOpt = Annotated[str | None, typer.Option(help="float32, bfloat16 or float16 (default: float32 on CPU).")]
RemoteOpt = Annotated[bool, typer.Option("--remote", help="Run traces on NDIF (needs NDIF_API_KEY).")]
HostOpt = Annotated[str | None, typer.Option(help="NDIF host (default: $NDIF_HOST or nnsight's).")]
BatchOpt = Annotated[int, typer.Option(min=1, help="Prompts per forward pass.")]
SeedOpt = Annotated[int, typer.Option(help="Random seed for splits and classifiers.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the machine-readable result on stdout.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
PromptsOpt = Annotated[str | None, typer.Option("--prompts", help="A .txt/.csv/.tsv/.jsonl/.json file or dataset; default: bundled.")]
LimitOpt = Annotated[int | None, typer.Option(min=1, help="Use at most this many prompts (seeded, label-balanced).")]


def out_option(command: str) -> Any:
    return typer.Option("--out", "-o", help=f"Output directory (default: ihs-out/{command}).")


F = TypeVar("F", bound=Callable[..., Any])


def exit_code(error: BaseException) -> int:
    """The documented exit code for an error."""
    from ihs_sight.errors import InputError, ModelLoadError, RemoteError

    if isinstance(error, (InputError, typer.BadParameter)):
        return 2
    if isinstance(error, ModelLoadError):
        return 3
    if isinstance(error, (RemoteError, ConnectionError, TimeoutError)):
        return 4
    return 1


def handle_errors(fn: F) -> F:
    """Turn exceptions into one stderr line and the documented exit code (traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(kwargs.get("debug", False))
        quiet = bool(kwargs.get("quiet", False))
        logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                            stream=sys.stderr)
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            typer.echo("error: interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as e:  # every failure becomes one line and a documented code
            if debug:
                raise
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(exit_code(e)) from None

    return wrapper  # type: ignore[return-value]


def load(model: str, device: str | None, dtype: str | None, remote: bool, host: str | None) -> Any:
    """Load the model named on the command line."""
    import ihs_sight as ihs

    return ihs.load_model(model, device=device, dtype=dtype, backend="remote" if remote else "local", host=host)


def load_data(prompts: str | None) -> Any:
    import ihs_sight as ihs

    return ihs.load_prompts(prompts)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: str | dict[str, Any]) -> Path:
    text = payload if isinstance(payload, str) else json.dumps(payload, indent=2, default=str)
    _atomic_write(path, text.encode("utf-8"))
    return path


def write_text(path: Path, text: str) -> Path:
    _atomic_write(path, text.encode("utf-8"))
    return path


def write_figure(path: Path, figure: Any) -> Path:
    import io

    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _atomic_write(path, buf.getvalue())
    return path


def finish(out: Path, files: list[Path], summary: str, payload: dict[str, Any], *, quiet: bool, as_json: bool) -> None:
    """Write summary.md, then report what was written (or print the JSON payload)."""
    files = files + [write_text(out / "summary.md", summary)]
    if as_json:
        typer.echo(json.dumps({**payload, "files": [str(f) for f in files]}, default=str))
    elif not quiet:
        typer.echo(summary)
        typer.echo("wrote: " + ", ".join(str(f) for f in files))
