"""``ihs-sight extract | probe | lens | graft``: each parses, calls the library, writes files."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import finish, handle_errors, load, load_data, write_figure, write_text
from .options import (
    BandOpt,
    BatchOpt,
    ChatOpt,
    Classifier,
    ClassifiersOpt,
    DebugOpt,
    DeviceOpt,
    DtypeOpt,
    HostOpt,
    JsonOpt,
    LayersOpt,
    LimitOpt,
    Mode,
    ModelOpt,
    ModeOpt,
    NoCacheOpt,
    OutOpt,
    PromptsOpt,
    QuietOpt,
    RemoteOpt,
    SeedOpt,
    SystemOpt,
    TrustHostOpt,
)


class Split(str, Enum):
    train = "train"
    test = "test"
    all = "all"


def _subset(data: Any, split: Split, limit: int | None, seed: int) -> Any:
    if split != Split.all and any(p.split for p in data):
        data = data.select(split=split.value)
    if len(data) == 0:
        from ihs_sight.errors import InputError

        raise InputError(f"No prompts in split {split.value!r}.")
    return data.sample(limit, random_state=seed) if limit else data


@handle_errors
def extract_cmd(
    model: ModelOpt = "default",
    prompts: PromptsOpt = None,
    split: Annotated[Split, typer.Option(help="Canonical split of the bundled data to use.")] = Split.all,
    limit: LimitOpt = None,
    chat: ChatOpt = True,
    system_prompt: SystemOpt = None,
    no_cache: NoCacheOpt = False,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    remote: RemoteOpt = False,
    host: HostOpt = None,
    trust_host: TrustHostOpt = False,
    batch_size: BatchOpt = 16,
    pack: Annotated[int, typer.Option(help="Pack prompts end to end into rows of this many tokens instead of "
                                           "padding (0: off; 256 is the GPU setting). --batch-size then counts rows.")] = 0,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile each block for this run (local models; "
                                                             "pays off on a GPU with --pack).")] = False,
    seed: SeedOpt = 0,
    out: OutOpt = Path("ihs-out/extract"),
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    import ihs_sight as ihs

    data = _subset(load_data(prompts), split, limit, seed)
    m = load(model, device, dtype, remote, host, trust_host)
    states = ihs.extract(m, data, batch_size=batch_size, chat=chat, system_prompt=system_prompt,
                         cache=not no_cache, progress=not quiet, pack=pack if pack else False, compile=compile_)
    stem = states.save(out / "states")
    n, layers, d = states.states.shape
    summary = (f"# ihs-sight extract\n\n- model: `{m.name}` ({states.meta.model_class}, L={m.n_layers}, D={d})\n"
               f"- prompts: {n} ({', '.join(f'{k}={v}' for k, v in data.counts().items())})\n"
               f"- states: [{n}, {layers}, {d}] float32 -> `{stem}.safetensors`\n")
    finish(out, [stem.with_suffix(".json"), stem.with_suffix(".safetensors")], summary,
           {"command": "extract", "n_prompts": n, "shape": [n, layers, d]}, quiet=quiet, as_json=as_json)


def _labelled(data: Any, what: str) -> Any:
    from ihs_sight.errors import InputError

    if any(label is None for label in data.labels):
        raise InputError(f"{what}: every prompt needs a label (use a label column, or --prompts a labelled file).")
    return data


@handle_errors
def probe_cmd(
    model: ModelOpt = "default",
    prompts: PromptsOpt = None,
    classifiers: ClassifiersOpt = None,
    jailbreaks: Annotated[int, typer.Option(min=0, help="Jailbreak and wrapped-normal prompts per family to score "
                                                         "(bundled data only; 0 skips the transfer).")] = 4,
    limit: LimitOpt = None,
    cv: Annotated[int | None, typer.Option(min=2, help="k-fold cross-validation instead of the canonical split.")] = None,
    chat: ChatOpt = True,
    system_prompt: SystemOpt = None,
    no_cache: NoCacheOpt = False,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    remote: RemoteOpt = False,
    host: HostOpt = None,
    trust_host: TrustHostOpt = False,
    batch_size: BatchOpt = 16,
    seed: SeedOpt = 0,
    out: OutOpt = Path("ihs-out/probe"),
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    import ihs_sight as ihs

    names = [c.value for c in classifiers or list(Classifier)]
    data = load_data(prompts)
    m = load(model, device, dtype, remote, host, trust_host)
    kw: dict[str, Any] = dict(batch_size=batch_size, chat=chat, system_prompt=system_prompt, cache=not no_cache,
                              progress=not quiet)
    base = _labelled(data.normal + data.malicious if prompts is None else data, "probe")
    if limit:
        base = base.sample(limit, random_state=seed)
    files: list[Path] = []
    transfer = None
    if prompts is None and cv is None:
        train_states = ihs.extract(m, base.train, **kw)
        test_states = ihs.extract(m, base.test, **kw)
        report = ihs.probe(train_states, classifiers=names, test=test_states, random_state=seed, progress=not quiet)
        if jailbreaks:
            sample = data.jailbreak + data.wrapped_normal
            per_family = [sample.select(label=label, family=f).head(jailbreaks)
                          for label in ("jailbreak", "normal") for f in sorted(set(data.jailbreak.families))]
            transfer = report.transfer(ihs.extract(m, ihs.PromptSet.concat(per_family), **kw), progress=not quiet)
    else:
        states = ihs.extract(m, base, **kw)
        report = ihs.probe(states, classifiers=names, cv=cv, random_state=seed, progress=not quiet)
    files.append(write_text(out / "report.json", report.model_dump_json(indent=2)))
    files.append(write_figure(out / "accuracy.png", report.plot()))
    lines = ["# ihs-sight probe", "", f"- model: `{m.name}` (L={m.n_layers})", "", "```", report.summary(), "```"]
    payload: dict[str, Any] = {"command": "probe", "best_layer": report.best_layer, "first_layer": report.first_layer}
    if transfer is not None:
        files.append(write_text(out / "transfer.json", transfer.model_dump_json(indent=2)))
        layer = report.first_layer if report.first_layer is not None else report.best_layer
        lines += ["", f"## Transfer to jailbreaks (probes never saw one), layer {layer}", ""]
        for key, group in sorted(transfer.groups.items()):
            idx = transfer.layers.index(layer)
            accs = {name: acc[idx] for name, acc in group.accuracy.items()}
            lines.append(f"- {key} (n={group.n}): " + ", ".join(f"{k} {v:.2f}" for k, v in accs.items()))
        payload["transfer_layer"] = layer
    finish(out, files, "\n".join(lines) + "\n", payload, quiet=quiet, as_json=as_json)


@handle_errors
def lens_cmd(
    model: ModelOpt = "default",
    prompts: PromptsOpt = None,
    top_k: Annotated[int, typer.Option(min=1, help="Tokens kept per prompt and layer.")] = 5,
    limit: Annotated[int, typer.Option(min=1, help="Prompts per label (seeded sample).")] = 24,
    band: BandOpt = None,
    chat: ChatOpt = True,
    system_prompt: SystemOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    remote: RemoteOpt = False,
    host: HostOpt = None,
    trust_host: TrustHostOpt = False,
    batch_size: BatchOpt = 16,
    seed: SeedOpt = 0,
    out: OutOpt = Path("ihs-out/lens"),
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    import ihs_sight as ihs

    data = load_data(prompts)
    groups: dict[str, Any]
    if prompts is None:
        groups = {"malicious": data.test.malicious, "normal": data.test.normal}
    else:
        labels = sorted({str(p.label) for p in data})
        groups = {label: data.filter(lambda p, label=label: str(p.label) == label) for label in labels}
    groups = {k: v.sample(limit, random_state=seed) for k, v in groups.items()}
    m = load(model, device, dtype, remote, host, trust_host)
    files: list[Path] = []
    profiles, consistencies = [], []
    lines = ["# ihs-sight lens", "", f"- model: `{m.name}` (L={m.n_layers}), top-{top_k}", ""]
    payload: dict[str, Any] = {"command": "lens", "groups": {}}
    for name, subset in groups.items():
        lens = ihs.logit_lens(m, subset, top_k=top_k, batch_size=batch_size, chat=chat, system_prompt=system_prompt,
                              progress=not quiet)
        stem = lens.save(out / f"lens_{name}")
        files += [stem.with_suffix(".json"), stem.with_suffix(".safetensors")]
        files.append(write_figure(out / f"heatmap_{name}.png", lens.heatmap(title=f"{m.name}: {name} prompts")))
        profile, tic = lens.emotions(name=name), lens.consistency(band=band, name=name)
        profiles.append(profile)
        consistencies.append(tic)
        files.append(write_text(out / f"emotions_{name}.json", profile.model_dump_json(indent=2)))
        files.append(write_text(out / f"consistency_{name}.json", tic.model_dump_json(indent=2)))
        means = profile.band_mean(tic.band)
        lines.append(f"- {name} (n={len(subset)}): consistency over layers {tic.band[0]}-{tic.band[1]} = "
                     f"{tic.band_mean:.3f}; mean emotion mass " + ", ".join(f"{k} {v:.4f}" for k, v in means.items()))
        payload["groups"][name] = {"n": len(subset), "consistency": tic.band_mean, "band": list(tic.band),
                                   "emotion_mass": means}
    files.append(write_figure(out / "emotions.png", profiles[0].plot(*profiles[1:], title=f"{m.name}: emotion mass")))
    files.append(write_figure(out / "consistency.png", consistencies[0].plot(*consistencies[1:])))
    finish(out, files, "\n".join(lines) + "\n", payload, quiet=quiet, as_json=as_json)


@handle_errors
def graft_cmd(
    model: ModelOpt = "default",
    layer: Annotated[int | None, typer.Option(min=0, help="Graft at this layer (default: sweep over layers).")] = None,
    layers: LayersOpt = None,
    mode: ModeOpt = Mode("replace"),
    scale: Annotated[float, typer.Option(help="Scale of the source vector for --mode add.")] = 1.0,
    targets: Annotated[int, typer.Option(min=1, help="Test-split malicious prompts to graft onto.")] = 8,
    sources: Annotated[int, typer.Option(min=1, help="Train-split normal prompts whose mean state is grafted.")] = 32,
    generate: Annotated[int, typer.Option(min=0, help="Greedy tokens to generate before/after (0: none).")] = 0,
    chat: ChatOpt = True,
    system_prompt: SystemOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    remote: RemoteOpt = False,
    host: HostOpt = None,
    trust_host: TrustHostOpt = False,
    batch_size: BatchOpt = 8,
    seed: SeedOpt = 0,
    out: OutOpt = Path("ihs-out/graft"),
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    import ihs_sight as ihs

    data = load_data(None)
    target_set = data.test.malicious.sample(targets, random_state=seed)
    source_set = data.train.normal.sample(sources, random_state=seed)
    m = load(model, device, dtype, remote, host, trust_host)
    kw: dict[str, Any] = dict(mode=mode.value, scale=scale, generate=generate or None, batch_size=batch_size, chat=chat,
                              system_prompt=system_prompt, progress=not quiet)
    files: list[Path] = []
    lines = ["# ihs-sight graft", "", f"- model: `{m.name}`; mean state of {len(source_set)} normal prompts grafted "
             f"onto {len(target_set)} malicious prompts, mode {mode.value}", ""]
    payload: dict[str, Any] = {"command": "graft"}
    if layer is not None:
        result = ihs.graft(m, target_set, source_set, layer=layer, **kw)
        files.append(write_text(out / "graft.json", result.model_dump_json(indent=2)))
        files.append(write_figure(out / "graft.png", result.plot()))
        lines.append(f"- layer {layer}: top-1 flip rate {result.flip_rate:.2f}, negative->non-negative "
                     f"{result.neg_to_nonneg_rate:.2f}, negative mass {result.mean_neg_mass_before:.4f} -> "
                     f"{result.mean_neg_mass_after:.4f}")
        if result.refusal_rate_after is not None:
            lines.append(f"- refusal rate {result.refusal_rate_before:.2f} -> {result.refusal_rate_after:.2f}")
        payload.update(layer=layer, flip_rate=result.flip_rate, refusal_rate_after=result.refusal_rate_after)
    else:
        chosen = list(range(2, m.n_layers + 1, 2)) if layers is None else layers
        sweep = ihs.graft_sweep(m, target_set, source_set, layers=chosen, **kw)
        files.append(write_text(out / "sweep.json", sweep.model_dump_json(indent=2)))
        files.append(write_figure(out / "sweep.png", sweep.plot()))
        for i, lay in enumerate(sweep.layers):
            ref = "" if sweep.refusal_rate is None else f", refusal {sweep.refusal_rate[i]:.2f}"
            lines.append(f"- layer {lay}: flip {sweep.flip_rate[i]:.2f}, neg->non-neg {sweep.neg_to_nonneg_rate[i]:.2f}"
                         f", negative mass {sweep.mean_neg_mass[i]:.4f}{ref}")
        payload.update(layers=sweep.layers, flip_rate=sweep.flip_rate, refusal_rate=sweep.refusal_rate)
    finish(out, files, "\n".join(lines) + "\n", payload, quiet=quiet, as_json=as_json)
