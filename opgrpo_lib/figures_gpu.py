"""GRPO step cost per backend and model shape, from ``results/gpu/grpo_step_*.json`` (written by
``benchmarks/grpo_step.py`` on a CUDA machine): s/step split into generation and training, and peak GPU memory.
Pure function of those files (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .plots import save_figure  # noqa: E402

SHAPE_ORDER = ["tiny", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b"]
BACKEND_ORDER = ["hf", "unsloth", "unsloth-4bit"]


def load_rows(results_gpu_dir: Path) -> pd.DataFrame:
    """One row per (shape, backend) that ran, from every ``grpo_step_*.json`` (error rows left out)."""
    rows = []
    for path in sorted(Path(results_gpu_dir).glob("grpo_step_*.json")):
        res = json.loads(path.read_text())
        for r in res.get("rows", []):
            if r.get("status", "ok") not in ("ok", "partial") or r.get("step_s") is None:
                continue
            rows.append(
                {
                    "shape": res.get("shape", path.stem.removeprefix("grpo_step_")),
                    "backend": r["backend"],
                    "device": (res.get("device") or {}).get("name"),
                    "step_s": r["step_s"],
                    "generation_s": r.get("generation_s"),
                    "training_s": r.get("training_s"),
                    "completion_tokens_per_s": r.get("completion_tokens_per_s"),
                    "peak_gpu_mem_gib": r.get("peak_gpu_mem_gib"),
                    "source": path.name,
                }
            )
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    rank = {s: i for i, s in enumerate(SHAPE_ORDER)}
    brank = {b: i for i, b in enumerate(BACKEND_ORDER)}
    order = df["shape"].map(lambda s: rank.get(s, len(rank))) * 10 + df["backend"].map(lambda b: brank.get(b, 9))
    return df.assign(_o=order).sort_values(["_o", "shape", "backend"]).drop(columns="_o").reset_index(drop=True)


def fig_grpo_step(df: pd.DataFrame) -> plt.Figure:
    """Left: s/step per (shape, backend), stacked generation + training. Right: peak GPU memory."""
    labels = [f"{s}\n{b}" for s, b in zip(df["shape"], df["backend"])]
    x = range(len(df))
    gen = df["generation_s"].fillna(0.0)
    train = df["training_s"].fillna(df["step_s"] - gen)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(6.0, 1.3 * len(df) + 3), 3.6))
    ax1.bar(x, gen, label="generation", color="#4c72b0")
    ax1.bar(x, train, bottom=gen, label="training (scoring, policy update)", color="#dd8452")
    ax1.set_xticks(list(x), labels, fontsize=8)
    ax1.set_ylabel("seconds per GRPO step")
    ax1.set_title("GRPO step time")
    ax1.set_ylim(0, 1.35 * float((gen + train).max() or 1.0))  # room for the legend above the bars
    ax1.legend(fontsize=8, loc="upper left")
    mem = df["peak_gpu_mem_gib"].astype(float)
    ax2.bar(x, mem.fillna(0.0), color="#55a868")
    ax2.set_xticks(list(x), labels, fontsize=8)
    ax2.set_ylabel("peak GPU memory (GiB)")
    ax2.set_title("peak GPU memory")
    devices = sorted({d for d in df["device"].dropna()})
    if devices:
        fig.suptitle(", ".join(devices), fontsize=9)
    fig.tight_layout()
    return fig


def build(results_gpu_dir: Path, out_dir: Path) -> list[Path]:
    """Write ``grpo_step.{png,pdf,csv}`` under ``out_dir`` from ``results_gpu_dir``; [] when there is nothing."""
    df = load_rows(Path(results_gpu_dir))
    if df.empty:
        return []
    out_dir = Path(out_dir)
    written = save_figure(fig_grpo_step(df), out_dir / "grpo_step")  # no timestamps: byte-identical reruns
    csv = out_dir / "grpo_step.csv"
    df.to_csv(csv, index=False)
    return [*written, csv]
