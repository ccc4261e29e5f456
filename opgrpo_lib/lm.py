"""One causal-LM helper for generation, SFT summaries and the LLM pair judge: resolve a policy name, load it, sample.

Sampling is reproducible per row: each row draws its randomness from its own generator, seeded from the run seed
and the row's text, through the Gumbel-max trick (argmax of logits/T + Gumbel noise is a sample of softmax(logits/T)),
so a row's output does not depend on which other rows share its batch or which other systems ran before it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import RunConfig


def resolve_policy(policy: str, cfg: RunConfig, root: Path) -> str:
    """``policy`` → the profile's base policy; ``run:sft`` / ``run:grpo`` → the policy saved by step 03 / 04 (which
    must be finished and made with the current settings); anything else → a path or hub id."""
    from .keys import StaleUpstream, is_current, recorded
    from .models import resolve
    from .registry import STEPS

    if policy == "policy":
        return resolve(cfg.models.policy)
    if policy.startswith("run:"):
        step = policy[4:]
        if step not in ("sft", "grpo"):
            raise ValueError(f"{policy!r}: expected run:sft or run:grpo")
        path = Path(root) / step / "policy"
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise FileNotFoundError(f"{policy}: no saved policy at {path}; run notebook {STEPS[step].notebook} first")
        if recorded(path.parent) is not None and not is_current(cfg, root, step):
            raise StaleUpstream(
                f"{policy}: the policy at {path} was trained with other settings or is unfinished; rerun notebook "
                f"{STEPS[step].notebook} (or use a fresh --run-dir)"
            )
        return str(path)
    return resolve(policy)


def policy_identity(policy: str, cfg: RunConfig) -> str:
    """What a generation depends on when it uses ``policy``: the training step's key for ``run:*``, else the name."""
    from .keys import step_key

    if policy.startswith("run:"):
        return f"{policy}@{step_key(cfg, policy[4:])}"
    return cfg.models.policy if policy == "policy" else policy


@dataclass
class LM:
    model: Any
    tokenizer: Any


def load(path: str, device: str | None = None, adapter: str | None = None) -> LM:
    """A causal LM ready for batched generation (left padding); a PEFT adapter folder is merged into its base."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    if (Path(path) / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=dtype).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.eval()
    if device:
        model.to(device)
    return LM(model, tok)


def row_seed(seed: int, text: str, salt: int = 0) -> int:
    """A 63-bit seed from the run seed, the row's text and a salt (retry number, community index...)."""
    digest = hashlib.sha256(f"{seed}\0{salt}\0{text}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class RowSampler:
    """A logits processor that turns greedy decoding into per-row sampling: temperature, top-p, then Gumbel noise
    drawn from each row's own generator."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float):
        import torch

        self.temperature, self.top_p = temperature, top_p
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]

    def __call__(self, input_ids, scores):
        import torch

        scores = scores.float() / self.temperature
        if self.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
            cum = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
            drop = cum - torch.softmax(sorted_scores, dim=-1) >= self.top_p  # keep the smallest set reaching top_p
            drop[..., 0] = False
            scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        u = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in self.generators]).to(scores.device)
        gumbel = -torch.log(-torch.log(u.clamp_(1e-20, 1.0 - 1e-7)))
        return scores + gumbel


def chat_prompts(tokenizer: Any, messages: Sequence[str], system: str | None = None) -> list[str]:
    """Each message as one user turn through the chat template, ready for generation. ``system`` None leaves the
    system turn to the template (Qwen2.5 and SmolLM2 insert their default one); any string, ``""`` included, is
    sent as the system message."""
    turn = [{"role": "system", "content": system}] if system is not None else []
    return [
        tokenizer.apply_chat_template(
            turn + [{"role": "user", "content": m}], tokenize=False, add_generation_prompt=True
        )
        for m in messages
    ]


def sample(
    lm: LM,
    messages: Sequence[str],
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    system: str | None = None,
    seeds: Sequence[int] | None = None,
    chat: bool = True,
) -> list[str]:
    """One completion per message (a single user turn through the chat template, or the raw text with
    ``chat=False``), batched. ``temperature`` 0 = greedy; otherwise row i samples with ``seeds[i]``."""
    return sample_clipped(lm, messages, max_new_tokens, temperature, top_p, system, seeds, chat)[0]


def sample_clipped(
    lm: LM,
    messages: Sequence[str],
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    system: str | None = None,
    seeds: Sequence[int] | None = None,
    chat: bool = True,
) -> tuple[list[str], list[bool]]:
    """:func:`sample`, plus per row whether it was clipped (hit ``max_new_tokens`` without an end token)."""
    import torch
    from transformers import LogitsProcessorList

    tok, model = lm.tokenizer, lm.model
    if chat:
        texts = chat_prompts(tok, messages, system)
    else:
        texts = list(messages)
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not chat).to(model.device)
    processors = LogitsProcessorList()
    if temperature > 0:
        if seeds is None or len(seeds) != len(texts):
            raise ValueError("sampling needs one seed per row")
        processors.append(RowSampler(seeds, temperature, top_p))
    with torch.inference_mode():
        out = model.generate(
            **enc,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            logits_processor=processors,
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id,
        )
    new = out[:, enc["input_ids"].shape[1] :]
    ended = (new == tok.eos_token_id).any(dim=1) | (new == tok.pad_token_id).any(dim=1)
    clipped = [bool(new.shape[1] >= max_new_tokens and not e) for e in ended.tolist()]
    return tok.batch_decode(new, skip_special_tokens=True), clipped
