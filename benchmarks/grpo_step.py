"""GRPO step cost per backend: s/step (generation / training), completion tokens/s and peak GPU memory.

Plain TRL (``hf``: transformers + PEFT) against Unsloth (``unsloth``; ``unsloth-4bit`` = the same with the base
weights in 4 bit) on the same randomly initialised model of a chosen shape (``benchmarks/shapes.py``: tiny or
Qwen2.5-0.5B/1.5B/3B-Instruct's architecture), the same prompts, seed and settings: TRL's ``GRPOTrainer`` with the
paper profile's GRPO settings (``configs/paper.yaml``: one optimizer step = 160 completions = 16 prompts x 10
generations, micro-batches of 20, generated 160 per call, 800-token completions, temperature 1, beta 0.001, dapo
loss, gradient checkpointing), LoRA from ``train.lora`` or full fine-tuning (``--full-finetune``, fp32 masters +
bf16 autocast), loaded through ``opgrpo_lib.train.load_model`` with the profile's precision plan (our training code
path). One optimizer step = one generation of ``--batch`` completions + one policy update; the first (warm-up) step
is not counted. Each backend runs in its own process (Unsloth must be imported before transformers/trl/peft); the
JSON is rewritten after each backend.

    python benchmarks/grpo_step.py --device cpu --shape tiny     # CPU smoke, shortened settings, < 1 min
    python benchmarks/grpo_step.py --shape qwen2.5-3b --full-finetune   # CUDA: hf + unsloth, the paper's step,
                                                                  # writes results/gpu/grpo_step_qwen2.5-3b.json
    python benchmarks/grpo_step.py --shape qwen2.5-3b --backends hf unsloth unsloth-4bit --steps 4
    python benchmarks/grpo_step.py --device cpu --profile cpu --model runs/cpu/sft/policy --reward op \
        --estimator runs/cpu/estimator/model --data runs/cpu/data/train.parquet   # the cpu profile's own step

``--profile cpu`` takes every GRPO setting from ``configs/cpu.yaml`` (no CPU shortening); ``--model`` benchmarks
trained weights (e.g. the SFT policy GRPO starts from, so completions end where they really end) instead of a
random shape; ``--data`` uses real training rows (a prepared ``train.parquet``) instead of synthetic ones, so the
reward scores real references.

Tokenizer: the qwen2.5-* shapes keep Qwen's 151,936-entry vocabulary (embedding and LM head cost as the real
model) while prompts are tokenised by the SmolLM2 tokenizer (49,152 entries, same ChatML turn markers), the only
one available offline; sampled ids beyond it decode to nothing, which only changes the reward's input text.
Reward: ``length`` (default; characters of the decoded completion / 1000, trivially cheap: the point is the step
cost) or ``op`` (the real OP reward with ``--estimator``, default the in-code tiny encoder). With random weights
almost no completion ends early, so every step generates the full completion length (worst case; reported as
``clipped_ratio``).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

BACKENDS = ("hf", "unsloth", "unsloth-4bit")
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
STAGED_TOKENIZER = ROOT / ".whl" / "tokenizer-smollm2"  # scripts/fetch_gpu_wheels.py puts it there for the device
CPU_SETTINGS = {"batch": 8, "generations": 4, "completion_length": 32}  # shortened: CPU smoke only
VERSIONED = (
    "torch",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "unsloth",
    "unsloth_zoo",
    "bitsandbytes",
    "xformers",
    "triton",
)
SITUATIONS = [
    "Lying to protect a friend",
    "Eating meat",
    "Skipping school to care for a sick parent",
    "Donating a kidney to a stranger",
    "Reporting a colleague who steals office supplies",
    "Breaking a promise to help a stranger in danger",
    "Using a loophole to pay less tax",
    "Keeping a found wallet when the owner is rich",
]
ANSWER = "In the perspective of Honesty, telling the truth matters.\nIn the perspective of Care, people may be hurt."


def synthetic_frame(rows: int, data: str | None = None):
    """OP-V2-shaped training rows (prompt = a situation; answer = a reference core block); the first ``rows`` of a
    prepared ``train.parquet`` when ``data`` is given."""
    import pandas as pd

    if data:
        return pd.read_parquet(data).iloc[:rows][["prompt", "answer"]]
    return pd.DataFrame(
        {"prompt": [f"{SITUATIONS[i % len(SITUATIONS)]} (case {i})" for i in range(rows)], "answer": [ANSWER] * rows}
    )


# ---------------------------------------------------------------- child: build the model once
def prepare(work: Path) -> None:
    s = json.loads((work / "settings.json").read_text())
    if (work / "model.json").exists() and (work / "model" / "config.json").exists():
        built = json.loads((work / "model.json").read_text())
        if built.get("built_for") == [s["shape"], s["model"], s["tokenizer"], s["device"]]:
            return  # the same model, built by an earlier run in this --work-dir (gpu_check.sh: full FT, then LoRA)
    import torch

    if s["model"]:
        info = trained_model(Path(s["model"]), work / "model")
    else:
        info = random_model(s, work)
    from transformers import AutoTokenizer

    from opgrpo_lib.train import grpo_dataset

    tok = AutoTokenizer.from_pretrained(str(work / "model"))
    ds = grpo_dataset(synthetic_frame(s["rows"], s["data"]))
    lengths = [
        len(tok(tok.apply_chat_template(x["prompt"], tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"])
        for x in ds
    ]  # fmt: skip
    info["prompt_tokens"] = {"mean": round(sum(lengths) / len(lengths), 1), "max": max(lengths)}
    if s["device"] == "cuda":
        p = torch.cuda.get_device_properties(0)
        info["device"] = {
            "type": "cuda",
            "name": p.name,
            "count": torch.cuda.device_count(),
            "total_memory_gib": round(p.total_memory / 2**30, 1),
            "capability": f"{p.major}.{p.minor}",
            "cuda": torch.version.cuda,
        }
    else:
        info["device"] = {
            "type": "cpu",
            "name": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
        }
    info["built_for"] = [s["shape"], s["model"], s["tokenizer"], s["device"]]
    (work / "model.json").write_text(json.dumps(info, indent=1))


def trained_model(src: Path, dest: Path) -> dict:
    """Benchmark trained weights: ``dest`` links to ``src`` (a saved model folder with its tokenizer)."""
    from transformers import AutoConfig, AutoTokenizer

    if not (src / "config.json").exists():
        raise SystemExit(f"--model {src}: no config.json there (a saved model folder, e.g. runs/cpu/sft/policy)")
    dest.symlink_to(src.resolve(), target_is_directory=True)
    from shapes import SIZES

    conf = AutoConfig.from_pretrained(str(src))
    keys = ("model_type", *SIZES)
    return {
        "weights": "trained",
        "config_source": str(src),
        "config": {k: getattr(conf, k, None) for k in keys},
        "tokenizer": {"name": str(src), "vocab_size": len(AutoTokenizer.from_pretrained(str(src)))},
    }


def random_model(s: dict, work: Path) -> dict:
    """Build ``s["shape"]`` with random weights in ``work/model`` (the tokenizer: tiny's or SmolLM2's)."""
    import torch
    from shapes import save_random_model

    from opgrpo_lib.models import resolve

    name = s["tokenizer"]
    if name == "auto":
        name = "tiny:causal-lm" if s["shape"] == "tiny" else SMOLLM2
    path = resolve(name)
    if not Path(path).exists() and name == SMOLLM2 and (STAGED_TOKENIZER / "tokenizer.json").exists():
        path = str(STAGED_TOKENIZER)
    if not Path(path).exists():
        raise SystemExit(
            f"no offline copy of the {name} tokenizer: run `opgrpo models build` (or `make models`) here, or stage "
            "it for the device machine with scripts/fetch_gpu_wheels.py"
        )
    cuda = s["device"] == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    info = save_random_model(s["shape"], path, work / "model", device=s["device"], dtype=dtype, seed=s["seed"])
    info["tokenizer"] = {"name": name, "vocab_size": info.pop("tokenizer_vocab_size")}
    if info["tokenizer"]["vocab_size"] != info["config"]["vocab_size"]:
        info["tokenizer"]["note"] = (
            f"the model keeps the {info['config']['vocab_size']}-entry vocabulary of {info['config_source']} (so the "
            f"embedding and LM head cost is the real model's); prompt token ids come from the "
            f"{info['tokenizer']['vocab_size']}-entry {name} tokenizer, and sampled ids beyond it decode to nothing"
        )
    return info


# ---------------------------------------------------------------- child: one backend
def _mean(xs):
    xs = [x for x in xs if x is not None]
    return round(sum(xs) / len(xs), 4) if xs else None


def split_step(step: dict) -> dict:
    """One optimizer step's wall time split: generation (TRL's profiled ``transformers.generate`` block),
    reference/old log-prob forward (profiled log-prob calls before the reward), reward (our wrapper), policy
    forward+backward+optimizer (after the reward to the step's end) and the rest (templating, decoding, advantages)."""
    start, end = step["start"], step["end"]
    recs, rewards = step["records"], step["rewards"]
    first_reward = min((r[0] for r in rewards), default=end)
    last_reward = max((r[1] for r in rewards), default=start)
    gen = [e - b for n, b, e in recs if n.endswith(("generate", "generate_batch"))]
    logps = [(b, e) for n, b, e in recs if n.endswith("_get_per_token_logps_and_entropies")]
    ref = sum(e - b for b, e in logps if e <= first_reward) if logps else None  # None: not profiled
    generation = sum(gen) if gen else max(0.0, first_reward - start - (ref or 0.0))
    reward = sum(e - b for b, e, _ in rewards)
    policy = max(0.0, end - last_reward) if rewards else None
    total = end - start
    out = {
        "step_s": total,
        "generation_s": generation,
        "training_s": total - generation,
        "reward_s": reward,
        "reference_forward_s": ref,
        "policy_forward_backward_s": policy,
        "other_s": total - generation - reward - (ref or 0.0) - (policy or 0.0),
        "completion_tokens": sum(n for _, _, n in rewards),
        "generation_timing": "profiled" if gen else "step start to reward (no profiled generate block)",
    }
    return out


@dataclasses.dataclass
class _Measured:
    """What one backend's run records while it trains: profiled blocks, reward calls, steps, memory."""

    backend: str
    s: dict
    sync: Any
    records: list = dataclasses.field(default_factory=list)  # (block, start, end) of every TRL-profiled block
    reward_calls: list = dataclasses.field(default_factory=list)  # (start, end, completion tokens)
    steps: list = dataclasses.field(default_factory=list)
    load_s: float = 0.0
    resident: int = 0
    plan: Any = None
    trainer: Any = None
    computed: dict = dataclasses.field(default_factory=dict)


def _record_profiled_blocks(records: list) -> None:
    """Append (name, start, end) of every block TRL profiles to ``records``."""
    import trl.extras.profiling as profiling

    log_metrics = profiling.ProfilingContext._log_metrics

    def _record(self, duration):
        end = time.perf_counter()
        records.append((self.name, end - duration, end))
        return log_metrics(self, duration)

    profiling.ProfilingContext._log_metrics = _record


def _overrides(s: dict, backend: str) -> dict:
    """The profile overrides of the benchmarked step: one generation per optimizer step, nothing saved."""
    accumulation = s["batch"] // s["micro_batch"]  # micro-batches per optimizer step; one generation per step
    grpo = {
        "per_device_train_batch_size": s["micro_batch"],
        "num_generations": s["generations"],
        "max_completion_length": s["completion_length"],
        "gradient_accumulation_steps": accumulation,
        "steps_per_generation": accumulation,
        "max_steps": s["steps"],
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
    }
    return {
        "seed": s["seed"],
        "device": s["device"],
        "train.backend": backend.split("-")[0],
        "train.load_in_4bit": backend == "unsloth-4bit",
        "train.use_vllm": False,
        "train.lora.enabled": not s["full_finetune"],
        "train.generation_chunk": s["chunk"],
        "train.grpo": grpo,
    }


def _reward_fn(m: _Measured, cfg: Any, tok: Any) -> Any:
    """The benchmarked reward (``op`` or ``length``), timed per call into ``m.reward_calls``."""
    s = m.s
    scorer = None
    if s["reward"] == "op":
        from opgrpo_lib.models import resolve
        from opgrpo_lib.reward import build_reward

        scorer = build_reward(cfg.reward, resolve(s["estimator"]), tokenizer=tok, device=s["device"])

    def reward_fn(prompts, completions, completion_ids=None, **kw):
        b = time.perf_counter()
        if scorer is not None:
            out = scorer(prompts=prompts, completions=completions, **kw)
        else:
            out = [len(c[-1]["content"] if isinstance(c, list) else c) / 1000.0 for c in completions]
        m.sync()
        m.reward_calls.append((b, time.perf_counter(), sum(len(x) for x in completion_ids or [])))
        return out

    reward_fn.__name__ = f"{s['reward']}_reward"
    return reward_fn


STEP_PARTS = (
    "step_s",
    "generation_s",
    "training_s",
    "reward_s",
    "reference_forward_s",
    "policy_forward_backward_s",
    "other_s",
    "completion_tokens",
)


def _memory(m: _Measured, row: dict) -> None:
    """GPU memory (measured and computed), peak RSS and trainable parameters into ``row``."""
    import resource

    import torch

    if m.s["device"] == "cuda":
        row["model_gpu_mem_gib"] = round(m.resident / 2**30, 3)
        row["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        row["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
    row["computed_peak_gib"], row["computed_parts_gib"] = m.computed["peak_gib"], m.computed["parts_gib"]
    row["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    row["trainable_parameters"] = sum(p.numel() for p in m.trainer.model.parameters() if p.requires_grad)


def summarize(m: _Measured, status: str) -> dict:
    """One backend's row: step times split by part (warm-up step not counted), TRL's logged lengths, memory."""
    parts = [split_step(x) for x in m.steps]
    measured = parts[1:]  # the first step (warm-up: kernels, compilation, allocator) is not counted
    warmup_only = not measured and bool(parts)
    if warmup_only:  # cut by the time budget after one step: report it, marked (an upper bound)
        measured = parts
    model = m.trainer.model
    row = {
        "backend": m.backend,
        "status": status,
        "load_in_4bit": m.backend == "unsloth-4bit",
        "steps": len(parts),
        "measured_steps": len(measured),
        "load_s": round(m.load_s, 2),
        "first_step_s": round(parts[0]["step_s"], 3) if parts else None,
        "step_times_s": [round(p["step_s"], 3) for p in parts],
        "warmup_only": warmup_only,
        "finetuning": "full" if m.s["full_finetune"] else "lora",
        "precision": dataclasses.asdict(m.plan),
        "trainable_dtype": sorted({str(p.dtype) for p in model.parameters() if p.requires_grad}),
    }
    row.update({key: _mean([p[key] for p in measured]) for key in STEP_PARTS})
    row["generation_timing"] = measured[0]["generation_timing"] if measured else None
    row["reward_share"] = round(row["reward_s"] / row["step_s"], 4) if row["step_s"] else None
    if row["completion_tokens"]:
        row["completion_tokens_per_s"] = round(row["completion_tokens"] / row["step_s"], 1)
        row["generation_tokens_per_s"] = round(row["completion_tokens"] / row["generation_s"], 1)
    logs = [h for h in m.trainer.state.log_history if "completions/mean_length" in h]
    for key, name in (
        ("completions/mean_length", "mean_completion_length"),
        ("completions/clipped_ratio", "clipped_ratio"),
        ("step_time", "trl_step_time_s"),
    ):
        row[name] = _mean([h.get(key) for h in logs[1:] or logs])
    _memory(m, row)
    return row


def _step_timer(m: _Measured, work: Path) -> Any:
    """A callback that marks each optimizer step's start and end and saves the partial row after each."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            m.sync()
            self.mark = (time.perf_counter(), len(m.records), len(m.reward_calls))

        def on_step_end(self, a, state, control, **kw):
            m.sync()
            t, i, j = self.mark
            m.steps.append(
                {"start": t, "end": time.perf_counter(), "records": m.records[i:], "rewards": m.reward_calls[j:]}
            )
            # what was measured so far survives a kill at the parent's --timeout
            (work / f"partial_{m.backend}.json").write_text(json.dumps(summarize(m, "partial")))

    return StepTimer()


def one(work: Path, backend: str) -> dict:
    """Run the GRPO steps for ``backend`` in this process and measure them."""
    s = json.loads((work / "settings.json").read_text())
    if backend.startswith("unsloth"):
        from opgrpo_lib.train import ensure_unsloth

        ensure_unsloth()  # before transformers / trl / peft
    import torch
    from trl import GRPOTrainer

    from opgrpo_lib import train
    from opgrpo_lib.config import load_profile
    from opgrpo_lib.gpu import memory, shape_of

    cuda = s["device"] == "cuda"
    m = _Measured(backend, s, torch.cuda.synchronize if cuda else (lambda: None))
    _record_profiled_blocks(m.records)
    cfg = load_profile(s["profile"], _overrides(s, backend))
    m.plan = train.precision_plan(cfg)
    args = train.grpo_config(cfg, work / backend, m.plan)
    t0 = time.perf_counter()
    model, tok, peft_config = train.load_model(cfg, str(work / "model"), m.plan)
    m.load_s = time.perf_counter() - t0
    m.trainer = GRPOTrainer(
        model=model,
        reward_funcs=[_reward_fn(m, cfg, tok)],
        args=args,
        train_dataset=train.grpo_dataset(synthetic_frame(s["rows"], s["data"])),
        processing_class=tok,
        peft_config=peft_config,
        callbacks=[_step_timer(m, work)],
    )
    train.check_trainable_dtype(m.trainer.model, m.plan)  # fp32 masters (full FT) / fp32 adapters (LoRA)
    m.computed = memory(cfg, shape_of(str(work / "model")), "grpo")  # what opgrpo_lib.gpu predicts for this run
    train.chunk_generation(m.trainer.model, s["chunk"])
    if cuda:
        m.sync()
        m.resident = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    m.trainer.train()
    return summarize(m, "ok")


# ---------------------------------------------------------------- parent
def versions() -> dict:
    from opgrpo_lib.keys import package_versions

    return {"python": platform.python_version(), **package_versions(VERSIONED)}


def run_child(cmd: list[str], timeout: float | None, quiet: bool) -> tuple[int, str]:
    """Run a child, echoing its output to stderr (unless ``quiet``); (return code, last lines of output)."""
    tail: collections.deque[str] = collections.deque(maxlen=40)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + timeout if timeout else None
    assert proc.stdout is not None
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while True:
        if deadline and time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            tail.append(f"killed after the --timeout of {timeout:.0f} s")
            return -9, "".join(tail)
        if sel.select(timeout=1.0):
            line = proc.stdout.readline()
            if not line:
                break
            tail.append(line)
            if not quiet:
                sys.stderr.write(line)
    return proc.wait(), "".join(tail)


def ratios(rows: list[dict]) -> dict:
    ok = {r["backend"]: r for r in rows if r.get("status") in ("ok", "partial") and r.get("step_s")}
    hf = ok.get("hf")
    out: dict = {}
    if not hf:
        return out
    for name, r in ok.items():
        if name == "hf":
            continue
        q = {}
        for key in ("step_s", "generation_s", "training_s", "peak_gpu_mem_gib", "completion_tokens_per_s"):
            if r.get(key) and hf.get(key):
                q[key] = round(r[key] / hf[key], 3)
        if "step_s" in q:
            q["speedup"] = round(1 / q["step_s"], 3)
        if "peak_gpu_mem_gib" in q:
            q["memory_saving"] = round(1 - q["peak_gpu_mem_gib"], 3)
        out[f"{name}/hf"] = q
    return out


def goal(rat: dict) -> dict | None:
    """The bar the issue holds Unsloth to at the paper's shape: >= 1.5x faster per step, >= 30 % less peak memory."""
    q = rat.get("unsloth/hf")
    if not q or "speedup" not in q:
        return None
    out = {"speedup_at_least_1.5x": q["speedup"] >= 1.5}
    if "memory_saving" in q:
        out["memory_saving_at_least_30pct"] = q["memory_saving"] >= 0.30
    return out


def print_report(res: dict) -> None:
    rows = res["rows"]
    print(
        f"\nGRPO step, shape {res['shape']} on {res['device']['name']} ({res['device']['type']}); "
        f"{res['settings']['prompts_per_step']} prompts x {res['settings']['num_generations']} generations, "
        f"{res['settings']['max_completion_length']} completion tokens, {res['settings']['reward']} reward; "
        f"up to {res['settings']['steps']} steps, the first (warm-up) not counted"
    )
    head = (
        f"{'backend':<13}{'s/step':>8}{'gen s':>8}{'train s':>9}{'tok/s':>9}{'peak GPU GiB':>14}{'peak RSS GiB':>14}"
    )
    print(head)
    for r in rows:
        if not r.get("step_s"):
            print(f"{r['backend']:<13}error: {r.get('error', '?')[-300:]}")
            continue
        gpu = r.get("peak_gpu_mem_gib")
        name = r["backend"] + ("*" if r.get("status") != "ok" else "")
        print(
            f"{name:<13}{r['step_s']:>8.3f}{r['generation_s']:>8.3f}{r['training_s']:>9.3f}"
            f"{r.get('completion_tokens_per_s') or 0:>9.1f}{gpu if gpu is not None else float('nan'):>14.2f}"
            f"{r['peak_rss_gib']:>14.2f}"
        )
    if any(r.get("step_s") and r.get("status") != "ok" for r in rows):
        print("* stopped early (--timeout or an error): the mean of the steps measured before that")
    print("step-time split (s): generation / reward / policy forward+backward+optimizer / reference forward / other")
    for r in rows:
        if r.get("step_s"):
            ref = r["reference_forward_s"]
            print(
                f"  {r['backend']:<13}{r['generation_s']:.3f} / {r['reward_s']:.3f} / "
                f"{r['policy_forward_backward_s'] or 0:.3f} / {ref if ref is not None else float('nan'):.3f} / "
                f"{r['other_s']:.3f}   reward share {100 * r['reward_share']:.1f} %"
            )
    for name, q in res["ratios"].items():
        print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in q.items()))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="tiny", choices=["tiny", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b"])
    p.add_argument("--profile", default="paper", choices=["paper", "cpu"], help="whose train.grpo settings")
    p.add_argument("--model", help="a saved model folder to benchmark instead of a random --shape")
    p.add_argument("--data", help="a prepared train.parquet (prompt, answer) instead of synthetic rows")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--backends", nargs="+", choices=BACKENDS, help="default: hf unsloth on CUDA, hf on CPU")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per backend, the first one not counted")
    p.add_argument("--batch", type=int, help="completions per optimizer step (paper: 160 on CUDA; CPU default 8)")
    p.add_argument(
        "--micro-batch",
        type=int,
        help="completions per forward/backward (default: the profile's per_device_train_batch_size, at most --batch)",
    )
    p.add_argument(
        "--chunk",
        type=int,
        help="completions per generate call (default: the profile's train.generation_chunk, 0 = all in one call)",
    )
    p.add_argument("--label", help="name of the result in the JSON and its default file name (default: --shape)")
    p.add_argument("--generations", type=int, help="completions per prompt (paper: 10; CPU default 4)")
    p.add_argument("--completion-length", type=int, help="max completion tokens (paper: 800; CPU default 32)")
    p.add_argument("--reward", default="length", choices=["length", "op"])
    p.add_argument("--estimator", default="tiny:encoder", help="encoder of the op reward")
    p.add_argument("--tokenizer", default="auto", help=f"default: tiny's for tiny, else {SMOLLM2}")
    p.add_argument(
        "--full-finetune",
        action="store_true",
        help="no LoRA (the paper profile's own setting; --profile cpu follows its train.lora)",
    )
    p.add_argument("--seed", type=int, help="default: the paper profile's seed")
    p.add_argument(
        "--out", help="JSON path (default: results/gpu/grpo_step_<shape>.json on CUDA, runs/benchmarks/ on CPU)"
    )
    p.add_argument("--work-dir", help="where the random model is saved (default: a temporary folder, removed)")
    p.add_argument("--timeout", type=float, help="seconds per backend before it is killed")
    p.add_argument("--quiet", action="store_true", help="do not echo the backends' output")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line at the end")
    p.add_argument("--child", choices=["prepare", *BACKENDS], help=argparse.SUPPRESS)
    return p


def _child(args: argparse.Namespace) -> None:
    """In a child process: build the model (``prepare``) or measure one backend, written to the work folder."""
    work = Path(args.work_dir)
    if args.child == "prepare":
        prepare(work)
        return
    try:
        row = one(work, args.child)
    except Exception as exc:  # noqa: BLE001 - reported in the JSON, the other backends still run
        traceback.print_exc()
        row = {"backend": args.child, "status": "error"}
        partial = work / f"partial_{args.child}.json"
        if partial.exists():  # steps measured before the failure are kept (status "partial")
            row = json.loads(partial.read_text())
        row["error"] = f"{type(exc).__name__}: {exc}"[-2000:]
    (work / f"result_{args.child}.json").write_text(json.dumps(row))


def _settings(args: argparse.Namespace, prof: Any, p: argparse.ArgumentParser) -> dict:
    """The child's settings: the profile's GRPO settings, shortened on CPU for the paper profile, and the flags."""
    g = prof.train.grpo
    short = args.device == "cpu" and args.profile == "paper"
    settings = {
        "shape": args.shape, "device": args.device, "tokenizer": args.tokenizer, "reward": args.reward,
        "estimator": args.estimator, "full_finetune": args.full_finetune or (args.profile == "cpu" and not prof.train.lora.enabled),
        "profile": args.profile, "model": args.model, "data": args.data,
        "seed": prof.seed if args.seed is None else args.seed, "steps": max(2, args.steps),
        "batch": args.batch or (CPU_SETTINGS["batch"] if short
                                else g["per_device_train_batch_size"] * g.get("gradient_accumulation_steps", 1)),
        "generations": args.generations or (CPU_SETTINGS["generations"] if short else g["num_generations"]),
        "completion_length": args.completion_length
        or (CPU_SETTINGS["completion_length"] if short else g["max_completion_length"]),
    }  # fmt: skip
    if settings["batch"] % settings["generations"]:
        p.error("--batch must be a multiple of --generations")
    micro = args.micro_batch or min(settings["batch"], g["per_device_train_batch_size"])
    if settings["batch"] % micro:
        p.error("--batch must be a multiple of --micro-batch")
    settings["micro_batch"] = micro
    settings["chunk"] = prof.train.generation_chunk if args.chunk is None else args.chunk
    settings["rows"] = max(16, settings["batch"] // settings["generations"] * settings["steps"])
    return settings


def _run_backends(args, prof, settings: dict, label: str, backends: list[str], work: Path, out: Path) -> dict:
    """Build the model, then measure each backend in its own process; the result JSON after each backend."""
    me = [sys.executable, str(Path(__file__).resolve()), "--work-dir", str(work)]
    t0 = time.perf_counter()
    rc, tail = run_child([*me, "--child", "prepare"], args.timeout, args.quiet)
    if rc != 0:
        raise SystemExit(f"building the {args.shape} model failed:\n{tail}")
    model = json.loads((work / "model.json").read_text())
    prepare_s = time.perf_counter() - t0
    rows: list[dict] = []
    for backend in backends:
        result, partial = work / f"result_{backend}.json", work / f"partial_{backend}.json"
        for old in (result, partial):  # an earlier run in this --work-dir (other settings) is not this one
            old.unlink(missing_ok=True)
        rc, tail = run_child([*me, "--child", backend], args.timeout, args.quiet)
        if result.exists():
            rows.append(json.loads(result.read_text()))
        elif partial.exists():  # killed at --timeout (or crashed) after some steps: keep what was measured
            rows.append({**json.loads(partial.read_text()), "error": f"exit code {rc}: {tail[-1000:]}"})
        else:
            rows.append({"backend": backend, "status": "error", "error": f"exit code {rc}: {tail[-2000:]}"})
        res = result_json(args, prof, settings, label, model, prepare_s, rows, t0)
        write_atomic(out, res)  # every backend's row lands as soon as it is measured
    return res


def main() -> None:
    p = _parser()
    args = p.parse_args()
    if args.child:
        _child(args)
        return
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    from opgrpo_lib.config import load_profile

    prof = load_profile(args.profile)
    if args.model:
        args.shape = Path(args.model).resolve().parent.name + "-" + Path(args.model).name  # e.g. sft-policy
    settings = _settings(args, prof, p)
    label = args.label or args.shape
    backends = args.backends or (["hf", "unsloth"] if args.device == "cuda" else ["hf"])
    out = (
        Path(args.out)
        if args.out
        else ROOT / ("results/gpu" if args.device == "cuda" else "runs/benchmarks") / (f"grpo_step_{label}.json")
    )
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="grpo_step_"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "settings.json").write_text(json.dumps(settings))
    try:
        res = _run_backends(args, prof, settings, label, backends, work, out)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print_report(res)
    print(f"wrote {out}")
    if args.json:
        print(json.dumps(res))


def write_atomic(path: Path, res: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    tmp.replace(path)


def result_json(
    args, prof, settings: dict, label: str, model: dict, prepare_s: float, rows: list[dict], t0: float
) -> dict:
    g, lora = prof.train.grpo, prof.train.lora
    rat = ratios(rows)
    return {
        "benchmark": "grpo_step",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "shape": label,
        "model_shape": args.shape,
        "device": model["device"],
        "versions": versions(),
        "model": {k: v for k, v in model.items() if k not in ("tokenizer", "prompt_tokens", "device", "built_for")},
        "tokenizer": model["tokenizer"],
        "settings": {
            "trainer": "trl.GRPOTrainer (HF generate, no vLLM)",
            "profile": f"{args.profile} (configs/{args.profile}.yaml train.grpo), one generation per optimizer step",
            "model_weights": "trained: " + args.model if args.model else "random",
            "rows": args.data or "synthetic",
            "completions_per_step": settings["batch"], "per_device_train_batch_size": settings["micro_batch"],
            "gradient_accumulation_steps": settings["batch"] // settings["micro_batch"],
            "steps_per_generation": settings["batch"] // settings["micro_batch"],
            "generation_chunk": settings["chunk"], "num_generations": settings["generations"],
            "prompts_per_step": settings["batch"] // settings["generations"],
            "max_completion_length": settings["completion_length"],
            "shortened_for_cpu": args.device == "cpu" and (settings["batch"], settings["generations"],
                                                              settings["completion_length"]) != (
                g["per_device_train_batch_size"] * g.get("gradient_accumulation_steps", 1), g["num_generations"],
                g["max_completion_length"]),
            "steps": settings["steps"], "warmup_steps_excluded": 1,
            **{k: g.get(k) for k in ("temperature", "top_p", "beta", "loss_type", "learning_rate",
                                     "gradient_checkpointing", "mask_truncated_completions")},
            "finetuning": "full" if settings["full_finetune"] else {"method": "LoRA", "r": lora.r, "alpha": lora.alpha,
                                                             "dropout": lora.dropout,
                                                             "target_modules": lora.target_modules},
            "reward": args.reward,
            "reward_note": ("characters of the decoded completion / 1000 (trivially cheap; the point is step cost)"
                            if args.reward == "length" else f"OP reward, estimator {args.estimator}"),
            "seed": settings["seed"], "prompt_tokens": model["prompt_tokens"],
            "model_build_s": round(prepare_s, 1),
        },
        "rows": rows,
        "ratios": rat,
        "goal": goal(rat),
        "wall_s": round(time.perf_counter() - t0, 1),
    }  # fmt: skip


if __name__ == "__main__":
    main()
