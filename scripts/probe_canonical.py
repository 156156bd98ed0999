"""Probe the default model on the bundled data's canonical split, and transfer to jailbreaks.

Fits svm / mlp / logreg probes on every layer with the canonical train split (normal vs
malicious only: no jailbreak and no wrapped prompt is ever seen), then reports:

- held-out accuracy per layer on the canonical test split (plain normal + malicious),
  the first layer reaching 0.95 and whether it is <= L/3;
- the share of jailbreak variants classified malicious, overall and per wrapper family,
  and the false-positive rate on wrapped normal prompts (same wrappers, benign request),
  at the layer chosen on the held-out split (never on jailbreak data).

Usage:
    python scripts/probe_canonical.py [docs/probe_canonical.json] [--cache DIR] [--threshold 0.95] [--loco]

The README's probe table is read from ``docs/probe_canonical.json`` (``tests/test_readme.py``
checks they agree). Each probe's accuracy is reported beside the surface baselines fit on the
same split (bag-of-words, form only) and its lift over the better of them.

Writes the JSON summary (with both full reports), plus ``<out>.accuracy.png`` (held-out
accuracy per layer) and ``<out>.families.png`` (share of each family flagged malicious).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

# Run from a checkout without relying on the editable install's import hook.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

import ihs_sight as ihs
from ihs_sight.probe import ProbeReport, probe


def _jailbreak_summary(report: ProbeReport, name: str, layer: int) -> dict[str, object]:
    j = report.layers.index(layer)

    def rates(prefix: str) -> dict[str, float]:
        return {g.name.removeprefix(prefix): g.positive_rate[name][j] for g in report.groups.values()
                if g.by == "family" and g.name.startswith(prefix) and g.positive_rate is not None}

    jail, wrapped = rates("jailbreak/"), rates("normal/")
    label = {g.name: g.positive_rate[name][j] for g in report.groups.values()
             if g.by == "label" and g.positive_rate is not None}
    return {
        "layer": layer,
        "jailbreak_flagged_malicious": label.get("jailbreak"),
        "jailbreak_per_family": dict(sorted(jail.items())),
        "wrapped_normal_fpr": label.get("normal"),
        "wrapped_normal_fpr_per_family": dict(sorted(wrapped.items())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=Path(__file__).resolve().parents[1] / "docs" /
                        "probe_canonical.json", help="where to write the JSON summary (the README's source)")
    parser.add_argument("--cache", default=None, help="states cache directory (default: the user cache)")
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    parser.add_argument("--loco", action="store_true",
                        help="also run leave-one-category-out on the train split (logreg; minutes)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cache: bool | str = args.cache if args.cache else True

    start = time.perf_counter()
    model = ihs.load_model()
    data = ihs.load_prompts()
    train_set = data.train.normal + data.train.malicious
    test_set = data.test.normal + data.test.malicious
    transfer_set = data.jailbreak + data.wrapped_normal
    train = ihs.extract(model, train_set, cache=cache)
    test = ihs.extract(model, test_set, cache=cache)
    transfer = ihs.extract(model, transfer_set, cache=cache)
    extract_s = time.perf_counter() - start

    held_out = probe(train, test=test, classifiers=("svm", "mlp", "logreg"), threshold=args.threshold)
    jail = held_out.transfer(transfer)
    n_blocks = held_out.n_layers
    limit = n_blocks / 3

    summary: dict[str, object] = {
        "model": train.meta.model_name,
        "model_class": train.meta.model_class,
        "n_blocks": n_blocks,
        "layer_limit_L_over_3": limit,
        "threshold": args.threshold,
        "counts": {"train": train_set.counts(), "test": test_set.counts(),
                   "jailbreak": len(data.jailbreak), "wrapped_normal": len(data.wrapped_normal)},
        "held_out": {},
        "jailbreak_transfer": {},
        "seconds": {"extract_or_load": round(extract_s, 1), "fit": round(held_out.fit_seconds, 1)},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
    }
    base = held_out.baselines
    summary["surface_baselines"] = None if base is None else {k: round(v, 4) for k, v in base.accuracy.items()}
    early = [layer for layer in held_out.layers if layer <= limit]
    for name, s in held_out.scores.items():
        first = s.first_layer
        best_early = max(early, key=lambda layer: (s.accuracy[held_out.layers.index(layer)], -layer))
        lift = held_out.lift[name] if held_out.lift is not None else None
        summary["held_out"][name] = {  # type: ignore[index]
            "accuracy": [round(a, 4) for a in s.accuracy],
            "lift_over_surface_baseline": None if lift is None else [round(v, 4) for v in lift],
            "best_early_layer": best_early,
            "best_early_accuracy": round(s.accuracy[held_out.layers.index(best_early)], 4),
            "first_layer_at_threshold": first,
            "first_layer_within_L_over_3": first is not None and first <= limit,
            "best_layer": s.best_layer,
            "best_accuracy": round(s.accuracy[held_out.layers.index(s.best_layer)], 4),
            "lift_at_best": None if lift is None else round(lift[held_out.layers.index(s.best_layer)], 4),
            "fpr_at_best": None if s.fpr is None else s.fpr[held_out.layers.index(s.best_layer)],
            "fnr_at_best": None if s.fnr is None else s.fnr[held_out.layers.index(s.best_layer)],
        }
        # Benign prompts written to share vocabulary with harmful ones: where false positives live.
        flagged = held_out.probes[name].predict(test) == "malicious"
        look = np.array([p.lookalike for p in test_set])
        normal = np.array([p.label == "normal" for p in test_set])
        j = held_out.layers.index(s.best_layer)
        summary["held_out"][name]["fpr_at_best_lookalike_vs_other_normals"] = [  # type: ignore[index]
            float(flagged[normal & look, j].mean()), float(flagged[normal & ~look, j].mean())]
        # The layer is chosen on the held-out normal/malicious split only: the first layer
        # reaching the threshold (else the best layer), so jailbreak data picks nothing.
        chosen = first if first is not None else s.best_layer
        per_layer_jail = jail.groups["label:jailbreak"].positive_rate
        per_layer_fpr = jail.groups["label:normal"].positive_rate
        summary["jailbreak_transfer"][name] = {  # type: ignore[index]
            "at_first_layer": _jailbreak_summary(jail, name, chosen),
            "at_best_layer": _jailbreak_summary(jail, name, s.best_layer),
            "jailbreak_flagged_per_layer": [round(v, 4) for v in per_layer_jail[name]] if per_layer_jail else None,
            "wrapped_normal_fpr_per_layer": [round(v, 4) for v in per_layer_fpr[name]] if per_layer_fpr else None,
        }
    summary["reports"] = {"held_out": json.loads(held_out.model_dump_json()),
                          "jailbreak": json.loads(jail.model_dump_json())}
    if args.loco:
        # Every train prompt scored by a probe that never saw its category: what a probe
        # learned beyond the topics it was shown.
        loco = probe(train, classifiers=("logreg",), cv="category", threshold=args.threshold)
        s = loco.scores["logreg"]
        worst = sorted((g.accuracy["logreg"][s.best_layer], g.name) for g in loco.groups.values())[:5]
        summary["leave_one_category_out"] = {
            "accuracy": [round(a, 4) for a in s.accuracy], "best_layer": s.best_layer,
            "first_layer_at_threshold": s.first_layer,
            "fpr_at_best": None if s.fpr is None else s.fpr[s.best_layer],
            "fnr_at_best": None if s.fnr is None else s.fnr[s.best_layer],
            "worst_categories_at_best_layer": {name: round(acc, 3) for acc, name in worst},
        }
        summary["reports"]["leave_one_category_out"] = json.loads(loco.model_dump_json())  # type: ignore[index]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    held_out.plot().savefig(args.out.with_suffix(".accuracy.png"))
    first = held_out.classifiers[0]
    jail.plot("positive_rate", classifiers=[first], group_by="family").savefig(args.out.with_suffix(".families.png"))

    print(f"model {summary['model']} ({n_blocks} blocks; L/3 = {limit:g}); train {train_set.counts()}, "
          f"test {test_set.counts()}")
    for name in held_out.classifiers:
        h = summary["held_out"][name]  # type: ignore[index]
        t = summary["jailbreak_transfer"][name]["at_first_layer"]  # type: ignore[index]
        look_fpr, other_fpr = h["fpr_at_best_lookalike_vs_other_normals"]
        print(f"{name:6s} first layer >= {args.threshold:g}: {h['first_layer_at_threshold']} "
              f"(<= L/3: {h['first_layer_within_L_over_3']}); best layer {h['best_layer']} ({h['best_accuracy']:.3f}; "
              f"FPR {h['fpr_at_best']:.3f}: lookalike normals {look_fpr:.3f}, other normals {other_fpr:.3f}; "
              f"FNR {h['fnr_at_best']:.3f})")
        print(f"       at layer {t['layer']}: jailbreak flagged malicious {t['jailbreak_flagged_malicious']:.3f}, "
              f"wrapped-normal FPR {t['wrapped_normal_fpr']:.3f}")
        print("       per family: " + ", ".join(f"{f} {v:.2f}" for f, v in t["jailbreak_per_family"].items()))
        print("       wrapped-normal FPR per family: "
              + ", ".join(f"{f} {v:.2f}" for f, v in t["wrapped_normal_fpr_per_family"].items()))
    if args.loco:
        lo = summary["leave_one_category_out"]
        print(f"leave-one-category-out (logreg): best layer {lo['best_layer']} "  # type: ignore[index]
              f"({lo['accuracy'][lo['best_layer']]:.3f}), FPR {lo['fpr_at_best']:.3f}, FNR {lo['fnr_at_best']:.3f}; "  # type: ignore[index]
              f"worst categories {lo['worst_categories_at_best_layer']}")  # type: ignore[index]
    print(f"wrote {args.out} and its .accuracy.png / .families.png figures")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
