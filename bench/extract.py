"""Benchmark: seed-style hidden-state extraction against ``ihs_sight.extract``, same model and prompts.

Seed style (the original research code): one prompt at a time, ``output_hidden_states=True``,
every position of every layer copied to numpy, the last-token rows kept as numpy *views* (so
each prompt's full [L+1, S, D] arrays stay alive). Ours: batched, length-bucketed, one nnsight
trace per batch that saves only last-token slices.

Each (method, size) runs in its own process so peak RSS is measured separately; memory growth
per prompt is (peak at the large size - peak at the small size) / (difference in prompts).
The sizes are length-matched (same longest prompt, see ``_prompts``), so activation memory is
the same at both and the growth is what is kept per prompt.

    python bench/extract.py                 # 100 and 400 prompts
    python bench/extract.py --sizes 50 200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _prompts(n: int, n_max: int, tokenizer: object) -> list[str]:
    """``n`` prompts, length-matched across sizes.

    A seeded sample of ``n_max`` prompts is sorted by templated token length and every
    ``n_max / n``-th one is kept, the longest included: every size has the same longest
    prompt, so the widest batch (and its activation memory) is the same and the growth of peak
    RSS between sizes measures what is kept per prompt.
    """
    import ihs_sight as ihs
    from ihs_sight.prompts import encode

    data = ihs.load_prompts()
    base = data.normal + data.malicious
    if n_max > len(base):  # large sizes also draw on the jailbreak and wrapped-normal prompts
        base = data
    pool = base.sample(n_max, random_state=0).texts
    lengths = [len(r) for r in encode(tokenizer, pool)]
    order = sorted(range(n_max), key=lambda i: (-lengths[i], i))
    return [pool[i] for i in order[:: max(1, n_max // n)][:n]]


def worker(method: str, n: int, n_max: int, batch_size: int) -> dict[str, float]:
    import numpy as np
    import torch

    import ihs_sight as ihs
    from ihs_sight.prompts import encode

    model = ihs.load_model()
    prompts = _prompts(n, n_max, model.tokenizer)
    ids = encode(model.tokenizer, prompts)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    if method == "seed":
        kept = []
        with torch.no_grad():
            for row in ids:
                out = model.hf(input_ids=torch.tensor([row]), output_hidden_states=True)
                hs = [h.detach().numpy() for h in out.hidden_states]  # every position of every layer
                kept.append([h[:, -1, :] for h in hs])  # views: the full arrays stay alive
        result = np.stack([np.concatenate(k, 0) for k in kept])
        shape = result.shape
    else:
        states = ihs.extract(model, prompts, batch_size=batch_size, cache=False, progress=False)
        shape = tuple(states.states.shape)
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tokens = sum(len(r) for r in ids)
    return {"seconds": elapsed, "peak_rss_mib": peak, "rss_after_load_mib": rss_loaded, "n": n, "tokens": tokens,
            "shape": list(shape)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[100, 400])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--worker", choices=["seed", "ours"])
    parser.add_argument("--methods", nargs="+", choices=["seed", "ours"], default=["seed", "ours"],
                        help="e.g. --methods ours --sizes 400 1600: ours alone at sizes where the kept state "
                             "dominates the allocator's noise")
    parser.add_argument("--n", type=int)
    parser.add_argument("--n-max", type=int)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.n_max, args.batch_size)))
        return

    import torch

    import ihs_sight as ihs

    ihs.load_model()  # make sure the safetensors cache exists before timing anything
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, {platform.python_version()}, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), default model fp32 on CPU")
    results: dict[tuple[str, int], dict[str, float]] = {}
    for n in args.sizes:
        for method in args.methods:
            out = subprocess.run([sys.executable, __file__, "--worker", method, "--n", str(n),
                                  "--n-max", str(max(args.sizes)), "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True)
            results[(method, n)] = json.loads(out.stdout.strip().splitlines()[-1])
            r = results[(method, n)]
            print(f"{method:>5} n={n:<4} {r['seconds']:8.1f} s  {n / r['seconds']:6.2f} prompts/s  "
                  f"peak RSS {r['peak_rss_mib']:8.1f} MiB")
    small, large = args.sizes
    for n in args.sizes:
        if ("seed", n) in results and ("ours", n) in results:
            ratio = results[("seed", n)]["seconds"] / results[("ours", n)]["seconds"]
            print(f"n={n}: extract() is {ratio:.2f}x faster than the seed-style loop")
    model_dims = results[("ours", large)]["shape"]
    expected = model_dims[1] * model_dims[2] * 4
    for method in args.methods:
        growth = (results[(method, large)]["peak_rss_mib"] - results[(method, small)]["peak_rss_mib"]) * 1024 * 1024
        per_prompt = growth / (large - small)
        print(f"{method:>5}: peak RSS grows {per_prompt / 1024:9.1f} KiB per prompt "
              f"({per_prompt / expected:.1f}x the (L+1)*D*4 = {expected / 1024:.1f} KiB of kept state)")


if __name__ == "__main__":
    main()
