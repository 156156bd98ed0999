"""Benchmark: the early-exit guard's cost against a full forward pass, same prompts, same run.

The guard runs blocks ``1..layer`` and stops (nnsight ``tracer.stop()``); the baseline is the
model's plain transformers forward over the same length-bucketed, left-padded batches (all L
blocks, the final norm and the last position's logits). Target: guard time <= 1.1 x (layer / L)
of the baseline. Also timed: the same guard trace without the stop (what the stop saves).

    python bench/guard.py                    # guard fitted on the default model's train split
    python bench/guard.py --layer 8          # a fixed guard layer
    python bench/guard.py --model default-aligned --guard docs/guards/default-aligned-wrapped \
        --out bench/guard_wrapped.json                                                          # a saved guard
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--layer", default="auto", help="'auto' or a layer index")
    ap.add_argument("--guard", default=None, help="a saved guard bundle to time instead of fitting one")
    ap.add_argument("--out", default=None, help="also write the result to this JSON file")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    args = ap.parse_args()

    import torch

    import ihs_sight as ihs
    from ihs_sight.guard import TOKEN_POOLS, Guard, layer_features, token_states
    from ihs_sight.prompts import encode
    from ihs_sight.runtime.packing import length_batches, pad_batch
    from ihs_sight.runtime.traces import forward_kwargs

    if args.threads:
        torch.set_num_threads(args.threads)
    model = ihs.load_model(args.model)
    data = ihs.load_prompts()
    layer = args.layer if args.layer == "auto" else int(args.layer)
    if args.guard:
        guard = Guard.load(args.guard, model)
    else:
        guard = Guard.fit(model, data.train.normal + data.train.malicious, layer=layer, progress=False)
    prompts = (data.test.normal + data.test.malicious).texts
    ids = encode(model.tokenizer, prompts, chat=True, system_prompt=None)
    batches = [pad_batch([ids[i] for i in b], model.pad_id)
               for b in length_batches([len(r) for r in ids], args.batch_size)]
    n_real = sum(len(r) for r in ids)

    def full() -> None:  # inference_mode: the cheapest plain forward (a conservative baseline)
        with torch.inference_mode():
            for pb in batches:
                model.hf(**pb, **forward_kwargs(model))

    def guard_run() -> None:
        guard.score(prompts, batch_size=args.batch_size)

    def no_stop() -> None:  # the same reads, but the pass runs on to the end (layer L read too)
        if guard.pool in TOKEN_POOLS:
            token_states(model, prompts, [guard.layer, model.n_layers], batch_size=args.batch_size, progress=False)
        else:
            layer_features(model, prompts, [guard.layer, model.n_layers], pool=guard.pool,
                           batch_size=args.batch_size, cache=False, progress=False)

    def timed(fn: object) -> float:
        assert callable(fn)
        fn()  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    t_full, t_guard, t_nostop = timed(full), timed(guard_run), timed(no_stop)
    share = guard.layer / model.n_layers
    ratio = t_guard / t_full
    result = {
        "model": model.name, "n_prompts": len(prompts), "real_tokens": n_real, "batch_size": args.batch_size,
        "layer": guard.layer, "n_layers": model.n_layers, "pool": guard.pool,
        "full_forward_s": round(t_full, 4), "guard_s": round(t_guard, 4), "guard_without_stop_s": round(t_nostop, 4),
        "ratio_guard_over_full": round(ratio, 4), "layer_share": round(share, 4),
        "target_ratio": round(1.1 * share, 4), "meets_target": ratio <= 1.1 * share,
        "torch_threads": torch.get_num_threads(), "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "torch": torch.__version__,
    }
    if args.guard:
        result["guard_bundle"] = args.guard
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(json.dumps(result, indent=1) + "\n")
    print(f"\nguard (blocks 1..{guard.layer} of {model.n_layers}): {t_guard:.3f} s; full forward: {t_full:.3f} s; "
          f"ratio {ratio:.3f} (target <= 1.1 x {share:.3f} = {1.1 * share:.3f}: "
          f"{'met' if ratio <= 1.1 * share else 'NOT met'}); without the stop: {t_nostop:.3f} s")


if __name__ == "__main__":
    main()
