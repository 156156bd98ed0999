"""Write the self-distillation targets for the refusal-tuned variant (``default-aligned``).

For every **train-split** normal prompt of the bundled data (look-alikes included) and every
prompt of ``ihs_sight/data/extra_benign.jsonl`` (benign prompts written for this purpose, see
the data README) -- and, for v2, of ``extra_benign_v2.jsonl`` (terse prompts and new prompts near
the train look-alikes) -- the base model (SmolLM2-135M-Instruct, ``load_model("default")``) answers
greedily through its chat template with its default system prompt. The answers are the
training targets that keep the tuned model helpful: it learns to say what it already says.

Generation is batched (prompts grouped by length, left padding) and greedy, so the file is
reproducible on the same library versions. Only the first ``--max-new-tokens`` tokens are kept:
the refusal judge reads the start of a reply, and that is what tuning can move.

    python scripts/make_distill_data.py --version 2          # writes ihs_sight/data/distill_normal_v2.jsonl
    python scripts/make_distill_data.py --version 1          # v1's file (PhraseJudge filter), kept for v1

Each answer records whether the base model's reply is judged a refusal (``base_refuses``); such
replies are no training target. v1 judged with ``PhraseJudge``, which also dropped benign answers
that merely contain refusal-like words ("I'm not going to lie, ..."); v2 judges with a validated
shipped judge (``--judge``, default ``v1``: the one the committed ``distill_normal_v2.jsonl`` was
made with, so the file is reproduced; a new file may take another) and records which judge it was.

Test-split prompts are never read here.
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
from ihs_sight.judge import PhraseJudge
from ihs_sight.judge.learned import VERSIONS
from ihs_sight.prompts import encode
from ihs_sight.runtime.packing import length_batches, pad_batch

DATA = Path(__file__).resolve().parents[1] / "ihs_sight" / "data"
OUT = {1: DATA / "distill_normal.jsonl", 2: DATA / "distill_normal_v2.jsonl"}
EXTRA = {1: [DATA / "extra_benign.jsonl"], 2: [DATA / "extra_benign.jsonl", DATA / "extra_benign_v2.jsonl"]}


def benign_prompts(version: int = 2) -> list[dict[str, object]]:
    """Train-split normal prompts, then the version's extra benign prompts, as plain records."""
    data = ihs.load_prompts()
    rows: list[dict[str, object]] = [
        {"id": p.id, "prompt": p.text, "category": p.category, "lookalike": p.lookalike, "form": p.form,
         "source": "train_normal"}
        for p in data.train.normal
    ]
    test_texts = {p.text.strip().casefold() for p in data.test}
    for path in EXTRA[version]:
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            if rec["text"].strip().casefold() in test_texts:  # never let a test prompt into training
                raise SystemExit(f"extra prompt {rec['id']} duplicates a test prompt: {rec['text']!r}")
            rows.append({"id": rec["id"], "prompt": rec["text"], "category": rec.get("category"),
                         "lookalike": bool(rec.get("lookalike", False)), "form": rec.get("form"),
                         "source": rec.get("source", path.stem)})
    return rows


@torch.no_grad()
def generate(model: ihs.Model, prompts: list[str], *, max_new_tokens: int, batch_size: int,
             temperature: float | None = None) -> list[tuple[str, bool, int]]:
    """Greedy answers (or, with ``temperature``, sampled ones, top-p 0.95, from torch's current seed):
    (text, finished before the limit, number of new tokens)."""
    tok = model.tokenizer
    ids = encode(tok, prompts)
    eos = sorted(model.eos_ids)  # SmolLM2: <|im_end|>; Gemma: <eos> and <end_of_turn>
    out: list[tuple[str, bool, int]] = [("", False, 0)] * len(prompts)
    batches = length_batches([len(r) for r in ids], batch_size)
    decoding: dict[str, Any] = {"do_sample": False} if temperature is None else {
        "do_sample": True, "temperature": temperature, "top_p": 0.95}
    for b, idx in enumerate(batches):
        t0 = time.perf_counter()
        batch = pad_batch([ids[i] for i in idx], tok.pad_token_id)
        gen = model.hf.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id, eos_token_id=eos, **decoding,
        )
        width = batch["input_ids"].shape[1]
        for row, i in enumerate(idx):
            new = gen[row, width:].tolist()
            stops = [j for j, t in enumerate(new) if t in eos]
            finished = bool(stops)
            if finished:
                new = new[: stops[0]]
            new = [t for t in new if t != tok.pad_token_id]
            out[i] = (tok.decode(new, skip_special_tokens=True), finished, len(new))
        logging.info("batch %d/%d (%d prompts) in %.1f s", b + 1, len(batches), len(idx), time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", type=int, choices=(1, 2), default=2, help="which default-aligned the data is for")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None, help="default: the version's file under ihs_sight/data/")
    ap.add_argument("--judge", choices=VERSIONS, default="v1", help="v2's shipped judge version (default: v1, as committed)")
    args = ap.parse_args()
    out: Path = args.out or OUT[args.version]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(0)
    rows = benign_prompts(args.version)
    model = ihs.load_model("default", device="cpu", dtype="float32")
    t0 = time.perf_counter()
    prompts = [str(r["prompt"]) for r in rows]
    answers = generate(model, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    texts = [a[0] for a in answers]
    if args.version == 1:
        judge: ihs.RefusalJudge = PhraseJudge()
        verdicts = [judge(t) for t in texts]
    else:
        judge = ihs.shipped_judge(args.judge)
        verdicts = judge.many(texts, prompts)
    with out.open("w", encoding="utf-8") as f:
        for r, (text, finished, n), refuses in zip(rows, answers, verdicts):
            rec = {**r, "answer": text, "finished": finished, "n_tokens": n, "max_new_tokens": args.max_new_tokens,
                   "base_refuses": bool(refuses)}
            if args.version > 1:
                rec["judge"] = judge.name
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    refusing = sum(verdicts)
    logging.info("wrote %d answers to %s in %.0f s (%d judged as refusals)", len(rows), out,
                 time.perf_counter() - t0, refusing)


if __name__ == "__main__":
    main()
