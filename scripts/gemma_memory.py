"""Peak memory of Gemma-3-270m on the whole bundled test split: extraction and the logit lens.

Gemma-3's vocabulary has 262,144 tokens, so a lens over every layer would be 19 x 262k floats per
prompt if it were materialised on the host. ihs-sight keeps it on the device and returns only the
top-k tokens and the lexicon masses. This script loads ``gemma3-270m`` (float32, CPU), extracts the
last-token states of every test-split prompt (normal, malicious, jailbreaks and wrapped normals)
and runs the lens with emotion masses on the same prompts, then records the process's peak
resident memory (``ru_maxrss``) after each step in ``docs/gemma_memory.json``.

    python scripts/gemma_memory.py          # about 5 minutes on 2 CPU cores; the model must be cached
"""

from __future__ import annotations

import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

import ihs_sight as ihs
from ihs_sight.lens import logit_lens

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "gemma_memory.json"
LIMIT_GB = 6.0


def peak_gb() -> float:
    """Peak resident set size of this process so far, in GB (Linux reports kB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss * (1 if sys.platform == "darwin" else 1024) / 1e9, 3)


def main() -> None:
    data = ihs.load_prompts()
    prompts = data.test.normal + data.test.malicious + data.jailbreak + data.wrapped_normal
    steps: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()
    model = ihs.load_model("gemma3-270m", device="cpu", dtype="float32")
    steps["load"] = {"peak_rss_gb": peak_gb(), "seconds": round(time.perf_counter() - t0, 1)}
    t0 = time.perf_counter()
    states = ihs.extract(model, prompts, cache=False, progress=False)
    steps["extract"] = {"peak_rss_gb": peak_gb(), "seconds": round(time.perf_counter() - t0, 1)}
    t0 = time.perf_counter()
    lens = logit_lens(model, prompts, top_k=5, progress=False)
    steps["lens"] = {"peak_rss_gb": peak_gb(), "seconds": round(time.perf_counter() - t0, 1)}
    peak = max(s["peak_rss_gb"] for s in steps.values())
    result = {
        "model": model.name, "weights_hash": model.weights_hash, "dtype": str(model.dtype),
        "n_prompts": len(prompts), "states_shape": list(states.states.shape), "lens_top_k": lens.top_k,
        "steps": steps, "peak_rss_gb": peak, "limit_gb": LIMIT_GB, "below_limit": peak < LIMIT_GB,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
    }
    OUT.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
