"""Every shared option of the ``ihs-sight`` commands, declared once as an ``Annotated`` type.

A command takes an option by naming its type, with the default in its own signature::

    def extract_cmd(model: ModelOpt = "default", device: DeviceOpt = None, ...) -> None:

so each option's flag, help, type and parser live here, and ``--help`` lists them in panels:
Model, Prompts, Run and Output. Options that only one command has stay in that command.

Choices are Enum types with the library's values (``graft.MODES``, ``steer.MODES``, ``guard.POOLS``,
``probe.CLASSIFIERS``; a test keeps them equal), so Typer lists them in ``--help`` and refuses
anything else (exit 2, one line on stderr). They are written out here rather than read from the
library so that ``--help`` and usage errors need no import of torch (0.3 s instead of 3.7 s). Lists (``--layers``,
``--classifiers``) take the option repeated or a comma list; ``--band`` takes ``LO-HI``.
Ranges that depend on the model (a layer index in ``0..L``) are the library's to check.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NamedTuple, TypeVar

import typer

T = TypeVar("T")

MODEL, PROMPTS, RUN, OUTPUT = "Model", "Prompts", "Run", "Output"
"""The ``--help`` panels."""


class Mode(str, Enum):
    """``graft --mode`` (the library's ``graft.MODES``)."""

    replace = "replace"
    add = "add"
    seed = "seed"


class SteerMode(str, Enum):
    """``steer --mode`` (the library's ``steer.MODES``)."""

    ablate = "ablate"
    add = "add"
    none = "none"


class Pool(str, Enum):
    """``guard fit --pool`` (the library's ``guard.POOLS``)."""

    last = "last"
    user_last = "user_last"
    mean = "mean"
    max = "max"
    topk = "topk"


class Folds(str, Enum):
    """``guard fit --folds`` (the library's ``guard.FOLDS``)."""

    stratified = "stratified"
    family = "family"


class Classifier(str, Enum):
    """``--classifier(s)`` (the library's ``probe.CLASSIFIERS``)."""

    svm = "svm"
    mlp = "mlp"
    logreg = "logreg"


class Band(NamedTuple):
    """A layer band ``lo..hi`` (both included), as the library's ``band=`` takes it."""

    lo: int
    hi: int


# ---------------------------------------------------------------------------- parsers


def _comma_list(item: Callable[[str], T], what: str) -> Callable[[str], list[T]]:
    """One occurrence of a list option, ``a,b,c``, parsed item by item (empty items skipped)."""

    def parse(text: str) -> list[T]:
        try:
            return [item(part.strip()) for part in str(text).split(",") if part.strip()]
        except ValueError:
            raise typer.BadParameter(f"expected {what} separated by commas, got {text!r}.") from None

    return parse


def _flatten(value: list[list[T]] | None) -> list[T] | None:
    """The occurrences of a list option joined: ``--layers 4 --layers 8,12`` is ``[4, 8, 12]``."""
    return None if value is None else [x for part in value for x in part]


def _classifier(name: str) -> Any:
    try:
        return Classifier(name)
    except ValueError:
        raise typer.BadParameter(f"{name!r} is not one of {', '.join(c.value for c in Classifier)}.") from None


def _band(text: str) -> Band:
    lo, _, hi = str(text).partition("-")
    try:
        return Band(int(lo), int(hi))
    except ValueError:
        raise typer.BadParameter(f"expected LO-HI, e.g. 10-20, got {text!r}.") from None


# ---------------------------------------------------------------------------- model

ModelOpt = Annotated[str, typer.Option("--model", "-m", rich_help_panel=MODEL,
                                       help="'default', 'default-aligned', 'gemma3-270m', 'gemma3-270m-aligned', a local path, "
                                            "a .gguf file or a Hub id.")]
DeviceOpt = Annotated[str | None, typer.Option(rich_help_panel=MODEL,
                                               help="cpu, cuda, cuda:1 or auto (default: CUDA if available).")]
# Not a choice: the library also takes fp32, bf16, fp16 and half, and checks the name itself.
DtypeOpt = Annotated[str | None, typer.Option(rich_help_panel=MODEL,
                                              help="float32, bfloat16 or float16 (default: float32 on CPU).")]
RemoteOpt = Annotated[bool, typer.Option("--remote", rich_help_panel=MODEL,
                                         help="Run traces on NDIF (needs NDIF_API_KEY).")]
HostOpt = Annotated[str | None, typer.Option(rich_help_panel=MODEL, help="NDIF host (default: $NDIF_HOST or nnsight's).")]
TrustHostOpt = Annotated[bool, typer.Option(
    "--trust-host", rich_help_panel=MODEL,
    help="Allow a --host / $NDIF_HOST other than NDIF's own (https, or http on loopback): nnsight unpickles "
         "a host's results, so only pass it for a host you trust to run code here.")]

# ---------------------------------------------------------------------------- prompts

PromptsOpt = Annotated[str | None, typer.Option("--prompts", rich_help_panel=PROMPTS,
                                                help="A .txt/.csv/.tsv/.jsonl/.json file or dataset; default: bundled.")]
LimitOpt = Annotated[int | None, typer.Option(min=1, rich_help_panel=PROMPTS,
                                              help="Use at most this many prompts (seeded, label-balanced).")]
ChatOpt = Annotated[bool, typer.Option("--chat/--raw", rich_help_panel=PROMPTS,
                                       help="Apply the chat template (--raw for base models).")]
SystemOpt = Annotated[str | None, typer.Option("--system-prompt", rich_help_panel=PROMPTS,
                                               help="System prompt (default: the template's own).")]

# ---------------------------------------------------------------------------- run

BatchOpt = Annotated[int, typer.Option(min=1, rich_help_panel=RUN, help="Prompts per forward pass.")]
SeedOpt = Annotated[int, typer.Option(rich_help_panel=RUN, help="Random seed for splits and classifiers.")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", rich_help_panel=RUN,
                                          help="Neither read nor write the states cache.")]
ModeOpt = Annotated[Mode, typer.Option(rich_help_panel=RUN, help="How the source state is grafted.")]
PoolOpt = Annotated[Pool, typer.Option(rich_help_panel=RUN, help=(
    "How the layer is read: 'mean' over the prompt's tokens, the 'last' token, the last token of the user's "
    "message ('user_last'), or a per-token probe pooled by 'max' / 'topk'."))]
FoldsOpt = Annotated[Folds, typer.Option(rich_help_panel=RUN, help=(
    "'stratified' k-fold, or 'family': each wrapper family one fold (layer and threshold chosen on wrappers the "
    "probe never saw)."))]
ClassifierOpt = Annotated[Classifier, typer.Option(rich_help_panel=RUN, help="The probe at the guard layer.")]
ClassifiersOpt = Annotated[list[Classifier] | None, typer.Option(
    parser=_comma_list(_classifier, "classifier names"), callback=_flatten, rich_help_panel=RUN, show_default=False,
    help=f"Probes to fit: repeat the option or give a comma list (default: all, {','.join(c.value for c in Classifier)}).")]
LayersOpt = Annotated[list[int] | None, typer.Option(
    parser=_comma_list(int, "layer indices"), callback=_flatten, metavar="N[,N...]", rich_help_panel=RUN,
    help="Sweep layers: repeat the option or give a comma list, e.g. 4,8,12,16 (default: every 2nd block).")]
BandOpt = Annotated[Band | None, typer.Option(parser=_band, metavar="LO-HI", rich_help_panel=RUN,
                                              help="Layer band for consistency and emotion means, e.g. 10-20.")]

# ---------------------------------------------------------------------------- output

OutOpt = Annotated[Path, typer.Option("--out", "-o", rich_help_panel=OUTPUT, help="Output directory.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", rich_help_panel=OUTPUT,
                                        help="No progress bars, summaries, warnings or library logs.")]
JsonOpt = Annotated[bool, typer.Option("--json", rich_help_panel=OUTPUT,
                                       help="Print the machine-readable result on stdout.")]
DebugOpt = Annotated[bool, typer.Option("--debug", rich_help_panel=OUTPUT, help="Show tracebacks.")]
