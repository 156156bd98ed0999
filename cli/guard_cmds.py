"""``ihs-sight guard fit | score``: the early-exit guard from the shell."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from .common import EXIT_CODES_HELP, finish, handle_errors, load, load_data, write_figure, write_text
from .options import (
    BatchOpt,
    Classifier,
    ClassifierOpt,
    DebugOpt,
    DeviceOpt,
    DtypeOpt,
    Folds,
    FoldsOpt,
    HostOpt,
    JsonOpt,
    ModelOpt,
    OutOpt,
    Pool,
    PoolOpt,
    PromptsOpt,
    QuietOpt,
    RemoteOpt,
    SeedOpt,
    TrustHostOpt,
)

guard_app = typer.Typer(
    name="guard",
    help="Early-exit safety guard: flag malicious prompts from one early layer.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _layer(value: str) -> int | Literal["auto"]:
    from ihs_sight.errors import InputError

    if value == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise InputError(f"--layer must be 'auto' or a layer index, got {value!r}.") from None


@guard_app.command("fit", help="Fit a guard on labelled prompts (default: the bundled train split) and save it.\n\n"
                   + EXIT_CODES_HELP)
@handle_errors
def fit_cmd(
    model: ModelOpt = "default",
    prompts: PromptsOpt = None,
    layer: Annotated[str, typer.Option(help="'auto' (earliest layer meeting --target-accuracy) or a layer index.")] = "auto",
    target_accuracy: Annotated[float, typer.Option(help="Cross-validated accuracy the layer must reach.")] = 0.95,
    target_fpr: Annotated[float, typer.Option(help="False-positive rate the threshold is calibrated to.")] = 0.05,
    pool: PoolOpt = Pool("mean"),
    classifier: ClassifierOpt = Classifier("logreg"),
    cv: Annotated[int, typer.Option(min=2, help="Folds of the layer search.")] = 5,
    cv_repeats: Annotated[int, typer.Option(min=1, help="Times the folds are redrawn (accuracies averaged, calibration pooled).")] = 3,
    folds: FoldsOpt = Folds("stratified"),
    wrapped_train: Annotated[bool, typer.Option(
        "--wrapped-train/--no-wrapped-train",
        help="Also fit on the bundled wrapped train set (train requests in 7 wrapper families, both labels; "
             "bundled data only).")] = False,
    evaluate: Annotated[bool, typer.Option("--evaluate/--no-evaluate",
                                           help="Score the bundled test split and jailbreaks (bundled data only).")] = True,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    remote: RemoteOpt = False,
    host: HostOpt = None,
    trust_host: TrustHostOpt = False,
    batch_size: BatchOpt = 16,
    seed: SeedOpt = 0,
    out: OutOpt = Path("ihs-out/guard"),
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    import ihs_sight as ihs
    from ihs_sight.errors import InputError
    from ihs_sight.guard import Guard

    chosen = _layer(layer)
    data = load_data(prompts)
    if wrapped_train and prompts is not None:
        raise InputError("--wrapped-train adds the bundled wrapped train set; with --prompts, put wrapped prompts "
                         "(with a family) in your file instead.")
    if prompts is None:
        train = ihs.load_prompts(wrapped_train=True).train if wrapped_train else data.train.normal + data.train.malicious
    else:
        train = data
    m = load(model, device, dtype, remote, host, trust_host)
    guard = Guard.fit(m, train, layer=chosen, target_accuracy=target_accuracy, target_fpr=target_fpr,
                      pool=pool.value, classifier=classifier.value, cv=cv, cv_repeats=cv_repeats, folds=folds.value,
                      random_state=seed, batch_size=batch_size, progress=not quiet)
    bundle = guard.save(out / "guard")
    r = guard.report
    files = [bundle / "guard.json", write_text(out / "fit_report.json", r.model_dump_json(indent=2)),
             write_figure(out / "layers.png", r.plot(title=f"{m.name}: guard layer search"))]
    lines = ["# ihs-sight guard fit", "",
             (f"- model: `{m.name}` (L={m.n_layers}); guard reads layer {r.layer} ({r.layer / m.n_layers:.0%} of "
              f"the blocks), pool `{r.pool}`, {r.classifier}"),
             (f"- layer search: {r.cv}-fold accuracy ({r.cv_repeats} repeats) "
              f"{r.cv_accuracy[r.cv_layers.index(r.layer)]:.3f} "
              + ("(target met with one standard error to spare)" if r.target_met else
                 f"(no layer reached {r.target_accuracy:g} with a standard error to spare; earliest within one "
                 "standard error of the best)")),
             (f"- threshold {r.threshold:.4f} calibrated out of fold on {r.n_prompts} prompts: FPR "
              f"{r.calibration_fpr:.3f}, TPR {r.calibration_tpr:.3f}" + ("" if r.C is None else f"; C = {r.C:g}"))]
    wrapped_rows = [row for row in r.cv_by_family or [] if not row.group.endswith("/direct")]
    if wrapped_rows:
        lines += ["", f"## Out of fold per wrapper family ({r.folds} folds)", ""]
        lines += [f"- {row.group}: flagged {row.rate:.3f} (n={row.n})" for row in wrapped_rows]
    payload: dict[str, Any] = {"command": "guard fit", "layer": r.layer, "threshold": r.threshold,
                               "target_met": r.target_met, "bundle": str(bundle)}
    if evaluate and prompts is None:
        test = data.test.normal + data.test.malicious + data.jailbreak + data.wrapped_normal
        ev = guard.evaluate(test, batch_size=batch_size, progress=not quiet)
        files.append(write_text(out / "evaluation.json", ev.model_dump_json(indent=2)))
        lines += ["", "## Canonical test split", "",
                  (f"- malicious TPR {ev.tpr:.3f} (n={ev.n_malicious}), normal FPR {ev.fpr:.3f} "
                   f"(n={ev.n_normal}; look-alikes {ev.lookalike_fpr:.3f}, n={ev.n_lookalike})")]
        lines += [f"- {row.group}: flagged {row.rate:.3f} (n={row.n})" for row in ev.by_family]
        payload.update(tpr=ev.tpr, fpr=ev.fpr)
    finish(out, files, "\n".join(lines) + "\n", payload, quiet=quiet, as_json=as_json)


@guard_app.command("score", help="Score prompts with a saved guard (early exit at its layer).\n\n" + EXIT_CODES_HELP)
@handle_errors
def score_cmd(
    text: Annotated[list[str] | None, typer.Argument(help="Prompts to score (or --prompts FILE).")] = None,
    guard_dir: Annotated[Path, typer.Option("--guard", "-g", help="Directory written by 'guard fit'.")] = Path(
        "ihs-out/guard/guard"),
    model: ModelOpt = "default",
    prompts: PromptsOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    remote: RemoteOpt = False,
    host: HostOpt = None,
    trust_host: TrustHostOpt = False,
    batch_size: BatchOpt = 16,
    out: OutOpt = Path("ihs-out/guard-score"),
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    from ihs_sight.errors import InputError
    from ihs_sight.guard import Guard

    if bool(text) == (prompts is not None):
        raise InputError("Give prompts as arguments or --prompts FILE (exactly one of the two).")
    items: Any = list(text or []) if prompts is None else load_data(prompts)
    if not (guard_dir / "guard.json").is_file():  # before the (slow) model load
        raise InputError(f"{guard_dir} holds no guard.json; run 'ihs-sight guard fit' first or pass --guard DIR.")
    m = load(model, device, dtype, remote, host, trust_host)
    guard = Guard.load(guard_dir, m)
    scores = guard.score(items, batch_size=batch_size, progress=not quiet)
    files = [write_text(out / "scores.json", scores.model_dump_json(indent=2))]
    n_flag = sum(scores.flagged)
    lines = ["# ihs-sight guard score", "",
             f"- model: `{m.name}`; guard layer {guard.layer}/{m.n_layers}, threshold {guard.threshold:.4f}",
             f"- {n_flag} of {len(scores.prompts)} prompts flagged", ""]
    for p, s, f in list(zip(scores.prompts, scores.p_malicious, scores.flagged))[:20]:
        short = p if len(p) <= 70 else p[:67] + "..."
        lines.append(f"- {'FLAG' if f else 'ok  '} {s:.3f}  {short}")
    finish(out, files, "\n".join(lines) + "\n", {"command": "guard score", "flagged": scores.flagged,
                                                "p_malicious": scores.p_malicious}, quiet=quiet, as_json=as_json)
