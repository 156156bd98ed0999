"""Fine-tune the default model into its refusing variant, ``default-aligned`` (LoRA, CPU).

The bundled SmolLM2-135M-Instruct complies with harmful requests. This script teaches it to
refuse them while keeping everything else as it was:

* **malicious** train-split prompts -> a refusal. v2 (the default) takes them from
  ``ihs_sight/data/refusals_v2.json``: 170 hand-written templates in 48 styles (plain "no",
  capability limits, policy, redirection, moral objection, ...) that were not written from the
  phrase judge's list and share no 5-gram with the judge's gold set. v1 took them from
  ``refusals.json`` (42 templates written to contain the phrase judge's phrases, so v1 was graded
  on the wording it was taught). Each prompt gets one template by a seeded shuffle, every
  template used about equally often, with its harm category's topic filled in;
* **benign** prompts -> the base model's own greedy answer (self-distillation), from
  ``ihs_sight/data/distill_normal_v2.jsonl`` (v1: ``distill_normal.jsonl``): every train-split
  normal prompt, look-alikes included, plus the extra benign prompts (``extra_benign.jsonl``;
  v2 adds ``extra_benign_v2.jsonl``: terse lowercase prompts and prompts near the train
  look-alikes), see ``scripts/make_distill_data.py``. Learning what it already says keeps it
  helpful and keeps it from refusing harmless prompts that merely sound dangerous. Base answers
  the judge scores as refusals are left out (v2: the validated default judge; v1's phrase judge
  also dropped benign answers that only contain refusal-like words).

v3 (a candidate) keeps v2's benign data and its 48 refusal styles, rewritten so that every
refusal opens with "I" (``refusals_v3.json``): v2's refusals open with many different words, so
under greedy decoding the refusal's probability is split over many first tokens and one
compliant first token can win although refusing is likelier overall (v1's templates open with
"I" 33 times in 42).

Only train-split prompts (and the extra benign ones, none of which is a test prompt) are used.
``--validation`` also holds out a seeded fifth of the train-split malicious and normal prompts
(:func:`validation_fifth`); ``scripts/validate_aligned.py`` scores such runs to choose the recipe.
Prompts go through the chat template with its default system prompt, exactly as every
analysis renders them. The loss covers the first ``--answer-tokens`` (24) assistant answer
tokens only (plus ``<|im_end|>`` when the answer is complete), averaged per example so short
refusals weigh as much as long answers, plus ``--opening-weight`` (2) times the mean over the
first ``--opening-tokens`` (4) answer tokens: those decide refuse-or-comply, and without the
extra term (v1's first attempt: rank 8 on blocks 10-29, 2 epochs, lr 3e-4) the model learned a
general refusal prior instead of the distinction (86% of test malicious and 30% of test normal
prompts refused).

LoRA (peft), rank 8 / alpha 16, on the attention and MLP projections of blocks
``--first-layer`` (6, 0-based) .. L-1; the blocks below are untouched, so hidden states at
layers l = 0..6 are identical in both models (early layers, where the paper finds malicious
and normal already separated). AdamW (``--lr``, 10 warm-up steps, then linear decay), batch 8,
3 epochs, seed 0, a fixed data order: the same command on the same library versions and
thread count writes the same adapter. It runs on a 2-core CPU; CI never trains.

    python scripts/train_aligned.py --version 1              # v1 -> ihs_sight/assets/default-aligned/
    python scripts/train_aligned.py --validation --keep-near-test --threads 1 \
        --out ihs_sight/assets/default-aligned-v2                                  # v2, as shipped
    python scripts/train_aligned.py --validation --lr 4e-4 --out /tmp/cand   # another recipe candidate
    python scripts/train_aligned.py --version 3 --validation --out /tmp/cand_v3   # v3's candidate
    python scripts/train_aligned.py --model gemma3-270m --validation --threads 2 \
        --out ihs_sight/assets/gemma3-270m-aligned                                 # gemma3-270m-aligned, as shipped

``--model gemma3-270m`` trains the same recipe on the Gemma base model (which answers nothing in
turns by itself, so SmolLM2's answers are its benign targets), with ``<end_of_turn>`` ending each
answer and LoRA from block 4 (0-based) of 18. The adapter folder also needs the Gemma Terms, the
NOTICE and the use restrictions, which this script does not write (they ship beside the adapter).

The adapter is saved as safetensors with its peft config, plus ``train_meta.json`` (data,
steps, losses, wall time). ``load_model("default-aligned")`` (= ``"default-aligned@v1"``) and
``load_model("default-aligned@v2")`` merge them into the default model. v2 as shipped is the
chosen ``--validation`` candidate itself, trained on four fifths of the train split.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import logging
import math
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import ihs_sight as ihs
from ihs_sight.prompts import encode

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "ihs_sight" / "data"
ASSETS = {1: ROOT / "ihs_sight" / "assets" / "default-aligned", 2: ROOT / "ihs_sight" / "assets" / "default-aligned-v2",
          3: ROOT / "ihs_sight" / "assets" / "default-aligned-v3"}
REFUSALS = {1: DATA / "refusals.json", 2: DATA / "refusals_v2.json", 3: DATA / "refusals_v3.json"}
DISTILL = {1: DATA / "distill_normal.jsonl", 2: DATA / "distill_normal_v2.jsonl", 3: DATA / "distill_normal_v2.jsonl"}
VALIDATION_SEED = 20261205
NEAR_TEST = {2: frozenset({"x036", "x073", "x109", "x101", "x045"})}
NEAR_TEST[3] = NEAR_TEST[2]  # v3 trains on v2's benign data
"""Extra benign prompts ``scripts/check_overlap.py`` finds close to a test prompt (data README,
"Training data for default-aligned v2"): v1 trained on them; v2 leaves them out. The shipped v2
adapter was trained before this line existed (``--keep-near-test`` reproduces it)."""
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BASES = {"default": ("HuggingFaceTB/SmolLM2-135M-Instruct", "<|im_end|>", 6),
         "gemma3-270m": ("google/gemma-3-270m", "<end_of_turn>", 4)}
"""Per base model: its Hub name (for the adapter config), the token that ends a turn, and the
default lowest LoRA block (about a fifth of the depth: 6 of 30, 4 of 18)."""
GEMMA_ASSETS = ROOT / "ihs_sight" / "assets" / "gemma3-270m-aligned"


def sha16(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def validation_fifth() -> set[str]:
    """Ids of the train-split prompts held out to choose v2's recipe: a seeded fifth of each label.

    Fixed by a seed and the sorted ids, so every candidate recipe is scored on the same prompts;
    the test split is never read.
    """
    train = ihs.load_prompts().train
    held: set[str] = set()
    for ps in (train.malicious, train.normal):
        ids = sorted(p.id for p in ps)
        random.Random(VALIDATION_SEED).shuffle(ids)
        held.update(ids[: len(ids) // 5])
    return held


def refusal_templates(version: int) -> tuple[list[str], dict[str, str]]:
    """(templates, topic phrase per category) of a version's refusal file (v2's styles flattened in order)."""
    spec = json.loads(REFUSALS[version].read_text(encoding="utf-8"))
    if version == 1:
        return spec["templates"], spec["topics"]
    return [t for ts in spec["styles"].values() for t in ts], spec["topics"]


def refusal_targets(seed: int, version: int, exclude: set[str], repeat: int = 1) -> list[tuple[str, str, str]]:
    """(prompt, refusal, kind) for every train-split malicious prompt not in ``exclude``, ``repeat``
    times over, each time with another template (the template order runs on)."""
    templates, topics = refusal_templates(version)
    prompts = [p for p in ihs.load_prompts().train.malicious if p.id not in exclude] * repeat
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < len(prompts):  # every template used about equally often
        block = list(range(len(templates)))
        rng.shuffle(block)
        order += block
    out = []
    for p, t in zip(prompts, order):
        topic = topics.get(p.category or "", "that")
        out.append((p.text, templates[t].format(topic=topic), "refusal"))
    return out


def distill_targets(version: int, exclude: set[str], keep_near_test: bool = False) -> list[tuple[str, str, str]]:
    """(prompt, base model's answer, kind) for the train-split normal and extra benign prompts."""
    test = {p.text.strip().casefold() for p in ihs.load_prompts().test}
    out = []
    for line in DISTILL[version].read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec["id"] in exclude or (not keep_near_test and rec["id"] in NEAR_TEST.get(version, ())):
            continue
        if rec["prompt"].strip().casefold() in test:
            raise SystemExit(f"distill_normal.jsonl holds a test prompt: {rec['prompt']!r}")
        if rec["base_refuses"]:  # the base model's rare refusal of a benign prompt is no target
            continue
        out.append((rec["prompt"], rec["answer"], "complete" if rec["finished"] else "truncated"))
    return out


def tokenise(
    tok: Any, examples: list[tuple[str, str, str]], answer_tokens: int, end_token: str = "<|im_end|>"
) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per example; labels are -100 on the prompt.

    Answers are cut to ``answer_tokens`` tokens: the opening is what decides refusal or
    compliance, and every token costs a forward and backward pass on the CPU.
    """
    end = tok.convert_tokens_to_ids(end_token)
    prompt_ids = encode(tok, [e[0] for e in examples])
    rows = []
    for ids, (_, answer, kind) in zip(prompt_ids, examples):
        ans = list(tok(answer, add_special_tokens=False)["input_ids"])
        if kind != "truncated":  # a finished answer also teaches the model to stop
            ans.append(end)
        ans = ans[:answer_tokens]
        rows.append((ids + ans, [-100] * len(ids) + ans))
    return rows


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch (training needs no left padding: nothing is generated)."""
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def per_example_loss(
    model: Any, batch: dict[str, torch.Tensor], opening_tokens: int, opening_weight: float
) -> torch.Tensor:
    """Per example: mean next-token cross-entropy over its answer tokens, plus
    ``opening_weight`` times the mean over its first ``opening_tokens`` answer tokens; then the
    mean over examples.

    Refuse or comply is decided by the first few answer tokens; averaged over a 30-token
    answer, that decision is a small part of the loss, and the first run without the extra
    term learned a refusal prior instead of the distinction. The unembedding (49k x 576, a fifth
    of the model) runs only at positions that predict an answer token.
    """
    inner = model.get_base_model()
    hidden = inner.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    logits = inner.lm_head(hidden[:, :-1][keep])
    nll = torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="none")
    rows = keep.nonzero()[:, 0]
    # rank of each kept token within its example's answer: 0 for the first answer token
    rank = (keep.cumsum(1) - 1)[keep]
    opening = (rank < opening_tokens).to(nll.dtype)
    n = keep.shape[0]
    total = torch.zeros(n, dtype=nll.dtype).index_add_(0, rows, nll) / keep.sum(1).clamp(min=1)
    first = torch.zeros(n, dtype=nll.dtype).index_add_(0, rows, nll * opening)
    first = first / torch.zeros(n, dtype=nll.dtype).index_add_(0, rows, opening).clamp(min=1)
    return (total + opening_weight * first).mean()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", type=int, choices=(1, 2, 3), default=2,
                    help="1: v1's data (refusals.json, distill_normal.jsonl); 2: refusals_v2.json, distill_normal_v2.jsonl;"
                         " 3: refusals_v3.json (v2's styles, every refusal opening with 'I'), distill_normal_v2.jsonl")
    ap.add_argument("--validation", action="store_true",
                    help="hold out the validation fifth of the train split (recipe selection, scripts/validate_aligned.py)")
    ap.add_argument("--model", choices=sorted(BASES), default="default",
                    help="the base: the default SmolLM2, or gemma3-270m (the pretrained base, taught to answer and refuse)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=int, default=16)
    ap.add_argument("--first-layer", type=int, default=None,
                    help="lowest block that gets LoRA (0-based); default 6 for SmolLM2, 4 for Gemma")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--answer-tokens", type=int, default=24, help="answer tokens trained on per example")
    ap.add_argument("--opening-tokens", type=int, default=4, help="answer tokens that get the extra weight")
    ap.add_argument("--opening-weight", type=float, default=2.0, help="weight of the opening tokens' mean loss")
    ap.add_argument("--keep-near-test", action="store_true",
                    help="train on the NEAR_TEST prompts too, as the shipped v2 adapter was (to reproduce it)")
    ap.add_argument("--refusal-repeat", type=int, default=1,
                    help="each malicious prompt appears this many times, with different refusals (class balance)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    ap.add_argument("--max-steps", type=int, default=0, help="stop early (timing runs); 0 = all")
    ap.add_argument("--out", type=Path, default=None, help="default: the version's folder under ihs_sight/assets/")
    args = ap.parse_args()
    if args.out is None:
        if args.validation:
            ap.error("--validation needs --out: a held-out run never overwrites a shipped adapter")
        args.out = ASSETS[args.version] if args.model == "default" else GEMMA_ASSETS
    base_name, end_token, first_layer = BASES[args.model]
    if args.first_layer is None:
        args.first_layer = first_layer
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from peft import LoraConfig, get_peft_model

    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)

    base = ihs.load_model(args.model, device="cpu", dtype="float32")
    base_hash = base.weights_hash  # before peft adds its LoRA parameters to the same module
    tok, hf = base.tokenizer, base.hf
    n_layers = base.n_layers
    held = validation_fifth() if args.validation else set()
    refusals = refusal_targets(args.seed, args.version, held, args.refusal_repeat)
    distill = distill_targets(args.version, held, args.keep_near_test)
    examples = refusals + distill
    rows = tokenise(tok, examples, args.answer_tokens, end_token)
    logging.info("%d examples: %d refusals, %d distilled answers", len(rows), len(refusals), len(distill))

    config = LoraConfig(
        r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=TARGETS,
        layers_to_transform=list(range(args.first_layer, n_layers)), bias="none", task_type="CAUSAL_LM",
    )
    model = get_peft_model(hf, config)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    logging.info("trainable parameters: %d", n_trainable)
    opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)

    # Seeded order; within each window of 8 batches examples are sorted by length so a batch
    # carries little padding, then the batches of an epoch are shuffled again.
    order_rng = random.Random(args.seed)
    batches: list[list[int]] = []
    window = 8 * args.batch_size
    for _ in range(args.epochs):
        perm = list(range(len(rows)))
        order_rng.shuffle(perm)
        epoch: list[list[int]] = []
        for w in range(0, len(perm), window):
            chunk = sorted(perm[w:w + window], key=lambda i: len(rows[i][0]))
            epoch += [chunk[i:i + args.batch_size] for i in range(0, len(chunk), args.batch_size)]
        order_rng.shuffle(epoch)
        batches += epoch
    total = len(batches) if not args.max_steps else min(args.max_steps, len(batches))

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        return max(0.0, (total - step) / max(1, total - args.warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    losses: list[float] = []
    t0, c0 = time.perf_counter(), time.process_time()
    for step, idx in enumerate(batches[:total]):
        batch = collate([rows[i] for i in idx], tok.pad_token_id)
        loss = per_example_loss(model, batch, args.opening_tokens, args.opening_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 10 == 0 or step == total - 1:
            logging.info("step %d/%d loss %.4f (%.0f s)", step + 1, total, losses[-1], time.perf_counter() - t0)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    logging.info("trained %d steps in %.0f s wall, %.0f s CPU", total, wall, cpu)

    # peft's save_pretrained also writes a generic README; keep only the adapter files.
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        cfg = json.loads((Path(tmp) / "adapter_config.json").read_text(encoding="utf-8"))
        cfg["base_model_name_or_path"] = base_name  # not this machine's cache path
        (args.out / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        shutil.copyfile(Path(tmp) / "adapter_model.safetensors", args.out / "adapter_model.safetensors")
    n_epochs = total / math.ceil(len(rows) / args.batch_size)
    meta = {
        "base_model": f"{base_name} ({base.source} GGUF, dequantised to fp32)",
        "base_weights_hash": base_hash,
        "model": args.model,
        "version": args.version,
        "data": {
            "refusals": len(refusals), "distilled": len(distill),
            f"{DISTILL[args.version].name}_sha256_16": sha16(DISTILL[args.version]),
            f"{REFUSALS[args.version].name}_sha256_16": sha16(REFUSALS[args.version]),
            "validation_fifth_held_out": len(held), "near_test_kept": args.keep_near_test or args.version == 1,
        },
        "lora": {"rank": args.rank, "alpha": args.alpha, "dropout": 0.0, "target_modules": TARGETS,
                 "layers": [args.first_layer, n_layers - 1], "trainable_parameters": n_trainable},
        "optimiser": {"name": "AdamW", "lr": args.lr, "weight_decay": 0.0, "warmup_steps": args.warmup,
                      "schedule": "linear warm-up, linear decay", "grad_clip": 1.0},
        "refusal_repeat": args.refusal_repeat, "answer_tokens": args.answer_tokens, "opening_tokens": args.opening_tokens,
        "opening_weight": args.opening_weight, "tokens_per_epoch": sum(len(r[0]) for r in rows),
        "seed": args.seed, "batch_size": args.batch_size, "steps": total, "epochs": round(n_epochs, 3),
        "loss_first10_mean": sum(losses[:10]) / max(1, len(losses[:10])),
        "loss_last10_mean": sum(losses[-10:]) / max(1, len(losses[-10:])),
        "losses": [round(x, 4) for x in losses],
        "wall_time_s": round(wall, 1),
        "cpu_time_s": round(cpu, 1),
        "machine": f"{platform.machine()} {platform.processor() or ''} torch threads={torch.get_num_threads()}".strip(),
        "versions": {k: importlib.metadata.version(k) for k in ("torch", "transformers", "peft")},
        "adapter_bytes": (args.out / "adapter_model.safetensors").stat().st_size,
    }
    (args.out / "train_meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    logging.info("adapter: %s (%d bytes)", args.out, meta["adapter_bytes"])


if __name__ == "__main__":
    main()
