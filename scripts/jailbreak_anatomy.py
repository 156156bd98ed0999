"""Jailbreak anatomy of a bundled model: which of "recognise harm" and "refuse" each family breaks.

For one model, with library defaults throughout (nothing here is chosen on test prompts):

1. The refusal and harmfulness directions (``ihs.refusal_direction`` / ``ihs.harmfulness_direction``
   on the train split), or the ones ``scripts/eval_steer.py --save-directions DIR`` saved (``--directions DIR``).
2. The early-exit guard, ``Guard.fit`` on the train split (mean pool, its default).
3. ``ihs.jailbreak_anatomy``: every test jailbreak family and its wrapped-normal control projected on
   both directions at every layer, scored at each direction's layer on the scale direct normal = 0,
   direct malicious = 1, the guard's decision on each; the verdict rule is the module's, fixed
   before the first run (a score >= 0.5 is nearer malicious).
4. Behaviour: each family's clean replies (24 greedy tokens), read by the default judge.
5. Graft against steering on the same targets, at the refusal direction's layer: a seeded sample of
   test malicious prompts with the train normals' mean state grafted (``graft``, replace, last token)
   vs the refusal direction ablated (``steer``); the same number of test normal prompts with the
   train malicious mean grafted vs the direction added (scale = its norm).

Writes ``docs/anatomy_<model>.json`` and ``docs/figures/anatomy_<model>.png``.

Usage:
    python scripts/jailbreak_anatomy.py [--model default-aligned] [--directions DIR] [--n-compare 48]
        [--generate 24] [--threads 2]
    python scripts/jailbreak_anatomy.py --tables docs/anatomy_*.json     # the README's tables
    python scripts/jailbreak_anatomy.py --redraw docs/anatomy_*.json     # the figures again, from the JSON
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

# Run from a checkout without relying on the editable install's import hook.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from eval_aligned import wilson

import ihs_sight as ihs
from ihs_sight.runtime.provenance import versions

ROOT = Path(__file__).resolve().parents[1]


def _directions(model: ihs.Model, saved: Path | None) -> tuple[ihs.Direction, ihs.Direction, float | None]:
    if saved is not None:
        return (ihs.Direction.load(saved / f"{model.name}.refusal"),
                ihs.Direction.load(saved / f"{model.name}.harmfulness"), None)
    t0 = time.perf_counter()
    refusal = ihs.refusal_direction(model)
    harm = ihs.harmfulness_direction(model)
    return refusal, harm, round(time.perf_counter() - t0, 1)


def _rate(flags: list[bool]) -> dict[str, Any]:
    k, n = sum(flags), len(flags)
    return {"refused": k, "n": n, "rate": round(k / n, 4) if n else None, "ci95": wilson(k, n)}


def _behaviour(model: ihs.Model, direction: ihs.Direction, sets: dict[str, ihs.PromptSet],
               generate: int) -> dict[str, Any]:
    """Clean refusal rate per family of every jailbreak and control (one ``steer(mode="none")`` run each)."""
    out: dict[str, Any] = {}
    for name, ps in sets.items():
        result = ihs.steer(model, ps, direction, mode="none", generate=generate)
        by_family: dict[str, list[bool]] = {}
        for prompt, record in zip(ps.items, result.records, strict=True):
            by_family.setdefault(prompt.family or "direct", []).append(bool(record.refusal))
        out[name] = {"judge": result.meta.judge, "families": {f: _rate(v) for f, v in by_family.items()}}
    return out


def _compare(model: ihs.Model, refusal: ihs.Direction, data: Any, n: int, generate: int) -> dict[str, Any]:
    """Graft vs steer on the same seeded test targets, at the refusal direction's layer."""
    layer = refusal.layer
    out: dict[str, Any] = {"layer": layer, "direction_position": refusal.position,
                           "note": "graft replaces the last prompt token's state only; steering acts at every position"}
    plans = (("malicious", data.test.malicious, data.train.normal, "ablate"),
             ("normal", data.test.normal, data.train.malicious, "add"))
    for label, targets, donors, mode in plans:
        picked = targets.sample(n, random_state=0) if 0 < n < len(targets) else targets
        t0 = time.perf_counter()
        g = ihs.graft(model, picked, donors, layer=layer, generate=generate)
        g_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        clean = ihs.steer(model, picked, refusal, mode="none", generate=generate)
        steered = ihs.steer(model, picked, refusal, mode=mode, generate=generate)  # type: ignore[arg-type]
        s_s = time.perf_counter() - t0
        same_clean = [t.text_before for t in g.targets] == clean.texts
        out[label] = {
            "n": len(picked), "donors": f"train {'normal' if label == 'malicious' else 'malicious'} (mean state)",
            "steer_mode": mode, "clean_refusal": clean.refusal_rate, "graft_clean_refusal": g.refusal_rate_before,
            "clean_texts_identical": same_clean, "graft_refusal": g.refusal_rate_after,
            "steer_refusal": steered.refusal_rate, "judge": clean.meta.judge,
            "graft_seconds": round(g_s, 1), "steer_seconds": round(s_s, 1),
            "examples": [{"prompt": p.text, "clean": c, "graft": t.text_after, "steer": s}
                         for p, c, t, s in list(zip(picked.items, clean.texts, g.targets, steered.texts,
                                                    strict=True))[:3]],
        }
        print(f"{label}: clean {clean.refusal_rate:.3f} | graft @ {layer} {g.refusal_rate_after:.3f} | "
              f"steer {mode} {steered.refusal_rate:.3f} (clean texts identical: {same_clean})", flush=True)
    return out


ANATOMY_HEADER = ("| model | family | harm: jailbreak / control | refusal: jailbreak / control "
                  "| guard flags: jailbreak / control | refused, clean replies: jailbreak / control | verdict |")
COMPARE_HEADER = "| model | targets | n | layer | refusal, clean | graft (last token) | steer | steering |"


def readme_tables(summaries: list[dict[str, Any]]) -> str:
    """The README's anatomy and graft-vs-steer tables from the JSON files this script wrote."""
    lines = [ANATOMY_HEADER, "|" + "---|" * 7]
    for s in summaries:
        rates = s["behaviour"]
        for fam in s["anatomy"]["families"]:
            jb, ctl, name = fam["jailbreak"], fam["control"], fam["family"]
            refused = (f"{rates['jailbreak']['families'][name]['rate']:.2f} / "
                       f"{rates['control']['families'][name]['rate']:.2f}")
            note = " (the wrapper alone reads harmful)" if fam["wrapper_reads_harmful"] else ""
            lines.append(f"| `{s['model']}` | {name} | {jb['harm']:.2f} / {ctl['harm']:.2f} | "
                         f"{jb['refusal']:.2f} / {ctl['refusal']:.2f} | "
                         f"{jb['guard_flagged']:.2f} / {ctl['guard_flagged']:.2f} | {refused} | {fam['verdict']}{note} |")
    lines += ["", COMPARE_HEADER, "|" + "---|" * 8]
    for s in summaries:
        c = s["graft_vs_steer"]
        for label in ("malicious", "normal"):
            r = c[label]
            lines.append(f"| `{s['model']}` | {label} | {r['n']} | {c['layer']} | {r['clean_refusal']:.1%} | "
                         f"{r['graft_refusal']:.1%} | {r['steer_refusal']:.1%} | {r['steer_mode']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Directions, guard, anatomy, behaviour, graft vs steer; write the JSON and the figure."""
    if argv is None and len(sys.argv) > 1 and sys.argv[1] in ("--tables", "--redraw"):
        summaries = [json.loads(Path(p).read_text(encoding="utf-8")) for p in sys.argv[2:]]
        if sys.argv[1] == "--tables":
            print(readme_tables(summaries))
        for s in summaries if sys.argv[1] == "--redraw" else []:
            ihs.JailbreakAnatomy.model_validate(s["anatomy"]).plot().savefig(ROOT / s["figure"], dpi=110)
            print(f"redrew {s['figure']}")
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default-aligned")
    ap.add_argument("--directions", type=Path, default=None, help="load <DIR>/<model>.refusal/.harmfulness")
    ap.add_argument("--n-compare", type=int, default=48, help="graft vs steer targets per label (0: all)")
    ap.add_argument("--generate", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = ihs.load_model(args.model)
    data = ihs.load_prompts()
    refusal, harm, dir_s = _directions(model, args.directions)
    t0 = time.perf_counter()
    guard = ihs.Guard.fit(model, data.train.normal + data.train.malicious, progress=False)
    guard_s = time.perf_counter() - t0
    anatomy = ihs.jailbreak_anatomy(model, refusal, harm, guard=guard)
    print(anatomy.table(), flush=True)
    behaviour = _behaviour(model, refusal, {"jailbreak": data.jailbreak, "control": data.wrapped_normal},
                           args.generate)
    compare = _compare(model, refusal, data, args.n_compare, args.generate)
    out = args.out or ROOT / "docs" / f"anatomy_{args.model}.json"
    figure = ROOT / "docs" / "figures" / f"anatomy_{args.model}.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    anatomy.plot().savefig(figure, dpi=110)
    summary = {
        "model": args.model, "weights_hash": model.weights_hash,
        "refusal_direction": {"layer": refusal.layer, "position": refusal.position, "norm": refusal.norm},
        "harmfulness_direction": {"layer": harm.layer, "position": harm.position, "norm": harm.norm},
        "directions_from": str(args.directions) if args.directions else "computed (library defaults)",
        "directions_seconds": dir_s,
        "guard": {"layer": guard.layer, "pool": guard.pool, "threshold": guard.report.threshold,
                  "seconds": round(guard_s, 1)},
        "anatomy": anatomy.model_dump(), "table": anatomy.table(), "behaviour": behaviour, "graft_vs_steer": compare,
        "figure": str(figure.relative_to(ROOT)), "generate": args.generate, "threads": args.threads,
        "seconds": round(time.perf_counter() - started, 1), "platform": platform.platform(),
        "versions": versions(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out} and {figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
