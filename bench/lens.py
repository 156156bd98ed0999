"""Benchmark: the seed's per-prompt logit lens against extract(..., lens_top_k=5) in one batched trace.

Baseline (written here in the style of the seed's ``step_forward``): for one prompt at a time,
a transformers forward with ``output_hidden_states=True``, then the final norm and the
unembedding over **every position** of **every** hidden state, the top-k of the last position,
each id decoded, and every hidden state kept as numpy. The seed applies the norm to
``hidden_states[L]`` too, which transformers has already normed: its last layer is normed
twice, so its top-k there is not the model's; agreement is reported for layers ``0..L-1``.

Ours: ``ihs.extract(model, prompts, lens_top_k=5, cache=False)``: length-bucketed, left-padded
batches, one nnsight trace each, the lens computed on the last token only inside the trace.

Run from the repository root::

    python bench/lens.py                    # 40 prompts, 1 torch thread
    python bench/lens.py --prompts 80 --threads 2

Both sides run in the same process on the same prompts, alternating when ``--reps`` > 1,
after a warm-up of each (model weights hash and lexicon ids are computed once per process and
excluded from the timing). Wall-clock and process CPU time are both reported: on a shared
machine the wall clock includes waiting for the CPU, while with one torch thread the CPU
time is the work each side does.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch

import ihs_sight as ihs
from ihs_sight.prompts import render


def seed_style_step_forward(hf: Any, tokenizer: Any, text: str, k: int) -> tuple[list[list[int]], list[Any]]:
    """One prompt the seed's way: every position of every hidden state through norm + lm_head."""
    inputs = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = hf(inputs["input_ids"], output_hidden_states=True)
        ids_per_layer, pairs = [], []
        for hidden in out.hidden_states:
            logits = hf.lm_head(hf.model.norm(hidden))  # [1, S, V]: all positions, then keep the last
            values, indices = torch.topk(logits[:, -1, :], k, dim=-1)
            ids = indices.squeeze(0).tolist()
            tokens = [tokenizer.decode([i], skip_special_tokens=False) for i in ids]
            pairs.append(list(zip(tokens, values.squeeze(0).tolist())))
            ids_per_layer.append(ids)
    states = [h.detach().cpu().numpy() for h in out.hidden_states]
    return ids_per_layer, [states, pairs]


def flop_estimate(model: ihs.Model, token_ids: list[list[int]], batch_size: int) -> tuple[float, float]:
    """(seed, ours) matrix-multiply FLOPs for these prompts (attention scores, norms ignored).

    Seed: per prompt, every block and the model's head over every token, then the head again
    over every position of all L+1 hidden states. Ours: every block over the padded batches,
    the head on the last position only, and the lens head once per layer on the last token.
    """
    from ihs_sight.runtime.packing import length_batches

    cfg = model.config
    d, ff, vocab, n_layers = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * (d // cfg.num_attention_heads)
    block = 2 * (2 * d * d + 2 * d * kv + 3 * d * ff)
    head = 2 * d * vocab
    lengths = [len(r) for r in token_ids]
    slots = sum(max(lengths[i] for i in b) * len(b) for b in length_batches(lengths, batch_size))
    seed = sum(n * (n_layers * block + head) + (n_layers + 1) * n * head for n in lengths)
    ours = slots * n_layers * block + len(lengths) * (n_layers + 2) * head
    return seed, ours


def machine_info(threads: int) -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("torch", "transformers", "nnsight"))
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (
        f"{platform.platform()} | {cpu} x{os.cpu_count()} | torch threads {threads} | {versions} | "
        f"python {platform.python_version()} | load average {load[0]:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=40, help="prompts (half malicious, half normal)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--reps", type=int, default=1, help="timed repetitions of each side (median reported)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = ihs.load_model()
    data = ihs.load_prompts()
    half = args.prompts // 2
    prompts = data.test.malicious.head(half) + data.test.normal.head(args.prompts - half)
    texts = [render(model.tokenizer, t) for t in prompts.texts]
    token_ids = [list(model.tokenizer(t)["input_ids"]) for t in texts]
    lengths = [len(r) for r in token_ids]
    print(f"machine: {machine_info(args.threads)}")
    print(
        f"model: {model!r}; {len(prompts)} prompts ({half} malicious, {len(prompts) - half} normal), "
        f"{min(lengths)}-{max(lengths)} tokens (mean {statistics.mean(lengths):.1f}), k={args.k}, "
        f"batch_size={args.batch_size}"
    )

    # Warm-up: weights hash, lexicon ids, vocabulary strings, first-call allocations.
    seed_style_step_forward(model.hf, model.tokenizer, texts[0], args.k)
    ihs.extract(
        model, prompts.head(2), lens_top_k=args.k, cache=False, progress=False, batch_size=args.batch_size
    )

    wall: dict[str, list[float]] = {"seed": [], "ours": []}
    cpu: dict[str, list[float]] = {"seed": [], "ours": []}
    seed_ids: list[list[list[int]]] = []
    ours = None
    for _ in range(args.reps):
        t0, c0 = time.perf_counter(), time.process_time()
        seed_ids = [seed_style_step_forward(model.hf, model.tokenizer, t, args.k)[0] for t in texts]
        wall["seed"].append(time.perf_counter() - t0)
        cpu["seed"].append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        ours = ihs.extract(
            model, prompts, lens_top_k=args.k, cache=False, progress=False, batch_size=args.batch_size
        )
        wall["ours"].append(time.perf_counter() - t0)
        cpu["ours"].append(time.process_time() - c0)
    if ours is None or ours.lens is None:
        raise SystemExit("extract returned no lens")
    for name, label in (
        ("seed", "seed-style step_forward, one prompt at a time"),
        ("ours", f"extract(lens_top_k={args.k}), batched trace    "),
    ):
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(
            f"{label}: wall {w:8.2f} s ({w / len(texts):.3f} s/prompt) | cpu {c:8.2f} s "
            f"| runs {[round(t, 2) for t in wall[name]]}"
        )
    for kind, times in (("wall", wall), ("cpu", cpu)):
        print(
            f"speed-up ({kind}): {statistics.median(times['seed']) / statistics.median(times['ours']):.1f}x"
        )
    seed_flops, our_flops = flop_estimate(model, token_ids, args.batch_size)
    print(
        f"matmul FLOPs: seed {seed_flops / 1e9:.0f} G, ours {our_flops / 1e9:.0f} G "
        f"-> {seed_flops / our_flops:.1f}x "
        "(the speed-up a CPU reaches at equal efficiency; more needs batched kernels to run faster per FLOP)"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")

    seed = torch.tensor(seed_ids)  # [N, L+1, k]
    n_layers = model.n_layers
    same = (seed == ours.lens.token_ids).all(-1)  # [N, L+1]: identical ordered top-k per prompt
    below = same[:, :n_layers]
    print(
        f"top-{args.k} identical (ids and order) on layers 0..{n_layers - 1}: "
        f"{int(below.sum())}/{below.numel()} prompt-layers; layers with any difference: "
        f"{[layer for layer in range(n_layers) if not bool(below[:, layer].all())]}"
    )
    print(
        f"layer {n_layers}: identical for {int(same[:, n_layers].sum())}/{len(texts)} prompts — the seed "
        "normalises transformers' already-normed last hidden state a second time; ours is the model's own "
        "next-token distribution (tests/test_lens.py checks it against the logits)."
    )


if __name__ == "__main__":
    main()
