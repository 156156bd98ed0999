"""Regenerate the README figures of the base/aligned pair (``default`` vs ``default-aligned``).

Three analyses, each drawn by the result type's own ``.plot()``; the numbers behind them go to
``docs/figures/summary.json`` so the README quotes measured values, not hand-drawn ones.

1. **Probes** (``probe_base.png``, ``probe_aligned.png``): per-layer weak classifiers fitted
   on the canonical train split's hidden states and scored on the test split. Early layers separate malicious from normal in both models.
2. **Logit lens** (``lens_emotions.png``: emotion mass per layer for malicious and normal
   test prompts in both models; ``lens_aligned_malicious.png``: the aligned model's top lens
   tokens on malicious prompts). The aligned model's middle and late layers carry negative /
   refusal tokens on malicious prompts.
3. **Logit grafting sweep** on the aligned model (``graft_sweep_aligned.png``): the mean
   last-token state of train-split normal prompts replaces that of test-split malicious
   prompts at one layer at a time; greedy continuations are judged by the validated default judge.
   The layers where the refusal rate drops are where grafting removes the refusal.

    python scripts/make_readme_figures.py            # writes docs/figures/*.png + summary.json

Everything runs offline on a CPU (about 20 minutes on 2 cores; most of it is the sweep's
generation). Seeds are fixed; the prompt subsets are seeded samples of the canonical split.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

import ihs_sight as ihs
from ihs_sight.graft import graft_sweep
from ihs_sight.lens import logit_lens
from ihs_sight.probe import probe

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "figures"
MODELS = {"default": "base", "default-aligned": "aligned"}


def save(fig: Any, name: str, out: Path) -> None:
    path = out / name
    fig.savefig(path, dpi=110, bbox_inches="tight")
    logging.info("wrote %s", path)


def probe_figures(models: dict[str, ihs.Model], data: ihs.PromptSet, n: int, cache: Path, out: Path) -> dict[str, Any]:
    train = data.train.normal + data.train.malicious
    test = data.test.normal + data.test.malicious
    if n:
        train, test = train.sample(n, random_state=0), test.sample(n // 2, random_state=0)
    summary: dict[str, Any] = {"n_train": len(train), "n_test": len(test)}
    for name, short in MODELS.items():
        m = models[name]
        report = probe(ihs.extract(m, train, cache=cache), test=ihs.extract(m, test, cache=cache), random_state=0)
        save(report.plot(), f"probe_{short}.png", out)
        summary[short] = {c: [round(a, 4) for a in s.accuracy] for c, s in report.scores.items()}
        summary[short]["layers"] = report.layers
        summary[short]["first_layer_95"] = report.first_layer
    return summary


def lens_figures(models: dict[str, ihs.Model], data: ihs.PromptSet, n: int, out: Path) -> dict[str, Any]:
    prompts = data.test.malicious.sample(n, random_state=0) + data.test.normal.sample(n, random_state=0)
    profiles = []
    summary: dict[str, Any] = {"n_per_label": n}
    for name, short in MODELS.items():
        m = models[name]
        lens = logit_lens(m, prompts, top_k=5)
        band = (m.n_layers // 3, m.n_layers)
        for label in ("malicious", "normal"):
            part = lens.select(label)
            prof = part.emotions(f"{short} {label}")
            profiles.append(prof)
            summary[f"{short}_{label}"] = {
                "middle_late_mass": {k: round(v, 5) for k, v in prof.band_mean(band).items()},
                "band": list(band),
                "top_tokens": {str(layer): [(t.token, round(t.share, 3), t.category) for t in part.top_tokens(layer, 5)]
                               for layer in range(band[0], m.n_layers + 1, 2)},
            }
            if short == "aligned" and label == "malicious":
                save(part.heatmap(title="default-aligned, malicious test prompts: top lens token"),
                     "lens_aligned_malicious.png", out)
    save(profiles[0].plot(*profiles[1:], title="Logit-lens emotion mass: base vs aligned"), "lens_emotions.png", out)
    return summary


def graft_figure(model: ihs.Model, data: ihs.PromptSet, n: int, step: int, out: Path) -> dict[str, Any]:
    targets = data.test.malicious.sample(n, random_state=0)
    layers = list(range(step, model.n_layers + 1, step))
    sweep = graft_sweep(model, targets, data.train.normal, layers=layers, generate=16, judge=None,
                        cache=False)  # None: the validated default judge
    save(sweep.plot(), "graft_sweep_aligned.png", out)
    return {
        "n_targets": n, "judge": sweep.meta.judge, "layers": sweep.layers, "refusal_rate": sweep.refusal_rate,
        "refusal_rate_before": sweep.refusal_rate_before, "flip_rate": sweep.flip_rate,
        "mean_neg_mass": sweep.mean_neg_mass, "mean_neg_mass_before": sweep.mean_neg_mass_before,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-probe", type=int, default=0, help="train-split prompts for the probes (0: all)")
    ap.add_argument("--n-lens", type=int, default=48, help="test prompts per label for the lens")
    ap.add_argument("--n-graft", type=int, default=24, help="test malicious prompts grafted")
    ap.add_argument("--graft-step", type=int, default=3, help="sweep every this many layers")
    ap.add_argument("--only", nargs="*", choices=["probe", "lens", "graft"], default=["probe", "lens", "graft"])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    data = ihs.load_prompts()
    models = {name: ihs.load_model(name, device="cpu", dtype="float32") for name in MODELS}
    summary_path = args.out / "summary.json"
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary["models"] = {name: models[name].weights_hash for name in MODELS}
    t0 = time.perf_counter()
    cache = ihs.models.cache_dir() / "readme-figures"
    if "probe" in args.only:
        summary["probe"] = probe_figures(models, data, args.n_probe, cache, args.out)
    if "lens" in args.only:
        summary["lens"] = lens_figures(models, data, args.n_lens, args.out)
    if "graft" in args.only:
        summary["graft_aligned"] = graft_figure(models["default-aligned"], data, args.n_graft, args.graft_step, args.out)
    summary_path.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    logging.info("done in %.0f s; wrote %s", time.perf_counter() - t0, summary_path)


if __name__ == "__main__":
    main()
