"""GRPO step time and peak memory per backend, on the same tiny model and batch (our real training code path:
opgrpo_lib.train.run_grpo with the OP reward). Each backend runs in its own process (Unsloth must be imported
before transformers/trl/peft).

    python benchmarks/grpo_step.py                       # hf backend on this machine (CPU or GPU)
    python benchmarks/grpo_step.py --backends hf unsloth # on a CUDA machine with the [gpu] extra
    python benchmarks/grpo_step.py --model PATH --completion-length 256 --json

Needs no data download: the run directory is filled with a few synthetic OP-V2-style rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SITUATIONS = [
    ("Lying to protect a friend", ["Honesty", "Loyalty", "Care", "Duty to tell the truth", "Right to information"]),
    ("Eating meat", ["Animal welfare", "Tradition", "Health", "Right to choose one's diet", "Duty to avoid harm"]),
    (
        "Skipping school to care for a sick parent",
        ["Family", "Education", "Responsibility", "Duty to care", "Autonomy"],
    ),
    ("Donating a kidney to a stranger", ["Altruism", "Personal health", "Autonomy", "Duty of beneficence", "Risk"]),
]


def write_synthetic_data(run_dir: Path) -> None:
    import pandas as pd

    from opgrpo_lib.runs import atomic_write_parquet

    rows = []
    for i in range(16):
        prompt, names = SITUATIONS[i % len(SITUATIONS)]
        persp = [
            {"name": n, "explanation": f"People may value {n.lower()} when thinking about this ({i})."} for n in names
        ]
        answer = "\n".join(f"In the perspective of {p['name']}, {p['explanation']}" for p in persp)
        rows.append({"split": "5p", "row_index": i, "prompt": f"{prompt} #{i}", "answer": answer, "perspectives": persp,
                     "n_perspectives": len(persp)})  # fmt: skip
    df = pd.DataFrame(rows)
    atomic_write_parquet(df, run_dir / "data" / "train.parquet")
    atomic_write_parquet(df.iloc[:4], run_dir / "data" / "eval.parquet")


def one(backend: str, args) -> dict:
    """Run ``args.steps`` GRPO steps in this process and measure them."""
    if backend == "unsloth":
        from opgrpo_lib.train import ensure_unsloth

        ensure_unsloth()
    from transformers import TrainerCallback

    from opgrpo_lib import train
    from opgrpo_lib.config import load_profile
    from opgrpo_lib.runs import run_paths

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], None

        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    timer = StepTimer()
    tmp = Path(tempfile.mkdtemp(prefix="grpo_bench_"))
    write_synthetic_data(tmp)
    grpo = {"max_steps": args.steps, "per_device_train_batch_size": args.batch, "num_generations": args.generations,
            "max_completion_length": args.completion_length, "learning_rate": 1e-5, "beta": 0.001, "loss_type": "dapo",
            "logging_steps": 1, "save_strategy": "no", "gradient_checkpointing": False}  # fmt: skip
    overrides = {"train.backend": backend, "train.init": args.model, "reward.estimator": args.estimator,
                 "train.grpo": grpo, "train.lora.enabled": backend == "unsloth" or args.lora,
                 "device": "auto"}  # fmt: skip
    cfg = load_profile("tiny", overrides)
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train.run_grpo(cfg, run_paths(cfg, tmp, tmp / "results"), resume=False, callbacks=[timer])
    wall = time.perf_counter() - t0
    steady = timer.times[1:] or timer.times
    out = {"backend": backend, "device": "cuda" if torch.cuda.is_available() else "cpu",
           "steps": len(timer.times), "step_s_mean": round(sum(steady) / len(steady), 4),
           "first_step_s": round(timer.times[0], 4) if timer.times else None, "wall_s": round(wall, 2),
           "completions_per_step": args.batch, "completion_length": args.completion_length}  # fmt: skip
    if torch.cuda.is_available():
        out["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        out["gpu"] = torch.cuda.get_device_name(0)
    import resource

    out["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", nargs="+", default=["hf"])
    p.add_argument("--model", default="tiny:causal-lm")
    p.add_argument("--estimator", default="tiny:encoder")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=8, help="completions per step (per device)")
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--completion-length", type=int, default=64)
    p.add_argument("--lora", action="store_true", help="LoRA for the hf backend too (unsloth always uses LoRA)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args)), flush=True)
        return
    results = []
    for backend in args.backends:
        cmd = [sys.executable, __file__, "--one", backend] + [
            a for a in sys.argv[1:] if a not in args.backends and a not in ("--backends", "--json")
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            results.append({"backend": backend, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]})
        else:
            results.append(json.loads(line[7:]))
    if args.json:
        print(json.dumps(results))
        return
    print(f"{'backend':<9}{'device':<8}{'steps':>6}{'s/step':>9}{'first s':>9}{'peak GPU GB':>12}{'peak RSS GB':>12}")
    for r in results:
        if "error" in r:
            print(f"{r['backend']:<9}error: {r['error']}")
            continue
        print(f"{r['backend']:<9}{r['device']:<8}{r['steps']:>6}{r['step_s_mean']:>9.3f}{r['first_step_s']:>9.3f}"
              f"{r.get('peak_gpu_mem_gb', float('nan')):>12.3f}{r['peak_rss_gb']:>12.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
