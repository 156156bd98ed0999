"""Sample model replies for hand-labelling: a pool for the refusal judge's gold parts or training set.

Greedy replies are what every evaluation already has (and what earlier gold parts drew from);
sampled replies (temperature ``--temperature``, fixed seed) show the same models' other habits:
base-model deflections, half refusals, drift. For each model, ``--per-label`` prompts of each label
(malicious, normal) are drawn from the chosen split's prompt set (``ihs.load_prompts().train`` or
``.test``) with a seeded generator, and the model answers through its chat template. "normal" there
includes the look-alikes and, in the test split only, the wrapped normal prompts (benign requests
inside jailbreak wrappers), which come in by the same draw; jailbreak prompts (label ``jailbreak``)
are not drawn.

    python scripts/sample_judge_pool.py --split test --out POOL.jsonl    # a sealed part's pool
    python scripts/sample_judge_pool.py --split train --out POOL.jsonl   # training additions

A pool meant for a sealed part is written outside the repository and never printed: whoever
labels it reads it, the judge's builder does not. Each line: ``source`` (``sampled:MODEL:PROMPT_ID``),
``prompt``, ``prompt_id``, ``prompt_label``, ``lookalike``, ``reply``. Prompts of the other split are
never read.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from make_distill_data import generate  # noqa: E402

import ihs_sight as ihs  # noqa: E402

MODELS = ("default", "default-aligned@v2", "gemma3-270m", "gemma3-270m-aligned")


def sample(model: ihs.Model, prompts: list[str], *, max_new_tokens: int, temperature: float, seed: int,
           batch_size: int = 16) -> list[str]:
    """One sampled reply per prompt (stops at the model's end of turn), seeded."""
    torch.manual_seed(seed)
    answers = generate(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, temperature=temperature)
    return [text for text, _, _ in answers]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=("train", "test"), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--per-label", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; a pool is written once.")
    data = ihs.load_prompts()
    split = data.train if args.split == "train" else data.test
    rng = random.Random(args.seed)
    rows = []
    for name in args.models:
        t0 = time.perf_counter()
        model = ihs.load_model(name, device="cpu", dtype="float32")
        chosen = [p for label in ("malicious", "normal")
                  for p in rng.sample([q for q in split if q.label == label], args.per_label)]
        replies = sample(model, [p.text for p in chosen], max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature, seed=args.seed)
        rows += [{"source": f"sampled:{name}:{p.id}", "prompt": p.text, "prompt_id": p.id, "prompt_label": p.label,
                  "lookalike": bool(p.lookalike), "reply": r} for p, r in zip(chosen, replies)]
        print(f"{name}: {len(chosen)} replies in {time.perf_counter() - t0:.0f} s", flush=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} replies to {args.out}")


if __name__ == "__main__":
    main()
