"""Shared CLI plumbing: model loading, output writing, quiet runs and error-to-exit-code mapping.

The options themselves are declared once, in :mod:`.options`. Files are written through
:mod:`ihs_sight.io` (atomically: a reader sees the old file or the new one, never half of one).

Exit codes: 0 success; 2 bad arguments or input files; 3 model not found or not loadable;
4 remote/network failure; 1 anything else. Errors print one line on stderr (a traceback only
with ``--debug``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import typer

EXIT_CODES_HELP = "Exit codes: 0 ok, 2 bad arguments or input files, 3 model not found or not loadable, " \
                  "4 remote/network failure, 1 anything else."

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


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Third-party output off while a ``--quiet`` command runs, and back on after it.

    transformers' logs and its progress bars ("Loading weights"), the Hub's download bars,
    Python warnings (FutureWarning, UserWarning, ...) and log records below ERROR from any
    logger but ihs_sight's own.
    """
    hf_logging: Any = importlib.import_module("transformers.utils.logging")  # its functions are unannotated

    root, ours = logging.getLogger(), logging.getLogger("ihs_sight")
    verbosity, bars, root_level, our_level = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(),
                                              root.level, ours.level)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()  # the Hub's download bars too
            root.setLevel(logging.ERROR)
            ours.setLevel(logging.WARNING)  # the library's own warnings still show
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        root.setLevel(root_level)
        ours.setLevel(our_level)


def handle_errors(fn: F) -> F:
    """Turn exceptions into one stderr line and the documented exit code (traceback with --debug).

    With ``--quiet``, the command also runs under :func:`quiet_libraries`.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(kwargs.get("debug", False))
        quiet = bool(kwargs.get("quiet", False))
        logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                            stream=sys.stderr)
        try:
            with quiet_libraries() if quiet else contextlib.nullcontext():
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


def load(model: str, device: str | None, dtype: str | None, remote: bool, host: str | None,
         trust_host: bool = False) -> Any:
    """Load the model named on the command line (``--trust-host``: a host other than NDIF's)."""
    import ihs_sight as ihs

    return ihs.load_model(model, device=device, dtype=dtype, backend="remote" if remote else "local",
                          host=host, trust_host=trust_host)


def load_data(prompts: str | None) -> Any:
    import ihs_sight as ihs

    return ihs.load_prompts(prompts)


def write_text(path: Path, text: str) -> Path:
    """Write a text file atomically (:func:`ihs_sight.io.write_text`; imported here, not at the
    module's import, so ``--help`` and usage errors need no torch)."""
    from ihs_sight import io

    return io.write_text(path, text)


def write_figure(path: Path, figure: Any) -> Path:
    """Save a matplotlib figure as a PNG, atomically."""
    import io as std_io

    from ihs_sight import io

    buf = std_io.BytesIO()
    figure.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return io.write_bytes(path, buf.getvalue())


def finish(out: Path, files: list[Path], summary: str, payload: dict[str, Any], *, quiet: bool, as_json: bool) -> None:
    """Write summary.md, then report what was written (or print the JSON payload)."""
    files = files + [write_text(out / "summary.md", summary)]
    if as_json:
        typer.echo(json.dumps({**payload, "files": [str(f) for f in files]}, default=str))
    elif not quiet:
        typer.echo(summary)
        typer.echo("wrote: " + ", ".join(str(f) for f in files))
