"""Steps 03–04: SFT warm start and OP-GRPO with TRL's ``SFTTrainer`` / ``GRPOTrainer``.

Our code builds configs, data and reward callables; TRL trains. Two backends behind ``train.backend``:
``hf`` (transformers + PEFT LoRA or full fine-tune; CPU or GPU) and ``unsloth`` (GPU only; imported before
transformers/trl/peft). A rerun with the same settings is a no-op once finished and resumes from the last complete
checkpoint otherwise; changed settings start a new run (``provenance.begin``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from .config import ConfigError, RunConfig
from .progress import trainer_callback
from .prompts import implicit
from .runs import RunPaths, atomic_write_parquet, atomic_write_text, locked, resolve_device

SUMMARY_INSTRUCTION = (
    "Please summarize the following value-based comments into a natural paragraph that reflects multiple perspectives "
    "on the situation. Ensure that each sentence in your summary corresponds clearly to each of the original comments.\n"
    "Make sure your summary is engaging and written in a conversational yet informative tone, making it accessible and "
    "thought-provoking for the reader.\nUse the example below to guide your style and format."
)
# One-shot example in the authors' layout. Their example text (a 10-comment "sleeping bag" case) is not public in
# full, so this one is ours (documented deviation).
SUMMARY_EXAMPLE = (
    "### Example\n**Question:** Returning a lost wallet with all the money inside\n**Comments:**\n"
    "1. In the perspective of Honesty, Returning the wallet intact reflects truthfulness and integrity.\n"
    "2. In the perspective of Empathy, The owner is likely worried, and returning it relieves their distress.\n"
    "3. In the perspective of Duty to respect property, People have a duty not to keep what belongs to others.\n"
    "**Summary:** Returning a lost wallet with all its money is first of all an act of honesty and integrity. "
    "It is also an act of empathy, since the owner is probably anxious and will be relieved to get it back. "
    "And it honours a basic duty to respect property, because what belongs to others is not ours to keep.\n\n"
)


# ---------------------------------------------------------------- validation against the installed TRL
def validate_trainer_keys(section: str, keys: dict[str, Any], config_cls: type) -> None:
    """Every key of ``train.<section>`` must be a field of the installed TRL config (TRL renames and removes
    fields between releases: fail here, not an hour into a run)."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    for key in keys:
        if key not in fields:
            import trl

            raise ConfigError(
                f"train.{section}.{key} is not a field of trl.{config_cls.__name__} (trl {trl.__version__}); "
                "TRL renamed or removed it: update the profile"
            )


# ---------------------------------------------------------------- backends
def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def ensure_unsloth() -> Any:
    """Import Unsloth first (it patches transformers/trl/peft), only with CUDA; clear errors otherwise."""
    from importlib.util import find_spec

    if not cuda_available():
        raise RuntimeError("train.backend=unsloth needs a CUDA GPU; use backend: hf on this machine")
    if find_spec("unsloth") is None:
        raise RuntimeError("train.backend=unsloth needs the [gpu] extra: pip install -e '.[gpu]'")
    already = [m for m in ("trl", "transformers", "peft") if m in sys.modules and "unsloth" not in sys.modules]
    if already:
        raise RuntimeError(
            f"Unsloth must be imported before {already}; restart the kernel and run the training step first "
            "(or use the CLI: opgrpo train --profile paper)"
        )
    os.environ.setdefault("UNSLOTH_DISABLE_CPU_FALLBACK", "1")
    import unsloth

    return unsloth


def device_kwargs(cfg: RunConfig) -> dict[str, Any]:
    cuda = resolve_device(cfg) == "cuda"
    import torch

    bf16 = cuda and torch.cuda.is_bf16_supported()
    return {"use_cpu": not cuda, "bf16": bf16, "fp16": cuda and not bf16}


def load_model(cfg: RunConfig, path: str) -> tuple[Any, Any, Any]:
    """(model, tokenizer, peft_config or None) for the configured backend."""
    tc = cfg.train
    if tc.backend == "unsloth":
        ensure_unsloth()
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(
            model_name=path, max_seq_length=tc.max_seq_length, load_in_4bit=tc.load_in_4bit,
            fast_inference=tc.use_vllm, dtype=None, full_finetuning=not tc.lora.enabled,
        )  # fmt: skip
        if tc.lora.enabled:
            model = FastLanguageModel.get_peft_model(
                model, r=tc.lora.r, lora_alpha=tc.lora.alpha, lora_dropout=tc.lora.dropout,
                target_modules=tc.lora.target_modules, use_gradient_checkpointing="unsloth", random_state=cfg.seed,
            )  # fmt: skip
        return model, tok, None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = device_kwargs(cfg)
    dtype = torch.bfloat16 if kw["bf16"] else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    peft_config = None
    if tc.lora.enabled:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=tc.lora.r, lora_alpha=tc.lora.alpha, lora_dropout=tc.lora.dropout, target_modules=tc.lora.target_modules,
            task_type="CAUSAL_LM",
        )  # fmt: skip
    return model, tok, peft_config


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


# ---------------------------------------------------------------- SFT data
def core_block(perspectives: list[dict]) -> str:
    return "\n".join(f"In the perspective of {p['name']}, {p['explanation']}" for p in perspectives)


def sft_target(perspectives: list[dict], summary: str) -> str:
    return f"<core perspectives>\n{core_block(perspectives)}\n</core perspectives>\n\n<summary>\n{summary}\n</summary>"


def short_clause(explanation: str, words: int) -> str:
    """The first sentence of an explanation, cut to at most ``words`` words, without final punctuation."""
    first = re.split(r"(?<=[.!?])\s+", explanation.strip())[0].rstrip(".!?;:, ")
    cut = first.split()[:words]
    return " ".join(cut).rstrip(".!?;:, ")


def compact_target(perspectives: list[dict], words: int = 12) -> str:
    """cpu-profile target (documented deviation): the paper's two-block layout with one short clause per
    perspective and a one-sentence summary naming every perspective — short enough for a 135M model to finish
    within its completion budget, and it keeps every name in the summary (the format score's echo rule)."""
    lines = "\n".join(
        f"In the perspective of {p['name']}, {short_clause(p['explanation'], words)}." for p in perspectives
    )
    names = [p["name"].lower() for p in perspectives]
    listed = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
    summary = f"This situation weighs {listed}."
    return f"<core perspectives>\n{lines}\n</core perspectives>\n\n<summary>\n{summary}\n</summary>"


def capitalise_sentences(text: str) -> str:
    """The authors capitalise each summary sentence (split on sentence punctuation + space)."""
    parts = re.split(r"([.!?]\s+)", text.strip())
    return "".join(p[:1].upper() + p[1:] if i % 2 == 0 else p for i, p in enumerate(parts))


def offline_summary(perspectives: list[dict]) -> str:
    """Offline fallback (no capable LLM): one sentence per comment, naming its perspective, joined into a
    paragraph — keeps the paper's "one summary sentence per comment" property, not its fluency."""
    sents = []
    for p in perspectives:
        first = re.split(r"(?<=[.!?])\s+", p["explanation"].strip())[0].rstrip(".!?")
        sents.append(f"From the perspective of {p['name'].lower()}, {first[:1].lower() + first[1:]}.")
    return " ".join(sents)


def summary_prompt(situation: str, perspectives: list[dict]) -> str:
    comments = "\n".join(
        f"{i + 1}. In the perspective of {p['name']}, {p['explanation']}" for i, p in enumerate(perspectives)
    )
    return f"{SUMMARY_INSTRUCTION}\n\n{SUMMARY_EXAMPLE}### Now your turn\n**Question:** {situation}\n**Comments:**\n{comments}\n**Summary:**"


def build_summaries(cfg: RunConfig, train: pd.DataFrame, cache: Path, device: str | None = None) -> dict[str, str]:
    """Summary per training situation: an LLM with the paper's sampling (batched, cached in a JSONL keyed by
    prompt, so reruns resume) or the documented offline fallback."""
    sc = cfg.train.summaries
    if sc.source == "offline":
        return {r["prompt"]: offline_summary(list(r["perspectives"])) for r in train.to_dict("records")}
    from tqdm.auto import tqdm

    from . import lm
    from .models import resolve

    done: dict[str, str] = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            try:
                rec = json.loads(line)
                done[rec["prompt"]] = rec["summary"]
            except (json.JSONDecodeError, KeyError):
                continue
    todo = [r for r in train.to_dict("records") if r["prompt"] not in done]
    if todo:
        model = lm.load(resolve(sc.model), device)
        with open(cache, "a") as fh:
            for start in tqdm(range(0, len(todo), sc.batch_size), desc="summaries"):
                batch = todo[start : start + sc.batch_size]
                prompts = [summary_prompt(r["prompt"], list(r["perspectives"])) for r in batch]
                seeds = [lm.row_seed(cfg.seed, r["prompt"]) for r in batch]
                outs = lm.sample(model, prompts, sc.max_new_tokens, sc.temperature, sc.top_p, None, seeds)
                for r, o in zip(batch, outs):
                    done[r["prompt"]] = capitalise_sentences(o.split("</think>")[-1].strip())
                    fh.write(json.dumps({"prompt": r["prompt"], "summary": done[r["prompt"]]}) + "\n")
                fh.flush()
    return done


def sft_targets(cfg: RunConfig, train: pd.DataFrame, summaries: dict[str, str]) -> list[str]:
    """The SFT completion per training row: the paper's target, or the compact one (``train.targets``)."""
    recs = train.to_dict("records")
    if cfg.train.targets == "compact":
        return [compact_target(list(r["perspectives"]), cfg.train.compact_words) for r in recs]
    return [sft_target(list(r["perspectives"]), summaries[r["prompt"]]) for r in recs]


def sft_dataset(train: pd.DataFrame, targets: list[str]):
    from datasets import Dataset

    rows = [
        {"prompt": [{"role": "user", "content": implicit(r["prompt"])}],
         "completion": [{"role": "assistant", "content": t}]}
        for r, t in zip(train.to_dict("records"), targets)
    ]  # fmt: skip
    return Dataset.from_list(rows)


def grpo_dataset(train: pd.DataFrame, rows: int | None = None):
    """Implicit prompt as one user turn; the reference answer and the situation ride along for the reward."""
    from datasets import Dataset

    part = train.iloc[:rows] if rows else train
    return Dataset.from_list(
        [{"prompt": [{"role": "user", "content": implicit(r["prompt"])}], "reference": r["answer"], "situation": r["prompt"]}
         for r in part.to_dict("records")]
    )  # fmt: skip


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


def _trainer_args(section: dict[str, Any], keep_all: bool) -> dict[str, Any]:
    """Checkpoint retention: unless the profile says otherwise keep the last 2 (enough to resume past a checkpoint
    cut by a kill), or all of them when every checkpoint is evaluated."""
    return section if keep_all or "save_total_limit" in section else {**section, "save_total_limit": 2}


def _start(cfg: RunConfig, paths: RunPaths, step: str, force: bool):
    """(how it starts, where): nothing in the run folder is touched yet (see ``provenance.prepare_start``)."""
    from .provenance import prepare_start, require_upstream

    require_upstream(cfg, paths.root, step)
    start = prepare_start(cfg, paths.root, step, force)
    if start.state == "finished":
        print(f"[{step}] finished earlier with these settings: nothing to do (force=True / --force retrains)")
    return start, paths.root / step


def _commit(cfg: RunConfig, start) -> Path:
    """Every check passed: move an old run aside / make the step folder (``provenance.commit_start``)."""
    from .provenance import commit_start

    return commit_start(cfg, start)


def check_disk(model_path: str, out: Path, section: dict[str, Any], what: str) -> None:
    """Before a long training step: enough free disk for the checkpoints it keeps (weights + optimizer states, about
    3x the weights each, plus the final policy), estimated from the size of the starting weights."""
    from .runs import check_free_disk

    weights = sum(f.stat().st_size for f in Path(model_path).glob("*.safetensors")) if Path(model_path).is_dir() else 0
    if weights:
        keep = section.get("save_total_limit") or 2
        check_free_disk(out, weights * (3 * keep + 1) / 2**30 + 0.5, what)


def _finish(cfg: RunConfig, paths: RunPaths, step: str, out: Path) -> None:
    from .provenance import mark
    from .runs import drop_optimizer_states

    freed = drop_optimizer_states(out / "checkpoints")
    if freed:
        print(f"[{step}] finished: dropped optimizer states from the checkpoints ({freed / 2**30:.2f} GB)")
    mark(out, cfg, step, "finished")


def _resume_from(state: str, out: Path) -> str | None:
    from .runs import last_complete_checkpoint

    return last_complete_checkpoint(out / "checkpoints") if state == "resume" else None


def _finished_result(paths: RunPaths, out: Path, log_name: str) -> dict[str, Any]:
    log_path = paths.results / log_name
    log = pd.read_csv(log_path) if log_path.exists() else pd.DataFrame()
    return {"policy": out / "policy", "log": log, "skipped": True}


@locked("step 03 (SFT)")
def run_sft(cfg: RunConfig, paths: RunPaths, force: bool = False) -> dict[str, Any]:
    """Step 03: SFT of the base policy on implicit prompt → core perspectives + summary."""
    from .data import load_prepared
    from .models import resolve
    from .runs import timed, write_manifest

    tc = cfg.train
    if tc.backend == "unsloth":
        ensure_unsloth()  # before anything else imports transformers
    start, out = _start(cfg, paths, "sft", force)
    if start.state == "finished":
        return _finished_result(paths, out, "sft_train_log.csv")
    from trl import SFTConfig, SFTTrainer

    # every check that can refuse runs before the step folder is touched
    validate_trainer_keys("sft", tc.sft, SFTConfig)
    train, _ = load_prepared(paths.data)
    check_disk(resolve(cfg.models.policy), paths.root, tc.sft, "SFT")
    model, tok, peft_config = load_model(cfg, resolve(cfg.models.policy))
    out, state = _commit(cfg, start), start.state
    timings: dict[str, float] = {}
    with timed(timings, "summaries"):
        summaries = build_summaries(cfg, train, out / "summaries.jsonl")
    atomic_write_parquet(
        pd.DataFrame({"prompt": list(summaries), "summary": list(summaries.values())}), out / "summaries.parquet"
    )
    ds = sft_dataset(train, sft_targets(cfg, train, summaries))
    args = SFTConfig(
        output_dir=str(out / "checkpoints"), report_to="none", seed=cfg.seed, **device_kwargs(cfg) if tc.backend == "hf" else {},
        **_trainer_args(tc.sft, keep_all=False),
    )  # fmt: skip
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_config,
                         callbacks=[trainer_callback("sft")])  # fmt: skip
    with timed(timings, "train"):
        trainer.train(resume_from_checkpoint=_resume_from(state, out))
    policy = save_policy(trainer, out / "policy", merge=tc.merge_adapter)
    log = log_frame(trainer.state.log_history)
    atomic_write_text(paths.results / "sft_train_log.csv", log.to_csv(index=False))
    if tc.validation_every:  # does the SFT policy finish the layout within the GRPO budget? (greedy, validation)
        from .estimator import resolve_estimator
        from .reward import build_reward
        from .validation import Validator

        with timed(timings, "validation"):
            reward = build_reward(cfg.reward, resolve_estimator(cfg, paths) if cfg.reward.estimator != "run:estimator"
                                  else cfg.models.encoder, tokenizer=tok)  # fmt: skip
            budget = tc.grpo.get("max_completion_length", 256)
            point = Validator(cfg, paths, reward, budget).score(trainer.model, tok, 0)
        atomic_write_text(paths.results / "sft_validation.json", json.dumps({**point, "max_new_tokens": budget,
                          "reward_estimator": "base encoder (models.encoder): step 02 may not have run"}, indent=2))  # fmt: skip
    write_manifest(out, "03_sft", cfg, timings, inputs=[paths.data / "train.parquet"],
                   extra={"backend": tc.backend, "summaries": tc.summaries.source, "rows": len(ds)}, results=paths.results)  # fmt: skip
    _finish(cfg, paths, "sft", out)
    return {"policy": policy, "log": log, "rows": len(ds)}


def grpo_config(cfg: RunConfig, out: Path):
    from trl import GRPOConfig

    tc = cfg.train
    validate_trainer_keys("grpo", tc.grpo, GRPOConfig)
    kw = device_kwargs(cfg) if tc.backend == "hf" else {}
    grpo = _trainer_args(tc.grpo, keep_all=cfg.eval.checkpoint_rows_per_split > 0)
    return GRPOConfig(output_dir=str(out / "checkpoints"), report_to="none", seed=cfg.seed, **kw, **grpo)


@locked("step 04 (GRPO)")
def run_grpo(
    cfg: RunConfig, paths: RunPaths, force: bool = False, callbacks: list | None = None
) -> dict[str, Any]:  # fmt: skip
    """Step 04: OP-GRPO from the SFT policy (``train.init``) with the OP reward (extra trainer ``callbacks``
    are for benchmarks)."""
    from .data import load_prepared
    from .estimator import resolve_estimator
    from .lm import resolve_policy
    from .reward import build_reward
    from .runs import timed, write_manifest

    tc = cfg.train
    if tc.backend == "unsloth":
        ensure_unsloth()  # before anything else imports transformers
    start, out = _start(cfg, paths, "grpo", force)
    if start.state == "finished":
        return _finished_result(paths, out, "train_log.csv")
    from trl import GRPOTrainer

    # every check that can refuse runs before the step folder is touched
    args = grpo_config(cfg, out)
    train, _ = load_prepared(paths.data)
    ds = grpo_dataset(train, cfg.data.grpo_rows if cfg.data.train_source == "final_train" else None)
    timings: dict[str, float] = {}
    with timed(timings, "load"):
        init = resolve_policy(tc.init, cfg, paths.root)
        keep_all = {"save_total_limit": tc.grpo.get("max_steps", 0) // max(1, tc.grpo.get("save_steps", 1))}
        check_disk(init, paths.root, tc.grpo if not cfg.eval.checkpoint_rows_per_split else keep_all, "GRPO")
        model, tok, peft_config = load_model(cfg, init)
        longest = check_prompt_lengths(ds, tok, tc.max_prompt_length)
        device = "cuda" if not args.use_cpu else "cpu"
        reward = build_reward(cfg.reward, resolve_estimator(cfg, paths), tokenizer=tok, device=device)
    extra = [trainer_callback("grpo"), *(callbacks or [])]
    if tc.validation_every:
        from .validation import Validator, curve_callback

        validator = Validator(cfg, paths, reward, args.max_completion_length)
    out, state = _commit(cfg, start), start.state
    if tc.validation_every:  # the curve moved aside with an old run: only this run's points are reloaded
        extra.append(curve_callback(validator, tc.validation_every, paths.results / "validation_curve.csv"))
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=ds, processing_class=tok,
                          peft_config=peft_config, callbacks=extra)  # fmt: skip
    with timed(timings, "train"):
        trainer.train(resume_from_checkpoint=_resume_from(state, out))
    policy = save_policy(trainer, out / "policy", merge=tc.merge_adapter)
    log = log_frame(trainer.state.log_history)
    if trainer.args.process_index == 0:
        atomic_write_text(paths.results / "train_log.csv", log.to_csv(index=False))
        write_manifest(out, "04_grpo", cfg, timings, inputs=[paths.data / "train.parquet"],
                       extra={"backend": tc.backend, "weights": cfg.reward.weights, "longest_prompt_tokens": longest,
                              "world_size": trainer.args.world_size, "prompts": len(ds),
                              "completions_per_step": args.per_device_train_batch_size * args.gradient_accumulation_steps
                              * trainer.args.world_size}, results=paths.results)  # fmt: skip
        _finish(cfg, paths, "grpo", out)
    return {"policy": policy, "log": log}
