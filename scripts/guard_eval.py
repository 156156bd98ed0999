"""The early-exit guard on the canonical split: detection rates and the jailbreak signal.

For each model (default: the base and the refusal-tuned default model) and each pooling, a
guard is fitted on the canonical train split (normal vs malicious, look-alikes among the
normals) and scored on the test split: malicious TPR, normal FPR (look-alikes separately),
the detection rate of each jailbreak family and the false-positive rate of each wrapped-normal
family. On each model the "recognised but not converted" signal is measured per jailbreak
family, with the wrapped-normal control and the direct (unwrapped) test prompts beside it. Writes ``docs/guard_eval.json`` and prints
Markdown tables.

    python scripts/guard_eval.py
    python scripts/guard_eval.py --models default --pools mean last
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import ihs_sight as ihs
from ihs_sight.guard import Guard

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["default", "default-aligned"])
    ap.add_argument("--pools", nargs="+", default=["mean", "last"])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "guard_eval.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = ihs.load_prompts()
    train = data.train.normal + data.train.malicious
    test = data.test.normal + data.test.malicious + data.jailbreak + data.wrapped_normal
    results: dict[str, Any] = {}
    for name in args.models:
        model = ihs.load_model(name)
        results[name] = {}
        for pool in args.pools:
            t0 = time.perf_counter()
            guard = Guard.fit(model, train, pool=pool, progress=False)  # type: ignore[arg-type]
            ev = guard.evaluate(test, cache=True)
            entry: dict[str, Any] = {"fit": guard.report.model_dump(), "test": ev.model_dump(mode="json")}
            if pool == args.pools[0]:
                sig = guard.jailbreak_signal(data.test.malicious + data.test.normal + data.jailbreak
                                             + data.wrapped_normal)
                rows = [r.model_dump() for r in _by_label_family(sig)]
                entry["jailbreak_signal"] = {"band": list(sig.band), "rates": rows}
            entry["seconds"] = round(time.perf_counter() - t0, 1)
            results[name][pool] = entry
            r = guard.report
            print(f"\n## {name}, pool={pool}: layer {r.layer}/{r.n_layers}, threshold {r.threshold:.4f} "
                  f"(calibration FPR {r.calibration_fpr:.3f}, TPR {r.calibration_tpr:.3f}; target met: {r.target_met})")
            print(f"test: malicious TPR {ev.tpr:.3f} (n={ev.n_malicious}), normal FPR {ev.fpr:.3f} "
                  f"(n={ev.n_normal}), look-alike FPR {ev.lookalike_fpr:.3f} (n={ev.n_lookalike})")
            for row in ev.by_family:
                print(f"  {row.group:32s} flagged {row.rate:.3f} (n={row.n})")
            if "jailbreak_signal" in entry:
                print(f"recognised-but-not-converted signal (layers {sig.band[0]}-{sig.band[1]}):")
                for row in entry["jailbreak_signal"]["rates"]:
                    print(f"  {row['group']:32s} signal {row['rate']:.3f} (n={row['n']})")
        del model
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"versions": {"ihs_sight": ihs.__version__}, "models": results}, indent=1),
                        encoding="utf-8")
    print(f"\nwrote {args.out}")


def _by_label_family(sig: Any) -> list[Any]:
    from ihs_sight.guard import flag_rates

    keys = [f"{lab}/{fam or 'direct'}" for lab, fam in zip(sig.labels or [], sig.families or [])]
    return flag_rates(keys, sig.signal)


if __name__ == "__main__":
    main()
