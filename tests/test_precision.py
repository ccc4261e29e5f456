"""Training precision on a GPU, checked on the CPU: the paper profile's loading path keeps fp32 master weights under
bf16 autocast (CPU autocast runs the same bf16 matmuls), so one optimizer step at the paper's lr 1e-6 moves every
weight; the old pure-bf16 weights lose almost every such update."""

from pathlib import Path

import pandas as pd
import pytest
import torch

from opgrpo_lib import train
from opgrpo_lib.config import load_profile
from opgrpo_lib.models import resolve

SHORT = {
    "per_device_train_batch_size": 4,
    "num_generations": 4,
    "max_completion_length": 8,
    "steps_per_generation": 1,
    "gradient_accumulation_steps": 1,
    "max_steps": 1,
    "gradient_checkpointing": False,
    "save_strategy": "no",
    "logging_steps": 1,
    "disable_tqdm": True,
}


def varied_reward(prompts, completions, completion_ids=None, **kw):
    """Different rewards within every group, so every weight gets a gradient."""
    return [float(sum(c) % 7) for c in completion_ids]


def one_grpo_step(precision: str, tmp_path: Path, backend: str = "hf", device: str = "cpu"):
    """Fraction of trainable weights one GRPO step of the tiny LM changes, loaded as the paper profile loads its
    policy on a bf16 GPU. On the CPU: the hf backend with the GPU's precision plan (the unsloth backend cannot run on
    a CPU; its arguments are checked below); ``tests/gpu`` runs the same with ``backend="unsloth"`` on CUDA."""
    if backend == "unsloth":
        train.ensure_unsloth()
    from trl import GRPOTrainer

    cfg = load_profile(
        "paper", {"device": device, "train.backend": backend, "train.precision": precision, "train.grpo": SHORT}
    )
    assert cfg.train.grpo["learning_rate"] == 1e-6 and not cfg.train.lora.enabled  # the paper's rate, full FT
    plan = train.precision_plan(cfg, device="cuda", bf16_supported=True if device == "cpu" else None)
    args = train.grpo_config(cfg, tmp_path, plan)
    assert args.bf16 and (args.use_cpu or device == "cuda")  # bf16 autocast (on the CPU here)
    model, tok, _ = train.load_model(cfg, resolve("tiny:causal-lm"), plan)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    ds = train.grpo_dataset(pd.DataFrame({"prompt": ["Eating meat", "Lying to a friend"], "answer": ["x", "y"]}))
    trainer = GRPOTrainer(model=model, reward_funcs=[varied_reward], args=args, train_dataset=ds, processing_class=tok)
    train.check_trainable_dtype(trainer.model, plan)
    trainer.train()
    changed = sum((p.detach() != before[n]).sum().item() for n, p in trainer.model.named_parameters() if n in before)
    return changed / sum(v.numel() for v in before.values()), plan, trainer


def test_fp32_masters_keep_every_update_at_lr_1e6(tmp_path):
    frac, plan, trainer = one_grpo_step("mixed", tmp_path)
    assert plan.master == "float32" and plan.load_dtype == "float32" and plan.compute_dtype == "bfloat16"
    assert frac >= 0.99, f"only {frac:.1%} of the weights changed"
    assert next(trainer.ref_model.parameters()).dtype == torch.bfloat16  # reference in bf16, not TRL's fp32


def test_the_old_pure_bf16_weights_fail_the_same_check(tmp_path):
    """``train.precision: bf16`` is the old behaviour (bf16 weights, no master copy): most updates round away."""
    frac, plan, _ = one_grpo_step("bf16", tmp_path)
    assert plan.master == "bfloat16"
    assert frac < 0.99 and frac < 0.2, f"{frac:.1%} changed"


def test_unsloth_arguments_follow_the_plan():
    """unsloth 2026.10.9: ``float32_mixed_precision=True`` with full fine-tuning upcasts trainable weights to fp32
    and turns on autocast; its default for a bf16 full fine-tune is False. The model id is loaded as given."""
    cfg = load_profile("paper")
    assert cfg.train.backend == "unsloth" and cfg.train.precision == "mixed"
    plan = train.precision_plan(cfg, device="cuda", bf16_supported=True)
    kw = plan.unsloth_kwargs(cfg)
    assert kw == {"dtype": torch.bfloat16, "use_exact_model_name": True, "float32_mixed_precision": True}
    assert plan.trainer_flags() == {"bf16": True, "fp16": False}
    legacy = load_profile("paper", {"train.precision": "bf16"})
    assert train.precision_plan(legacy, "cuda", True).unsloth_kwargs(legacy)["float32_mixed_precision"] is False
    t4 = train.precision_plan(cfg, "cuda", bf16_supported=False)  # no bf16: fp16 autocast over fp32 masters
    assert (t4.load_dtype, t4.compute_dtype, t4.master) == ("float32", "float16", "float32")
    assert t4.trainer_flags() == {"bf16": False, "fp16": True}
    lora = load_profile("paper", {"train.lora.enabled": True})
    lp = train.precision_plan(lora, "cuda", True)
    assert (lp.load_dtype, lp.master) == (
        "bfloat16",
        "float32",
    ) and "float32_mixed_precision" not in lp.unsloth_kwargs(lora)
    cpu = train.precision_plan(cfg, "cpu")
    assert (cpu.load_dtype, cpu.autocast) == ("float32", False)


def test_lora_adapters_are_fp32_over_a_bf16_base(tmp_path):
    from peft import get_peft_model

    cfg = load_profile("tiny", {"train.lora.enabled": True})
    plan = train.precision_plan(cfg, "cuda", True)
    model, _, peft_config = train.load_model(cfg, resolve("tiny:causal-lm"), plan)
    model = get_peft_model(model, peft_config)  # as TRL does
    train.check_trainable_dtype(model, plan)
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}


def test_a_16bit_master_is_refused():
    cfg = load_profile("tiny")
    plan = train.precision_plan(cfg, "cuda", True)
    model = torch.nn.Linear(2, 2).to(torch.bfloat16)
    with pytest.raises(RuntimeError, match="not float32"):
        train.check_trainable_dtype(model, plan)


def test_chunked_generation_equals_one_call():
    """``train.generation_chunk``: the same sequences as one generate call (greedy), padded to one width."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve("tiny:causal-lm")
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    enc = tok(["In the perspective of", "Honesty", "a b c", "care"], return_tensors="pt", padding=True)
    kw = {"max_new_tokens": 6, "do_sample": False}
    whole = model.generate(**enc, **kw)
    train.chunk_generation(model, 3)
    parts = model.generate(**enc, **kw)
    assert parts.shape[0] == 4
    width = min(whole.size(1), parts.size(1))
    assert torch.equal(whole[:, :width], parts[:, :width])
