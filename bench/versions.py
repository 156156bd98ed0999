"""Benchmark: this checkout's library against an earlier commit's, same machine, same run, alternating.

What the other benches time on the library's side, timed for two versions of ihs_sight:

- ``extract``: ``ihs.extract(model, 100 direct test prompts, cache=False)`` (bench/extract.py's "ours");
- ``lens``: ``ihs.extract(model, 40 prompts, lens_top_k=5, cache=False)`` and ``ihs.logit_lens``
  on the same prompts (bench/lens.py's "ours", and the lens on its own);
- ``probe``: ``ihs.probe(train, test=test, classifiers=("svm", "mlp"))`` on every bundled normal
  and malicious prompt's cached states (bench/probe.py's "ours");
- ``guard``: ``Guard.score`` of the 276 test-split prompts at a fixed layer (bench/guard.py's
  guard side; the guard is fitted once per process, untimed).

Each repetition runs one process per version, the versions alternating (old, new, old, ...), each
importing its own checkout of ``ihs_sight`` (the earlier commit is checked out into a temporary
git worktree). Model loading, the weights hash and a warm-up call are outside the timings; each
task runs three times per process and its median counts. By default torch runs one thread and the
clock is the process's CPU time: the work each version does, little disturbed by other jobs on a
shared machine (``--threads 0 --clock wall`` for wall-clock time with torch's threads). The result is each task's median time per version and the ratio of speeds
``old_time / new_time`` (>= 1: the new code is faster).

    python bench/versions.py --old 99d2750            # 3 repetitions each
    python bench/versions.py --old HEAD~5 --reps 5 --out bench/versions.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, os, sys, time
import torch
import ihs_sight as ihs
from ihs_sight.guard import Guard

tasks = sys.argv[1].split(",")
if int(sys.argv[2]):
    torch.set_num_threads(int(sys.argv[2]))
clock = time.process_time if sys.argv[3] == "cpu" else time.perf_counter
model = ihs.load_model()
model.weights_hash  # computed once, outside the timings
data = ihs.load_prompts()
out = {"version_file": os.path.realpath(ihs.__file__)}

def timed(name, fn, texts, runs=3):
    fn(texts[:4])  # warm-up (lexicon ids, decoded vocabulary, first-call allocations)
    seconds = []
    for _ in range(runs):
        t0 = clock()
        fn(texts)
        seconds.append(clock() - t0)
    out[name] = sorted(seconds)[runs // 2]  # the median of the runs in this process

texts = (data.test.normal + data.test.malicious).sample(100, random_state=0).texts
if "extract" in tasks:
    timed("extract", lambda t: ihs.extract(model, t, cache=False, progress=False), texts)
if "lens" in tasks:
    timed("extract_lens", lambda t: ihs.extract(model, t, lens_top_k=5, cache=False, progress=False), texts[:40])
    timed("logit_lens", lambda t: ihs.logit_lens(model, t, top_k=5, progress=False), texts[:40])
if "probe" in tasks:
    pairs = data.normal + data.malicious
    train = ihs.extract(model, pairs.train, progress=False)
    test = ihs.extract(model, pairs.test, progress=False)
    timed("probe", lambda _: ihs.probe(train, test=test, classifiers=("svm", "mlp"), progress=False), [None] * 4)
if "guard" in tasks:
    train = data.train.normal + data.train.malicious
    guard = Guard.fit(model, train, layer=14, cv=2, cv_repeats=1, C=0.01, progress=False)
    test = data.test.normal + data.test.malicious
    timed("guard_score", lambda t: guard.score(t), test.texts)
print("RESULT " + json.dumps(out))
"""


def _checkout(rev: str, into: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(into), rev], check=True,
                   capture_output=True)
    return into


def _run(checkout: Path, tasks: str, env: dict[str, str], threads: int, clock: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as path:
        # ihs_sight from this checkout only: a folder whose one entry links to its package.
        (Path(path) / "ihs_sight").symlink_to(checkout / "ihs_sight")
        proc = subprocess.run([sys.executable, "-c", WORKER, tasks, str(threads), clock], env={**env, "PYTHONPATH": path},
                              capture_output=True, text=True, check=False, cwd=path)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"worker failed for {checkout}:\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    imported = str(result.pop("version_file"))
    if not imported.startswith(os.path.realpath(checkout)):
        raise SystemExit(f"the worker imported {imported}, not ihs_sight from {checkout}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="the earlier commit (any git revision)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tasks", default="extract,lens,probe,guard")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="process CPU time (default: with one thread, the work done, little affected by other "
                         "jobs on the machine) or wall-clock time")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    old_rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.old], check=True,
                             capture_output=True, text=True).stdout.strip()
    new_rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True,
                             capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "ihs_sight"], check=True,
                                capture_output=True, text=True).stdout.strip())
    times: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
    with tempfile.TemporaryDirectory() as tmp:
        old = _checkout(args.old, Path(tmp) / "old")
        try:
            for rep in range(args.reps):
                for side, checkout in (("old", old), ("new", ROOT)):
                    for task, seconds in _run(checkout, args.tasks, env, args.threads, args.clock).items():
                        times[side].setdefault(task, []).append(seconds)
                    print(f"rep {rep + 1}/{args.reps} {side}: " + ", ".join(
                        f"{k} {v[-1]:.2f} s" for k, v in times[side].items()), flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    summary = {}
    for task in times["new"]:
        t_old, t_new = statistics.median(times["old"][task]), statistics.median(times["new"][task])
        summary[task] = {"old_s": round(t_old, 3), "new_s": round(t_new, 3), "speed_ratio_new_over_old":
                         round(t_old / t_new, 3), "old_runs": [round(x, 3) for x in times["old"][task]],
                         "new_runs": [round(x, 3) for x in times["new"][task]]}
    result = {"old": old_rev, "new": new_rev + (" (+ uncommitted changes)" if dirty else ""), "reps": args.reps, "torch_threads": args.threads, "clock": args.clock,
              "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.platform()}",
              "python": platform.python_version(), "tasks": summary}
    print(json.dumps(result, indent=1))
    for task, row in summary.items():
        print(f"{task:13s} old {row['old_s']:7.2f} s  new {row['new_s']:7.2f} s  speed new/old "
              f"{row['speed_ratio_new_over_old']:.3f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
