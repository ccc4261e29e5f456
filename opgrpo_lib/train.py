"""Training machinery of steps 03–04 (``steps.sft``, ``steps.grpo``): backends, precision, TRL configs, datasets.

Our code builds configs, data and reward callables; TRL trains. Two backends behind ``train.backend``:
``hf`` (transformers + PEFT LoRA or full fine-tune; CPU or GPU) and ``unsloth`` (GPU only; imported before
transformers/trl/peft). The profile's ``train.sft`` / ``train.grpo`` were checked against the installed TRL when the
profile loaded (``config.check_trainer_section``); after that, every read goes through the built TRL config.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from .config import RunConfig
from .device import require_usable_gpu, resolve_device
from .prompts import implicit


# ---------------------------------------------------------------- backends
def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def ensure_unsloth() -> Any:
    """Import Unsloth first (it patches transformers/trl/peft), only with CUDA; clear errors otherwise."""
    from importlib.util import find_spec

    if not cuda_available():
        require_usable_gpu()  # visible but unusable: say why (torch build / driver)
        raise RuntimeError("train.backend=unsloth needs a CUDA GPU; use backend: hf on this machine")
    if find_spec("unsloth") is None:
        raise RuntimeError("train.backend=unsloth needs the [gpu] extra: pip install -e '.[gpu]'")
    already = [m for m in ("trl", "transformers", "peft") if m in sys.modules and "unsloth" not in sys.modules]
    if already:
        raise RuntimeError(
            f"Unsloth must be imported before {already}; restart the kernel and run the training step first "
            "(or use the CLI: opgrpo grpo --profile paper)"
        )
    os.environ.setdefault("UNSLOTH_DISABLE_CPU_FALLBACK", "1")
    import unsloth

    return unsloth


@dataclasses.dataclass(frozen=True)
class Precision:
    """How weights are stored and computed on the device a run gets (``train.precision``)."""

    load_dtype: str  # dtype the policy is loaded in (hf backend)
    compute_dtype: str  # autocast / Unsloth dtype
    autocast: bool  # Trainer bf16/fp16 flag (mixed precision over the loaded weights)
    reference_dtype: str  # GRPO reference model (full fine-tuning, beta > 0)
    master: str  # dtype the trainable weights are updated in

    def trainer_flags(self) -> dict[str, bool]:
        return {
            "bf16": self.autocast and self.compute_dtype == "bfloat16",
            "fp16": self.autocast and self.compute_dtype == "float16",
        }

    def unsloth_kwargs(self, cfg: RunConfig) -> dict[str, Any]:
        """FastLanguageModel.from_pretrained precision arguments (unsloth 2026.10.9, models/vision.py ~4026 and
        unsloth_zoo/training_utils.py prepare_model_for_training): full fine-tuning with
        ``float32_mixed_precision=True`` upcasts every trainable weight to fp32 and its trainer patch turns on
        bf16 autocast; ``False`` (its default for bf16) keeps bf16 weights without autocast."""
        import torch

        kw: dict[str, Any] = {"dtype": getattr(torch, self.compute_dtype), "use_exact_model_name": True}
        if not cfg.train.lora.enabled:
            kw["float32_mixed_precision"] = self.master == "float32"
        return kw


def precision_plan(cfg: RunConfig, device: str | None = None, bf16_supported: bool | None = None) -> Precision:
    """The precision of a run on ``device`` (default: the profile's resolved device). CPU: fp32 throughout. GPU:
    16-bit compute (bf16, or fp16 on cards without it); full fine-tuning keeps fp32 masters under autocast
    (``precision: mixed``) or bf16 weights (``precision: bf16``); LoRA keeps the frozen base in 16 bit and fp32
    adapters (PEFT's ``autocast_adapter_dtype``, Unsloth's upcast); the reference model is 16 bit."""
    device = device or resolve_device(cfg)
    if device != "cuda":
        return Precision("float32", "float32", False, "float32", "float32")
    if bf16_supported is None:
        import torch

        bf16_supported = torch.cuda.is_bf16_supported()
    half = "bfloat16" if bf16_supported else "float16"
    if cfg.train.lora.enabled:
        return Precision(half, half, True, half, "float32")
    if cfg.train.precision == "bf16" and bf16_supported:
        return Precision(half, half, True, half, half)
    return Precision("float32", half, True, half, "float32")


def device_kwargs(cfg: RunConfig, plan: Precision | None = None) -> dict[str, Any]:
    plan = plan or precision_plan(cfg)
    return {"use_cpu": resolve_device(cfg) != "cuda", **plan.trainer_flags()}


def check_trainable_dtype(model: Any, plan: Precision) -> None:
    """Every trainable weight must be in the plan's master dtype (fp32 with ``precision: mixed``): a 16-bit master
    loses most updates at the paper's lr 1e-6 without any error."""
    import torch

    if plan.master != "float32":  # bf16 masters: Unsloth still upcasts the norms, nothing to hold it to
        return
    want = torch.float32
    bad = sorted({str(p.dtype) for p in model.parameters() if p.requires_grad and p.dtype != want})
    if bad:
        raise RuntimeError(
            f"trainable weights are {bad}, not {plan.master} (train.precision: {plan.master}): "
            "the backend did not keep master weights as configured"
        )


def load_model(cfg: RunConfig, path: str, plan: Precision | None = None) -> tuple[Any, Any, Any]:
    """(model, tokenizer, peft_config or None) for the configured backend, in ``plan``'s precision."""
    tc = cfg.train
    plan = plan or precision_plan(cfg)
    if tc.backend == "unsloth":
        ensure_unsloth()
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(
            model_name=path,
            max_seq_length=tc.max_seq_length,
            load_in_4bit=tc.load_in_4bit,
            fast_inference=tc.use_vllm,
            full_finetuning=not tc.lora.enabled,
            **plan.unsloth_kwargs(cfg),
        )
        if tc.lora.enabled:
            model = FastLanguageModel.get_peft_model(
                model,
                r=tc.lora.r,
                lora_alpha=tc.lora.alpha,
                lora_dropout=tc.lora.dropout,
                target_modules=tc.lora.target_modules,
                use_gradient_checkpointing="unsloth",
                random_state=cfg.seed,
            )
        return model, tok, None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, plan.load_dtype))
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    peft_config = None
    if tc.lora.enabled:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=tc.lora.r,
            lora_alpha=tc.lora.alpha,
            lora_dropout=tc.lora.dropout,
            target_modules=tc.lora.target_modules,
            task_type="CAUSAL_LM",
        )
    return model, tok, peft_config


def chunk_generation(model: Any, chunk: int) -> None:
    """Make ``model.generate`` run at most ``chunk`` sequences per call (``train.generation_chunk``): TRL generates
    a whole generation batch in one call, whose KV cache can exceed the GPU. Outputs are right-padded with the pad
    id to one length; every shorter chunk's rows already ended with EOS, so TRL's EOS mask drops the padding."""
    if not chunk or getattr(model.generate, "_opgrpo_chunk", None) == chunk:
        return
    import torch

    inner = model.generate

    def generate(*args: Any, **kw: Any):
        ids = kw.get("input_ids", args[0] if args else None)
        if ids is None or ids.size(0) <= chunk:
            return inner(*args, **kw)
        n = ids.size(0)
        outs = []
        for i in range(0, n, chunk):
            part = {
                k: (v[i : i + chunk] if torch.is_tensor(v) and v.dim() > 0 and v.size(0) == n else v)
                for k, v in kw.items()
            }
            part["input_ids"] = ids[i : i + chunk]
            outs.append(inner(**part))
        width = max(o.size(1) for o in outs)
        gen = kw.get("generation_config") or model.generation_config
        pad = gen.pad_token_id if gen.pad_token_id is not None else 0
        return torch.cat([torch.nn.functional.pad(o, (0, width - o.size(1)), value=pad) for o in outs])

    generate._opgrpo_chunk = chunk  # type: ignore[attr-defined]
    model.generate = generate


def save_policy(trainer: Any, out: Path, merge: bool) -> Path:
    """Save the trained policy where step 05 loads it: merged weights, or the LoRA adapter (+ tokenizer)."""
    model = trainer.model
    tok = trainer.processing_class
    if merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def grpo_dataset(train: pd.DataFrame, rows: int | None = None):
    """Implicit prompt as one user turn; the reference answer and the situation ride along for the reward."""
    from datasets import Dataset

    part = train.iloc[:rows] if rows else train
    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": implicit(r["prompt"])}],
                "reference": r["answer"],
                "situation": r["prompt"],
            }
            for r in part.to_dict("records")
        ]
    )


def check_prompt_lengths(ds, tok, limit: int) -> int:
    """Longest templated prompt in tokens; a prompt over ``train.max_prompt_length`` is an error (TRL 1.x has no
    max_prompt_length to truncate it)."""
    longest = 0
    for ex in ds:
        text = tok.apply_chat_template(ex["prompt"], tokenize=False, add_generation_prompt=True)
        n = len(tok(text, add_special_tokens=False)["input_ids"])
        if n > limit:
            raise ValueError(
                f"prompt for {ex.get('situation', '?')!r} has {n} tokens > train.max_prompt_length={limit}"
            )
        longest = max(longest, n)
    return longest


# ---------------------------------------------------------------- training runs
def log_frame(history: list[dict]) -> pd.DataFrame:
    rows = [h for h in history if "step" in h and not any(k.startswith("train_") for k in h)]
    return pd.DataFrame(rows)


def trainer_args(section: dict[str, Any], keep_all: bool) -> dict[str, Any]:
    """Checkpoint retention: unless the profile says otherwise keep the last 2 (enough to resume past a checkpoint
    cut by a kill), or all of them when every checkpoint is evaluated."""
    return section if keep_all or "save_total_limit" in section else {**section, "save_total_limit": 2}


def check_disk(cfg: RunConfig, model_path: str, out: Path, step: str, keep: int | None = None) -> None:
    """Before a long training step: enough free disk for what it will write (``gpu.disk``: the checkpoints it keeps
    in the master dtype, the optimizer states of the last one, the final policy), from the policy's shape."""
    from .gpu import disk, shape_of
    from .runs import check_free_disk

    shape = shape_of(model_path)
    if shape is not None:
        check_free_disk(out, disk(cfg, shape, step, keep)["total_gb"], step.upper())


class OptimizerInLastCheckpoint:
    """Trainer callback: after each save, delete optimizer/scheduler/RNG states from every checkpoint but the newest
    (only the newest is resumed from; the others keep their weights for checkpoint evaluation)."""

    def __new__(cls):
        from transformers import TrainerCallback

        from .runs import drop_optimizer_states, last_complete_checkpoint

        class OptimizerInLastCheckpoint(TrainerCallback):
            def on_save(self, args, state, control, **kw):
                if not state.is_world_process_zero:
                    return
                ckpts = Path(args.output_dir)
                newest = last_complete_checkpoint(ckpts, log=lambda *_: None)
                for old in ckpts.glob("checkpoint-*"):
                    if newest and old.resolve() != Path(newest).resolve() and old.is_dir():
                        drop_optimizer_states(old, nested=False)

        return OptimizerInLastCheckpoint()


def resume_from(resuming: bool, out: Path) -> str | None:
    """The checkpoint an interrupted run resumes from (None: a fresh start)."""
    from .runs import last_complete_checkpoint

    return last_complete_checkpoint(out / "checkpoints") if resuming else None


def drop_optimizers(out: Path, step: str) -> None:
    """A finished run never resumes: its checkpoints keep their weights only (for checkpoint evaluation)."""
    from .runs import drop_optimizer_states

    freed = drop_optimizer_states(out / "checkpoints")
    if freed:
        print(f"[{step}] finished: dropped optimizer states from the checkpoints ({freed / 2**30:.2f} GB)")


def backend_flags(cfg: RunConfig, plan: Precision) -> dict[str, Any]:
    """Trainer precision flags: hf gets the device too; Unsloth picks its device itself (its trainer patch turns
    the flags into accelerate's mixed precision, unsloth/models/rl.py ~2637)."""
    return device_kwargs(cfg, plan) if cfg.train.backend == "hf" else plan.trainer_flags()


def sft_config(cfg: RunConfig, out: Path, plan: Precision):
    """TRL's SFTConfig of the profile, with the plan's precision flags."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(out / "checkpoints"),
        report_to="none",
        seed=cfg.seed,
        **backend_flags(cfg, plan),
        **trainer_args(cfg.train.sft, keep_all=False),
    )


def grpo_config(cfg: RunConfig, out: Path, plan: Precision | None = None):
    """TRL's GRPOConfig of the profile: the plan's precision flags, the reference model in the plan's 16-bit dtype
    (TRL builds it in fp32 unless ``model_init_kwargs`` says otherwise, trl/trainer/utils.py create_model_from_path)."""
    from trl import GRPOConfig

    tc = cfg.train
    plan = plan or precision_plan(cfg)
    kw = backend_flags(cfg, plan)
    # every checkpoint is kept when the curve or the checkpoint evaluation scores them
    keep_all = cfg.eval.checkpoint_rows_per_split > 0 or tc.validation_every > 0
    grpo = trainer_args(tc.grpo, keep_all=keep_all)
    if "model_init_kwargs" not in grpo and not tc.lora.enabled and float(grpo.get("beta", 0.0)) > 0:
        # TRL then warns that model_init_kwargs is ignored for an instantiated model: it still builds the reference
        # model with it (trl/trainer/grpo_trainer.py, "Reference model")
        grpo = {**grpo, "model_init_kwargs": {"dtype": plan.reference_dtype}}
    return GRPOConfig(output_dir=str(out / "checkpoints"), report_to="none", seed=cfg.seed, **kw, **grpo)


def kept_checkpoints(args: Any, every: int = 0) -> int | None:
    """How many checkpoints a run keeps with these TRL ``args`` (its ``save_steps``, plus the validation curve's
    every ``every`` steps and last step); None when TRL's ``save_total_limit`` decides."""
    if args.save_total_limit is not None or args.max_steps <= 0:
        return args.save_total_limit
    steps = range(1, args.max_steps + 1)
    return len([k for k in steps if k % args.save_steps == 0 or (every and (k % every == 0 or k == args.max_steps))])


def save_at(every: int):
    """Trainer callback: a checkpoint every ``every`` steps and at the last one (the validation curve scores them)."""
    from transformers import TrainerCallback

    class SaveAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step % every == 0 or state.global_step == state.max_steps:
                control.should_save = True

    return SaveAt()


def overlong_reward(cfg: RunConfig, args: Any) -> list[Any]:
    """``reward.overlong_cache``: TRL's soft over-long punishment (DAPO; 0 up to L_max - cache, then down to -1
    at ``max_completion_length``) as a second reward function, logged by TRL per step; [] when off."""
    if not cfg.reward.overlong_cache:
        return []
    from trl.rewards import get_soft_overlong_punishment

    return [get_soft_overlong_punishment(args.max_completion_length, cfg.reward.overlong_cache)]
