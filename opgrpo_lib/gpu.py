"""The GPU a run gets: is a CUDA device visible and usable, and does a profile fit it (memory) and the disk.

``memory(cfg, shape)`` is a small model of what one GRPO/SFT process holds on the GPU, part by part (weights,
gradients, optimizer states, reference model, the KV cache of one generation call, training activations and logits),
from the policy's shape and the profile's precision and batch settings. ``disk(cfg, shape)`` is what the training
steps write. Computed, not measured: a GPU run replaces the numbers (``benchmarks/grpo_step.py``). No torch import at
module import time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIB = 2**30
# CUDA context, allocator fragmentation, the reward's sentence encoder and small buffers (not modelled part by part)
OVERHEAD_GIB = 2.0
# Usable memory of the GPUs the README names (GiB as torch reports total_memory)
# A profile "fits" a card when its computed peak is at most this share of the card's memory (the model is not
# measured yet: 10 % for what it leaves out)
MARGIN = 0.9
GPUS_GIB = {"T4": 14.7, "L4": 22.0, "A100-40G": 39.4, "A100-80G": 79.1, "H100-80G": 79.1, "H200": 139.8}


# ---------------------------------------------------------------- shapes
@dataclass(frozen=True)
class Shape:
    """The numbers of a decoder-only transformer (Qwen2 / Llama layout) that memory depends on."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool = True
    attention_bias: bool = True  # Qwen2: q/k/v projections have biases (o_proj has none)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def parameters(self) -> int:
        """Total parameters (tied embeddings counted once)."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.num_key_value_heads * self.head_dim
        attn = h * h + 2 * h * kv + h * h + (h + 2 * kv if self.attention_bias else 0)
        layer = attn + 3 * h * i + 2 * h  # q, k, v, o; gate, up, down; two RMSNorms
        emb = self.vocab_size * h
        return emb * (1 if self.tie_word_embeddings else 2) + self.num_hidden_layers * layer + h

    def lora_parameters(self, r: int, targets: list[str]) -> int:
        h, i, kv = self.hidden_size, self.intermediate_size, self.num_key_value_heads * self.head_dim
        dims = {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }
        return self.num_hidden_layers * sum(r * (a + b) for t, (a, b) in dims.items() if t in targets)

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """Keys + values of every layer for one token."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * dtype_bytes


# config.json values of the published Qwen2.5-*-Instruct checkpoints (the same as benchmarks/shapes.py; a test
# checks both and the parameter counts on the meta device), so a profile is sized before anything is downloaded
_QWEN25 = {"vocab_size": 151936, "tie_word_embeddings": True}
KNOWN: dict[str, Shape] = {
    "Qwen/Qwen2.5-0.5B-Instruct": Shape(
        **_QWEN25,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
    ),
    "Qwen/Qwen2.5-1.5B-Instruct": Shape(
        **_QWEN25,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
    ),
    "Qwen/Qwen2.5-3B-Instruct": Shape(
        **_QWEN25,
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
    ),
}


def shape_of(model: str) -> Shape | None:
    """The shape of a hub id we know, or of a local folder's ``config.json`` (None when neither)."""
    if model in KNOWN:
        return KNOWN[model]
    conf = Path(model) / "config.json"
    if not conf.exists():
        from .models import resolve

        try:
            conf = Path(resolve(model)) / "config.json"
        except Exception:  # noqa: BLE001 - an unknown id simply has no shape here
            return None
    if not conf.exists():
        return None
    c = json.loads(conf.read_text())
    c = c.get("text_config", c)
    return Shape(
        vocab_size=c["vocab_size"],
        hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_hidden_layers"],
        num_attention_heads=c["num_attention_heads"],
        num_key_value_heads=c.get("num_key_value_heads", c["num_attention_heads"]),
        tie_word_embeddings=c.get("tie_word_embeddings", False),
        attention_bias=c.get("model_type") == "qwen2" or bool(c.get("attention_bias", False)),
    )


# ---------------------------------------------------------------- memory
def _grpo_batches(cfg) -> dict[str, int]:
    g = cfg.train.grpo
    micro = int(g.get("per_device_train_batch_size", 8))
    spg = g.get("steps_per_generation") or g.get("gradient_accumulation_steps", 1)
    gen = int(g.get("generation_batch_size") or micro * spg)
    chunk = cfg.train.generation_chunk or gen
    return {
        "micro_batch": micro,
        "generation_batch": gen,
        "generation_call": min(chunk, gen),
        "completion": int(g.get("max_completion_length", 256)),
        "prompt": cfg.train.max_prompt_length,
    }


def _state_bytes(tc, shape: Shape, n: int) -> dict[str, int]:
    """Bytes of the weights, their bf16 compute copies, gradients and AdamW moments, and the trainable count."""
    if tc.lora.enabled:
        base = 0.5 if tc.load_in_4bit else 2
        trainable = shape.lora_parameters(tc.lora.r, tc.lora.target_modules)
        return {
            "trainable": trainable,
            "weights": n * base + trainable * 4,
            "compute_copies": 0,
            "gradients": trainable * 4,
            "optimizer": trainable * 8,
        }
    master = 2 if tc.precision == "bf16" else 4
    return {
        "trainable": n,
        "weights": n * master,
        "compute_copies": n * 2 if master == 4 else 0,
        "gradients": n * master,
        "optimizer": n * 2 * master,
    }


def _step_sizes(cfg, n: int, shape: Shape, step: str) -> dict[str, Any]:
    """The reference model, the KV cache and the micro-batch / sequence sizes of one GRPO or SFT step."""
    tc = cfg.train
    if step == "grpo":
        b = _grpo_batches(cfg)
        beta = float(tc.grpo.get("beta", 0.0))
        seq = b["prompt"] + b["completion"]
        return {
            "reference": n * 2 if beta > 0 and not tc.lora.enabled else 0,
            "kv_cache": b["generation_call"] * seq * shape.kv_bytes_per_token(2),
            "micro": b["micro_batch"],
            "seq": seq,
            "logit_tokens": b["completion"],
            "batches": b,
        }
    micro = int(tc.sft.get("per_device_train_batch_size", 8))
    seq = int(tc.sft.get("max_length", 1024))
    return {
        "reference": 0,
        "kv_cache": 0,
        "micro": micro,
        "seq": seq,
        "logit_tokens": seq,
        "batches": {"micro_batch": micro},
    }


def _activation_bytes(shape: Shape, micro: int, seq: int, logit_tokens: int, unsloth: bool) -> int:
    """Checkpointed layer inputs + one layer's recomputed intermediates + the completion logits with their gradient."""
    h = shape.hidden_size
    checkpoints = 0 if unsloth else shape.num_hidden_layers * micro * seq * h * 2
    layer = micro * seq * (8 * h + 4 * shape.intermediate_size) * 2
    logits = micro * logit_tokens * shape.vocab_size * 8 // (16 if unsloth else 1)
    return checkpoints + layer + logits


def memory(cfg, shape: Shape, step: str = "grpo") -> dict[str, Any]:
    """GiB one training process holds on the GPU, part by part, for the profile's precision and batches, and the
    peak (the larger of the generation and the training phase). Model:

    * weights: full fine-tuning with ``train.precision: mixed`` keeps fp32 masters (4 B/param; the bf16 compute
      copies autocast makes are per layer, transient); ``bf16`` keeps 2 B/param; LoRA keeps the frozen base in 16 bit
      (0.5 B/param with ``load_in_4bit``) and fp32 adapters.
    * gradients: one per trainable weight in its dtype (freed, ``set_to_none``, before the next generation).
    * optimizer: AdamW's two moments in the trainable weights' dtype.
    * compute copies: with fp32 masters, autocast caches a bf16 copy of every weight it casts while a forward runs
      (2 B/param, freed when the forward's autocast region ends).
    * reference model (GRPO, ``beta > 0``, full fine-tuning only; LoRA disables the adapter instead): 16 bit.
    * KV cache of one ``generate`` call: ``generation_call`` sequences x (prompt + completion) tokens x
      :meth:`Shape.kv_bytes_per_token` (bf16).
    * activations of one micro-batch with gradient checkpointing: every layer's input (bf16; Unsloth offloads them to
      CPU RAM) + one layer's recomputed intermediates; logits: hf materialises the completion logits in fp32 with
      their gradient (8 B per entry), Unsloth computes them in chunks (counted as a sixteenth).
    """
    n = shape.parameters()
    state = _state_bytes(cfg.train, shape, n)
    sizes = _step_sizes(cfg, n, shape, step)
    unsloth = cfg.train.backend == "unsloth"
    activations = _activation_bytes(shape, sizes["micro"], sizes["seq"], sizes["logit_tokens"], unsloth)
    weights, copies, grads, optim = (state[k] for k in ("weights", "compute_copies", "gradients", "optimizer"))
    reference, kv = sizes["reference"], sizes["kv_cache"]
    parts = {
        "weights": weights,
        "compute_copies": copies,
        "gradients": grads,
        "optimizer": optim,
        "reference": reference,
        "kv_cache": kv,
        "activations": activations,
    }
    generation_phase = weights + copies + optim + reference + kv
    training_phase = weights + copies + grads + optim + reference + activations
    gib = {k: round(v / GIB, 2) for k, v in parts.items()}
    peak = max(generation_phase, training_phase) / GIB + OVERHEAD_GIB
    return {
        "parameters": n,
        "trainable_parameters": state["trainable"],
        "parts_gib": gib,
        "generation_phase_gib": round(generation_phase / GIB, 2),
        "training_phase_gib": round(training_phase / GIB, 2),
        "overhead_gib": OVERHEAD_GIB,
        "peak_gib": round(peak, 1),
        "batches": sizes["batches"],
        "note": "computed from the profile and the model shape, not measured",
    }


def peak_gib(cfg) -> float | None:
    """Peak GPU memory of the profile's training steps (the larger of SFT and GRPO), None for an unknown policy."""
    shape = shape_of(cfg.models.policy)
    if shape is None:
        return None
    return max(memory(cfg, shape, "sft")["peak_gib"], memory(cfg, shape, "grpo")["peak_gib"])


def fits(peak: float, capacity_gib: float) -> bool:
    return peak <= MARGIN * capacity_gib


# ---------------------------------------------------------------- disk
def disk(cfg, shape: Shape, step: str = "grpo", keep: int | None = None) -> dict[str, float]:
    """GB a training step writes: ``keep`` checkpoints of the weights (in the master dtype), the optimizer states in
    the last one only (``OptimizerInLastCheckpoint``), and the final policy."""
    tc = cfg.train
    n = shape.parameters()
    if tc.lora.enabled:
        t = shape.lora_parameters(tc.lora.r, tc.lora.target_modules)
        ckpt, optim, final = t * 4, t * 8, (n * 2 if tc.merge_adapter else t * 4)
    else:
        master = 2 if tc.precision == "bf16" else 4
        ckpt, optim, final = n * master, n * 2 * master, n * master
    section = tc.grpo if step == "grpo" else tc.sft
    if keep is None:
        keep = int(section.get("save_total_limit") or 2)
    total = keep * ckpt + optim + final
    return {
        "checkpoints": keep,
        "checkpoint_gb": round(ckpt / GIB, 2),
        "optimizer_gb": round(optim / GIB, 2),
        "final_gb": round(final / GIB, 2),
        "total_gb": round(total / GIB + 0.5, 1),
    }


# ---------------------------------------------------------------- report
def report(profile: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Memory (SFT and GRPO) and disk of a profile's training steps, and which named GPUs it fits."""
    from .config import load_profile

    cfg = load_profile(profile, overrides)
    shape = shape_of(cfg.models.policy)
    if shape is None:
        raise ValueError(f"{profile}: the shape of models.policy={cfg.models.policy!r} is unknown here")
    g = cfg.train.grpo
    keep = g.get("max_steps", 0) // max(1, g.get("save_steps", 1)) if cfg.eval.checkpoint_rows_per_split else None
    out: dict[str, Any] = {
        "profile": profile,
        "policy": cfg.models.policy,
        "backend": cfg.train.backend,
        "precision": cfg.train.precision,
        "lora": cfg.train.lora.enabled,
    }
    for step in ("sft", "grpo"):
        out[step] = {
            "memory": memory(cfg, shape, step),
            "disk": disk(cfg, shape, step, keep if step == "grpo" else None),
        }
    peak = max(out["sft"]["memory"]["peak_gib"], out["grpo"]["memory"]["peak_gib"])
    out["peak_gib"] = peak
    out["fits"] = {name: fits(peak, cap) for name, cap in GPUS_GIB.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="computed GPU memory and disk of a profile's training steps")
    p.add_argument("--profile", default="paper")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE override (YAML value)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    import yaml

    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    r = report(args.profile, overrides)
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    print(
        f"{r['profile']}: {r['policy']} ({r['backend']}, precision {r['precision']}, "
        f"{'LoRA' if r['lora'] else 'full fine-tuning'}) - computed, not measured"
    )
    for step in ("sft", "grpo"):
        m, d = r[step]["memory"], r[step]["disk"]
        parts = ", ".join(f"{k} {v}" for k, v in m["parts_gib"].items())
        print(
            f"  {step}: peak {m['peak_gib']} GiB (generation {m['generation_phase_gib']}, training "
            f"{m['training_phase_gib']}, + {m['overhead_gib']} overhead); {parts}"
        )
        print(
            f"        disk {d['total_gb']} GiB ({d['checkpoints']} checkpoints x {d['checkpoint_gb']}, optimizer "
            f"{d['optimizer_gb']} in the last, final policy {d['final_gb']})"
        )
    print("  fits: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in r["fits"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
