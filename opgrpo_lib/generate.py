"""Step 05: outputs for the evaluation splits from any policy (base, SFT, OP-GRPO; adapter or merged) and the
ModPlural baseline. Batched, resumable (a rerun skips finished rows), with a progress bar."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .config import GenerateCfg, RunConfig, SystemCfg
from .prompts import MODPLURAL_INTEGRATOR, render
from .runs import RunPaths, atomic_write_parquet
from .text import check_layout

RECORD_COLUMNS = ["prompt", "split", "system", "prompt_style", "text", "core", "summary", "valid_format", "attempts"]


def resolve_policy(policy: str, cfg: RunConfig, paths: RunPaths) -> str:
    """``policy`` → the profile's base policy; ``run:sft`` / ``run:grpo`` → the policy saved by step 03 / 04."""
    from .models import resolve

    if policy == "policy":
        return resolve(cfg.models.policy)
    if policy.startswith("run:"):
        path = paths.root / policy[4:] / "policy"
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            step = {"sft": "03_sft", "grpo": "04_op_grpo"}.get(policy[4:], policy[4:])
            raise FileNotFoundError(f"{policy}: no saved policy at {path}; run notebook {step} first")
        return str(path)
    return resolve(policy)


@dataclass
class Policy:
    model: Any
    tokenizer: Any


def load_policy(path: str, device: str | None = None, adapter: str | None = None) -> Policy:
    """A causal LM ready for batched generation; a PEFT adapter folder is merged into its base."""
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
    return Policy(model, tok)


def sample(
    policy: Policy, user_messages: Sequence[str], max_new_tokens: int, temperature: float, top_p: float,
    system: str | None = None, seed: int = 0,
) -> list[str]:  # fmt: skip
    """One sampled completion per user message (a single user turn through the chat template), batched."""
    import torch

    tok, model = policy.tokenizer, policy.model
    convs = [
        ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": m}]
        for m in user_messages
    ]
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(
            **enc, do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
            top_p=top_p if temperature > 0 else None, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
        )  # fmt: skip
    return tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def _record(prompt: str, split: str, system: str, style: str, text: str, attempts: int) -> dict[str, Any]:
    layout = check_layout(text)
    return {
        "prompt": prompt, "split": split, "system": system, "prompt_style": style, "text": text,
        "core": layout.core, "summary": layout.summary, "valid_format": layout.valid, "attempts": attempts,
    }  # fmt: skip


def _done(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    rows = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash: regenerate that row
            continue
        rows[rec["prompt"]] = rec
    return rows


def generate_rows(
    generate_fn, items: list[tuple[str, str]], system: str, style: str, gen: GenerateCfg, out_jsonl: Path, seed: int,
    progress: bool = True,
) -> pd.DataFrame:  # fmt: skip
    """One output per (situation, split) item, batched across splits and resumed from ``out_jsonl`` (a rerun skips
    finished rows; a line cut by a crash is regenerated); invalid layouts are resampled up to ``gen.retries`` more
    times. ``generate_fn(situations, seed) -> texts``."""
    from tqdm.auto import tqdm

    out_jsonl.parent.mkdir(parents=True, exist_ok=True)
    done = _done(out_jsonl)
    todo = [(s, split) for s, split in items if s not in done]
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=system, disable=not progress)
    with open(out_jsonl, "a") as fh:
        for start in range(0, len(todo), gen.batch_size):
            batch = todo[start : start + gen.batch_size]
            situations = [s for s, _ in batch]
            texts = generate_fn(situations, seed + start)
            attempts = [1] * len(batch)
            for retry in range(gen.retries):
                bad = [i for i, t in enumerate(texts) if not check_layout(t).valid]
                if not bad:
                    break
                again = generate_fn([situations[i] for i in bad], seed + start + 7919 * (retry + 1))
                for i, t in zip(bad, again):
                    texts[i], attempts[i] = t, attempts[i] + 1
            for (s, split), t, a in zip(batch, texts, attempts):
                rec = _record(s, split, system, style, t, a)
                done[s] = rec
                fh.write(json.dumps(rec) + "\n")
            fh.flush()
            bar.update(len(batch))
    bar.close()
    return pd.DataFrame([done[s] for s, _ in items], columns=RECORD_COLUMNS)


def modplural_fn(cfg: RunConfig, device: str | None):
    """Modular Pluralism: each community LM comments on the bare situation; the integrator answers with the
    original ModPlural prompt. With ``community_system_prompts`` (offline variant) the base model is steered by
    one system prompt per community instead of LoRA adapters."""
    from .models import resolve

    mp = cfg.generate.modplural
    communities = (
        [(None, p) for p in mp.community_system_prompts]
        if mp.community_system_prompts
        else [(a, None) for a in mp.community]
    )
    base_path = resolve(mp.base)
    integrator = load_policy(resolve(mp.integrator), device)

    def fn(situations: list[str], seed: int) -> list[str]:
        passages = [[] for _ in situations]
        for k, (adapter, system) in enumerate(communities):
            lm = load_policy(base_path, device, adapter=adapter) if adapter else _cached_base(base_path, device)
            outs = sample(lm, situations, mp.community_max_new_tokens, mp.community_temperature, 0.9, system, seed + k)
            for i, o in enumerate(outs):
                passages[i].append(o.strip())
        prompts = [
            MODPLURAL_INTEGRATOR.format(
                situation=s, passages="\n\n".join(f"Passage {j + 1}: {p}" for j, p in enumerate(ps))
            )
            for s, ps in zip(situations, passages)
        ]
        return sample(integrator, prompts, mp.integrator_max_new_tokens, mp.integrator_temperature, 0.9, None, seed)

    return fn


_BASES: dict[tuple[str, str | None], Policy] = {}


def _cached_base(path: str, device: str | None) -> Policy:
    key = (path, device)
    if key not in _BASES:
        _BASES[key] = load_policy(path, device)
    return _BASES[key]


def policy_fn(system: SystemCfg, cfg: RunConfig, paths: RunPaths, device: str | None, template: str | None = None):
    policy = load_policy(resolve_policy(system.policy, cfg, paths), device)
    gen = cfg.generate
    template = template or system.prompt

    def fn(situations: list[str], seed: int) -> list[str]:
        msgs = [render(template, s) for s in situations]
        return sample(policy, msgs, gen.max_new_tokens, gen.temperature, gen.top_p, None, seed)

    return fn


def eval_items(ev: pd.DataFrame, gen: GenerateCfg) -> list[tuple[str, str]]:
    """(situation, split) for the configured splits, the first ``rows_per_split`` of each in evaluation order."""
    items = []
    for split in gen.splits:
        part = ev[ev["split"] == split]["prompt"].tolist()
        items += [(p, split) for p in (part[: gen.rows_per_split] if gen.rows_per_split is not None else part)]
    return items


def run(cfg: RunConfig, paths: RunPaths, progress: bool = True) -> pd.DataFrame:
    """Step 05 entry point: outputs of every configured system (and prompt style) for every split under
    ``runs/<profile>/generate/<system>.jsonl`` plus one ``outputs.parquet``."""
    from .data import load_prepared
    from .runs import resolve_device, timed, write_manifest

    device = resolve_device(cfg)
    _, ev = load_prepared(paths.data)
    items = eval_items(ev, cfg.generate)
    out_dir = paths.step("generate")
    frames, timings = [], {}
    jobs = [(s, s.name, "default", None) for s in cfg.generate.systems]
    if cfg.generate.prompt_styles and cfg.generate.systems:
        first = cfg.generate.systems[0]
        jobs += [(first, f"{first.name}@{k}", k, v) for k, v in cfg.generate.prompt_styles.items()]
    for system, name, style, template in jobs:
        with timed(timings, name):
            fn = (
                modplural_fn(cfg, device)
                if system.kind == "modplural"
                else policy_fn(system, cfg, paths, device, template)
            )
            out = out_dir / f"{name}.jsonl"
            frames.append(generate_rows(fn, items, name, style, cfg.generate, out, cfg.seed, progress))
        _BASES.clear()
    outputs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RECORD_COLUMNS)
    atomic_write_parquet(outputs, out_dir / "outputs.parquet")
    write_manifest(out_dir, "05_generate", cfg, timings, inputs=[paths.data / "eval.parquet"],
                   extra={"retries": cfg.generate.retries, "device_used": device}, results=paths.results)  # fmt: skip
    return outputs
