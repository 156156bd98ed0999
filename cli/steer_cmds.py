"""``ihs-sight directions | steer``: the refusal and harmfulness directions, and steering along one.

``directions`` computes both directions with the library's defaults (bundled train split) and
saves them; ``steer`` runs test-split prompts clean and steered on the same path and shows the
replies side by side. The library steers inside a trace only and never writes modified weights.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import finish, handle_errors, load, load_data, write_figure, write_text
from .options import (
    BatchOpt,
    DebugOpt,
    DeviceOpt,
    DtypeOpt,
    HostOpt,
    JsonOpt,
    LayersOpt,
    ModelOpt,
    OutOpt,
    QuietOpt,
    RemoteOpt,
    SeedOpt,
    SteerMode,
    SystemOpt,
    TrustHostOpt,
)

EXAMPLES = 3
"""Replies shown before and after in ``summary.md``."""
PREVIEW = 160
"""Characters of each example reply shown."""


class Label(str, Enum):
    """Which test-split prompts ``steer`` runs."""

    malicious = "malicious"
    normal = "normal"
    jailbreak = "jailbreak"


def _preview(text: str | None) -> str:
    one_line = " ".join((text or "").split())
    return one_line if len(one_line) <= PREVIEW else one_line[:PREVIEW - 3] + "..."


@handle_errors
def directions_cmd(
    model: ModelOpt = "default-aligned",
    n_train: Annotated[int, typer.Option(min=2, help="Train-split prompts per side for the means.")] = 64,
    n_val: Annotated[int, typer.Option(min=1, help="Held-out train-split prompts per side for choosing.")] = 8,
    system_prompt: SystemOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    remote: RemoteOpt = False,
    host: HostOpt = None,
    trust_host: TrustHostOpt = False,
    batch_size: BatchOpt = 8,
    seed: SeedOpt = 0,
    out: OutOpt = Path("ihs-out/directions"),
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    import ihs_sight as ihs

    m = load(model, device, dtype, remote, host, trust_host)
    kw: dict[str, Any] = dict(n_train=n_train, n_val=n_val, system_prompt=system_prompt, batch_size=batch_size,
                              random_state=seed, progress=not quiet)
    refusal = ihs.refusal_direction(m, **kw)
    harm = ihs.harmfulness_direction(m, **kw)
    cosines = ihs.direction_cosines(refusal, harm)
    files = [refusal.save(out / "refusal"), harm.save(out / "harmfulness")]
    files.append(write_text(out / "cosines.json", json.dumps({"cosine_per_layer": cosines}, indent=1)))
    figure = _cosine_figure(cosines)
    files.append(write_figure(out / "cosines.png", figure))
    lines = ["# ihs-sight directions", "",
             f"- model: `{m.name}`; {n_train} + {n_val} train-split prompts per side",
             (f"- refusal direction: layer {refusal.layer}, position {refusal.position}, norm {refusal.norm:.2f} "
              f"({len(refusal.candidates)} candidates scored; all in refusal.json)"),
             f"- harmfulness direction: layer {harm.layer}, position {harm.position}, norm {harm.norm:.2f}",
             f"- cosine of the two at the refusal layer: {cosines[refusal.layer]:.3f}",
             "", f"Steer with: `ihs-sight steer --model {model} --direction {out / 'refusal'} --mode ablate`"]
    payload = {"command": "directions", "refusal": {"layer": refusal.layer, "position": refusal.position},
               "harmfulness": {"layer": harm.layer, "position": harm.position}, "cosine_per_layer": cosines}
    finish(out, [Path(f) for f in files], "\n".join(lines) + "\n", payload, quiet=quiet, as_json=as_json)


def _cosine_figure(cosines: list[float]) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    ax.plot(range(len(cosines)), cosines, marker="o", markersize=3)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set(xlabel="layer", ylabel="cosine", title="refusal vs harmfulness direction")
    fig.tight_layout()
    return fig


@handle_errors
def steer_cmd(
    mode: Annotated[SteerMode, typer.Option(help="ablate: project the direction out everywhere; add: add it at "
                                            "its layer (or --layers); none: the clean run alone.")],
    model: ModelOpt = "default-aligned",
    direction: Annotated[Path | None, typer.Option(
        help="A direction saved by `ihs-sight directions` (the path without .json); default: compute the "
             "refusal direction now (minutes on a CPU).")] = None,
    label: Annotated[Label, typer.Option(help="Which test-split prompts to run.")] = Label.malicious,
    limit: Annotated[int, typer.Option(min=1, help="How many of them (sampled with --seed).")] = 8,
    scale: Annotated[float | None, typer.Option(
        help="--mode add: the multiple of the unit direction added (default: the direction's norm).")] = None,
    layers: LayersOpt = None,
    generate: Annotated[int, typer.Option(min=1, help="Greedy tokens generated per prompt.")] = 24,
    strict: Annotated[bool, typer.Option(help="Refuse a direction computed on other weights.")] = False,
    system_prompt: SystemOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    remote: RemoteOpt = False,
    host: HostOpt = None,
    trust_host: TrustHostOpt = False,
    batch_size: BatchOpt = 8,
    seed: SeedOpt = 0,
    out: OutOpt = Path("ihs-out/steer"),
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    import ihs_sight as ihs

    saved = ihs.Direction.load(direction) if direction is not None else None  # bad files fail before any load
    data = load_data(None)
    pool = {Label.malicious: data.test.malicious, Label.normal: data.test.normal, Label.jailbreak: data.jailbreak}
    prompts = pool[label].sample(limit, random_state=seed)
    m = load(model, device, dtype, remote, host, trust_host)
    d = saved if saved is not None else ihs.refusal_direction(
        m, system_prompt=system_prompt, batch_size=batch_size, random_state=seed, progress=not quiet)
    kw: dict[str, Any] = dict(generate=generate, system_prompt=system_prompt, batch_size=batch_size, strict=strict,
                              progress=not quiet)
    clean = ihs.steer(m, prompts, d, mode="none", **kw)
    runs = {"none": clean}
    if mode != SteerMode.none:
        runs[mode.value] = ihs.steer(m, prompts, d, mode=mode.value, scale=scale, layers=layers, **kw)
    files = [write_text(out / "steer.json", json.dumps({k: r.model_dump(mode="json") for k, r in runs.items()},
                                                       indent=1))]
    if direction is None:
        files.append(Path(d.save(out / "refusal")))
    steered = runs[mode.value]
    lines = ["# ihs-sight steer", "",
             f"- model: `{m.name}`; {len(prompts)} test-split {label.value} prompts, {generate} new tokens",
             f"- direction: {d.kind}, layer {d.layer}, position {d.position}"
             + ("" if direction is None else f" (from `{direction}`)"),
             f"- judge: `{clean.meta.judge}`"]
    for name, result in runs.items():
        lines.append(f"- {name}: refusal rate {result.refusal_rate:.2f}, next-token negative mass "
                     f"{result.mean_neg_mass:.4f}")
    lines += ["", f"## Replies, clean -> {mode.value}", ""]
    texts_before = clean.texts or []
    texts_after = steered.texts or []
    for i in range(min(EXAMPLES, len(prompts))):
        lines += [f"**{_preview(prompts.texts[i])}**", "", f"- clean: {_preview(texts_before[i])}"]
        if mode != SteerMode.none:
            lines.append(f"- {mode.value}: {_preview(texts_after[i])}")
        lines.append("")
    payload = {"command": "steer", "mode": mode.value, "label": label.value, "n": len(prompts),
               "refusal_rate": {k: r.refusal_rate for k, r in runs.items()}}
    finish(out, files, "\n".join(lines), payload, quiet=quiet, as_json=as_json)
