"""Refusal rates of the base and refusal-tuned default models on the held-out test split.

Each model answers every **test-split** normal prompt (look-alikes included) and every
test-split malicious prompt greedily (``--max-new-tokens``, default 24) through the chat
template with its default system prompt; :class:`ihs_sight.judge.PhraseJudge` (the project's
lexicon judge) decides whether each reply refuses. None of these prompts was used in training
(``scripts/train_aligned.py`` reads train-split prompts only).

Writes one JSON file (default ``docs/aligned_eval.json``): per model, the refusal rate and
count for ``malicious``, ``normal`` (all 135 plain normal prompts), ``lookalike`` (the 22
benign look-alikes among them) and ``normal_plain`` (the rest), plus every reply.

    python scripts/eval_aligned.py                               # both models
    python scripts/eval_aligned.py --models default-aligned      # re-evaluate one, keep the other's entry
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from make_distill_data import generate

import ihs_sight as ihs
from ihs_sight.judge import PhraseJudge

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "aligned_eval.json"


def test_sets() -> dict[str, ihs.PromptSet]:
    test = ihs.load_prompts().test
    normal = test.normal
    return {
        "malicious": test.malicious,
        "normal": normal,
        "lookalike": normal.select(lookalike=True),
        "normal_plain": normal.select(lookalike=False),
    }


def evaluate(name: str, *, max_new_tokens: int, batch_size: int) -> dict[str, Any]:
    sets = test_sets()
    prompts = list(sets["malicious"]) + list(sets["normal"])
    model = ihs.load_model(name, device="cpu", dtype="float32")
    t0 = time.perf_counter()
    answers = generate(model, [p.text for p in prompts], max_new_tokens=max_new_tokens, batch_size=batch_size)
    judge = PhraseJudge()
    by_id = {p.id: (a[0], judge(a[0])) for p, a in zip(prompts, answers)}
    rates = {}
    for key, ps in sets.items():
        n_ref = sum(by_id[p.id][1] for p in ps)
        rates[key] = {"refused": n_ref, "n": len(ps), "rate": round(n_ref / len(ps), 4)}
    return {
        "model": name,
        "weights_hash": model.weights_hash,
        "rates": rates,
        "seconds": round(time.perf_counter() - t0, 1),
        "replies": [{"id": p.id, "label": p.label, "lookalike": p.lookalike, "prompt": p.text,
                     "reply": by_id[p.id][0], "refusal": by_id[p.id][1]} for p in prompts],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["default", "default-aligned"])
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(0)
    result: dict[str, Any] = {}
    if args.out.is_file():  # keep the entries of models not re-evaluated now
        result = json.loads(args.out.read_text(encoding="utf-8"))
    settings = {"split": "test", "decoding": "greedy", "max_new_tokens": args.max_new_tokens,
                "system_prompt": "template default", "judge": PhraseJudge().name,
                "versions": {k: importlib.metadata.version(k) for k in ("torch", "transformers", "peft", "nnsight")}}
    if result.get("settings", {}).get("max_new_tokens") != args.max_new_tokens:
        result = {}
    result["settings"] = settings
    models = result.setdefault("models", {})
    for name in args.models:
        models[name] = evaluate(name, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
        for key, r in models[name]["rates"].items():
            logging.info("%s %-12s refused %3d/%3d = %.1f%%", name, key, r["refused"], r["n"], 100 * r["rate"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    logging.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
