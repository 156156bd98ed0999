"""Refusal and harmfulness directions of a bundled model, and what steering along them does.

Computes both directions with the library defaults on the canonical train split, then runs
held-out test prompts through :func:`ihs_sight.steer` and judges the replies with the default
judge:

- malicious prompts: ``none`` (baseline) vs ``ablate`` (refusal direction removed);
- normal prompts: ``none`` vs ``ablate`` (with the mean next-token KL from the clean model: what
  ablation costs harmless prompts) and ``add`` (refusal direction added at its layer, scale = its norm);
- jailbreak prompts (a seeded sample): ``none`` vs ``ablate``.

By default every test-split malicious and normal prompt is run: the figures the README quotes.

Also records every refusal candidate's scores, the harmfulness direction's layer and held-out
accuracy, and the per-layer cosine of the two directions.

Usage:
    python scripts/eval_steer.py [docs/steer_eval.json] [--model default-aligned] [--n 0] [--n-jailbreak 64] [--generate 24]
        [--save-directions DIR] [--threads 1]
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

import torch

import ihs_sight as ihs


def main(argv: list[str] | None = None) -> int:
    """Compute the directions, steer held-out prompts, write the JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="docs/steer_eval.json", type=Path)
    parser.add_argument("--model", default="default-aligned")
    parser.add_argument("--n", type=int, default=0, help="test prompts per label (0: all of the test split)")
    parser.add_argument("--n-jailbreak", type=int, default=64, help="jailbreak prompts (sampled; 0: all 350)")
    parser.add_argument("--generate", type=int, default=24)
    parser.add_argument("--save-directions", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 avoids oversubscription)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = ihs.load_model(args.model)
    data = ihs.load_prompts()
    started = time.time()
    refusal = ihs.refusal_direction(model)
    refusal_s = time.time() - started
    started = time.time()
    harm = ihs.harmfulness_direction(model)
    harm_s = time.time() - started
    if args.save_directions is not None:
        refusal.save(args.save_directions / f"{args.model}.refusal")
        harm.save(args.save_directions / f"{args.model}.harmfulness")

    test = data.test
    def pick(prompts: ihs.PromptSet, n: int) -> ihs.PromptSet:
        return prompts.sample(n, random_state=0) if 0 < n < len(prompts) else prompts

    sets = {"malicious": pick(test.malicious, args.n), "normal": pick(test.normal, args.n),
            "jailbreak": pick(data.jailbreak, args.n_jailbreak)}
    runs = {"malicious": ("none", "ablate"), "normal": ("none", "ablate", "add"), "jailbreak": ("none", "ablate")}
    steering: dict[str, dict[str, object]] = {}
    logits: dict[str, torch.Tensor] = {}
    for label, modes in runs.items():
        steering[label] = {"n": len(sets[label])}
        for mode in modes:
            started = time.time()
            result = ihs.steer(model, sets[label], refusal, mode=mode, generate=args.generate,  # type: ignore[arg-type]
                               keep_logits=label == "normal" and mode in ("none", "ablate"))
            if result.logits is not None:
                logits[mode] = result.logits.double()
            steering[label][mode] = {
                "refusal_rate": result.refusal_rate,
                "mean_neg_mass": result.mean_neg_mass,
                "mean_pos_mass": result.mean_pos_mass,
                "seconds": round(time.time() - started, 1),
                "examples": [r.text for r in result.records[:3]],
            }
            print(f"{label:9s} {mode:6s} refusal rate {result.refusal_rate:.3f}", flush=True)
        if label == "normal":
            # Next-token KL(clean || ablated) per prompt, averaged: what ablation costs harmless prompts.
            p_log = torch.log_softmax(logits["none"], -1)
            q_log = torch.log_softmax(logits["ablate"], -1)
            kl = (p_log.exp() * (p_log - q_log)).sum(-1)
            steering[label]["kl_ablate_vs_none"] = {"mean": float(kl.mean()), "median": float(kl.median()),
                                                    "max": float(kl.max())}
            print(f"normal    ablate next-token KL from clean: mean {float(kl.mean()):.4f} nats", flush=True)
        steering[label]["judge"] = result.meta.judge

    summary = {
        "model": args.model,
        "weights_hash": model.weights_hash,
        "refusal": {
            "layer": refusal.layer, "position": refusal.position, "norm": refusal.norm,
            "clean_harmful": refusal.clean_harmful, "clean_harmless": refusal.clean_harmless,
            "n_harmful": refusal.n_harmful, "n_harmless": refusal.n_harmless, "n_val": refusal.n_val,
            "candidates": [c.model_dump() for c in refusal.candidates], "seconds": round(refusal_s, 1),
        },
        "harmfulness": {
            "layer": harm.layer, "position": harm.position, "norm": harm.norm,
            "candidates": [c.model_dump() for c in harm.candidates], "seconds": round(harm_s, 1),
        },
        "cosine_per_layer": ihs.direction_cosines(refusal, harm),
        "steering": steering,
        "generate": args.generate,
        "threads": args.threads,
        "platform": platform.platform(),
        "versions": refusal.versions,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
