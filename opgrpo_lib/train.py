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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from .config import ConfigError, RunConfig
from .progress import trainer_callback
from .prompts import implicit
from .runs import RunPaths, atomic_write_parquet, atomic_write_text, locked, resolve_device
from .text import two_block
from .validation import Validator, curve_callback, sft_point

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
        from .gpu import require_usable_gpu

        require_usable_gpu()  # visible but unusable: say why (torch build / driver)
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


@dataclasses.dataclass(frozen=True)
class Precision:
    """How weights are stored and computed on the device a run gets (``train.precision``)."""

    load_dtype: str  # dtype the policy is loaded in (hf backend)
    compute_dtype: str  # autocast / Unsloth dtype
    autocast: bool  # Trainer bf16/fp16 flag (mixed precision over the loaded weights)
    reference_dtype: str  # GRPO reference model (full fine-tuning, beta > 0)
    master: str  # dtype the trainable weights are updated in

    def trainer_flags(self) -> dict[str, bool]:
        return {"bf16": self.autocast and self.compute_dtype == "bfloat16",
                "fp16": self.autocast and self.compute_dtype == "float16"}  # fmt: skip

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
        raise RuntimeError(f"trainable weights are {bad}, not {plan.master} (train.precision: {plan.master}): "
                           "the backend did not keep master weights as configured")  # fmt: skip


def load_model(cfg: RunConfig, path: str, plan: Precision | None = None) -> tuple[Any, Any, Any]:
    """(model, tokenizer, peft_config or None) for the configured backend, in ``plan``'s precision."""
    tc = cfg.train
    plan = plan or precision_plan(cfg)
    if tc.backend == "unsloth":
        ensure_unsloth()
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(
            model_name=path, max_seq_length=tc.max_seq_length, load_in_4bit=tc.load_in_4bit,
            fast_inference=tc.use_vllm, full_finetuning=not tc.lora.enabled, **plan.unsloth_kwargs(cfg),
        )  # fmt: skip
        if tc.lora.enabled:
            model = FastLanguageModel.get_peft_model(
                model, r=tc.lora.r, lora_alpha=tc.lora.alpha, lora_dropout=tc.lora.dropout,
                target_modules=tc.lora.target_modules, use_gradient_checkpointing="unsloth", random_state=cfg.seed,
            )  # fmt: skip
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
            r=tc.lora.r, lora_alpha=tc.lora.alpha, lora_dropout=tc.lora.dropout, target_modules=tc.lora.target_modules,
            task_type="CAUSAL_LM",
        )  # fmt: skip
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
            part = {k: (v[i : i + chunk] if torch.is_tensor(v) and v.dim() > 0 and v.size(0) == n else v)
                    for k, v in kw.items()}  # fmt: skip
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


# ---------------------------------------------------------------- SFT data
def core_block(perspectives: list[dict]) -> str:
    return "\n".join(f"In the perspective of {p['name']}, {p['explanation']}" for p in perspectives)


def sft_target(perspectives: list[dict], summary: str) -> str:
    return two_block(core_block(perspectives), summary)


# Words a complete clause does not end on (articles, prepositions, auxiliaries, possessives, conjunctions).
FUNCTION_WORDS = frozenset(
    "a an the to of in on at for with by from into onto about over under than as and or nor but if because while "
    "since though although whether that which who whom whose such my your his her its our their one's can could may "
    "might will would should must shall is are was were be been being am has have had do does did very every".split()
)
# Where a long sentence's first clause ends: punctuation, or right before a word that opens a new clause.
_CLAUSE_OPENERS = (
    "and but while whereas because since as which who so although though meaning thereby by promoting "
    "ensuring showing demonstrating allowing leading causing regardless rather even"
).split()
_BOUNDARY_RE = re.compile(r"\s*[,;:\u2014]\s+|\s+\u2014\s+|\s+(?=(?:" + "|".join(_CLAUSE_OPENERS) + r")\b)", re.I)


_DEPENDENT_OPENERS = frozenset(
    "if as when while by although though since because given in for to with without after before despite "
    "regardless instead unless whether once considering".split()
)


_SENTENCE_END_RE = re.compile(r"(?<!\be\.g\.)(?<!\bi\.e\.)(?<=[.!?])\s+", re.I)


def _complete(words: list[str]) -> bool:
    text = " ".join(words)
    return bool(words) and words[-1].lower().strip("\"'") not in FUNCTION_WORDS and text.count("(") == text.count(")")


def short_sentence(explanation: str, words: int) -> str:
    """A whole short sentence from an explanation, without final punctuation: its first sentence when that has at
    most ``words`` words, else its longest first clause (cut at a comma or before a clause-opening word such as
    "because" or "while") of at most ``words`` words that does not end on a function word; failing that the
    shortest such clause, failing that the whole first sentence."""
    first = _SENTENCE_END_RE.split(explanation.strip())[0].rstrip(".!?;:, ")
    if len(first.split()) <= words:
        return first
    # A sentence that opens with a dependent clause ("If the fly poses a risk, ...") has its main clause after
    # the first comma: no cut before that.
    lead = first.split()[0].lower().strip(",")
    start = first.find(",") + 1 if lead in _DEPENDENT_OPENERS and "," in first else 0
    clauses = [first[: m.start()].rstrip(".!?;:, ") for m in _BOUNDARY_RE.finditer(first) if m.start() > start]
    clauses = [c for c in clauses if len(c.split()) >= 4 and _complete(c.split())]
    fits = [c for c in clauses if len(c.split()) <= words]
    return max(fits, key=len) if fits else min(clauses, key=len) if clauses else first


def compact_target(perspectives: list[dict], words: int = 12, fits: Callable[[str], bool] | None = None) -> str | None:
    """cpu-profile target (documented deviation): the paper's two-block layout with one short whole sentence per
    perspective and a one-sentence summary naming every perspective — short enough for a 135M model to finish
    within its completion budget, and it keeps every name in the summary (the format score's echo rule). With
    ``fits`` (e.g. "at most N tokens"), the sentences get shorter until the target fits; None if it never does."""
    names = [p["name"].lower() for p in perspectives]
    listed = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
    for cap in range(words, 3, -1):
        lines = "\n".join(
            f"In the perspective of {p['name']}, {short_sentence(p['explanation'], cap)}." for p in perspectives
        )
        target = two_block(lines, f"This situation weighs {listed}.")
        if fits is None or fits(target):
            return target
    return None


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


def sft_targets(cfg: RunConfig, train: pd.DataFrame, summaries: dict[str, str], tok: Any = None) -> list[str | None]:
    """The SFT completion per training row: the paper's target, or the compact one (``train.targets``), which with
    the tokenizer ``tok`` is kept within GRPO's completion budget (``train.grpo.max_completion_length``); None for
    a situation whose compact target cannot fit (too many perspectives), which SFT leaves out."""
    recs = train.to_dict("records")
    if cfg.train.targets == "compact":
        budget = cfg.train.grpo.get("max_completion_length", 256)
        fits = (lambda t: len(tok(t, add_special_tokens=False)["input_ids"]) <= budget) if tok is not None else None
        return [compact_target(list(r["perspectives"]), cfg.train.compact_words, fits) for r in recs]
    return [sft_target(list(r["perspectives"]), summaries[r["prompt"]]) for r in recs]


def sft_dataset(train: pd.DataFrame, targets: list[str | None]):
    from datasets import Dataset

    rows = [
        {"prompt": [{"role": "user", "content": implicit(r["prompt"])}],
         "completion": [{"role": "assistant", "content": t}]}
        for r, t in zip(train.to_dict("records"), targets) if t is not None
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


def check_disk(cfg: RunConfig, model_path: str, out: Path, step: str, keep: int | None = None) -> None:
    """Before a long training step: enough free disk for what it will write (``gpu.disk``: the checkpoints it keeps
    in the master dtype, the optimizer states of the last one, the final policy), from the policy's shape."""
    from .gpu import disk, shape_of
    from .runs import check_free_disk

    shape = shape_of(model_path)
    if shape is not None:
        check_free_disk(out, disk(cfg, shape, step, keep)["total_gb"], step.upper())


class _OptimizerInLastCheckpoint:
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
        sft_point(cfg, paths)
        return _finished_result(paths, out, "sft_train_log.csv")
    from trl import SFTConfig, SFTTrainer

    # every check that can refuse runs before the step folder is touched
    validate_trainer_keys("sft", tc.sft, SFTConfig)
    train, _ = load_prepared(paths.data)
    check_disk(cfg, resolve(cfg.models.policy), paths.root, "sft")
    plan = precision_plan(cfg)
    model, tok, peft_config = load_model(cfg, resolve(cfg.models.policy), plan)
    out, state = _commit(cfg, start), start.state
    timings: dict[str, float] = {}
    with timed(timings, "summaries"):
        summaries = build_summaries(cfg, train, out / "summaries.jsonl")
    atomic_write_parquet(
        pd.DataFrame({"prompt": list(summaries), "summary": list(summaries.values())}), out / "summaries.parquet"
    )
    ds = sft_dataset(train, sft_targets(cfg, train, summaries, tok))
    args = SFTConfig(
        output_dir=str(out / "checkpoints"), report_to="none", seed=cfg.seed, **_backend_flags(cfg, plan),
        **_trainer_args(tc.sft, keep_all=False),
    )  # fmt: skip
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_config,
                         callbacks=[trainer_callback("sft"), _OptimizerInLastCheckpoint()])  # fmt: skip
    check_trainable_dtype(trainer.model, plan)
    with timed(timings, "train"):
        trainer.train(resume_from_checkpoint=_resume_from(state, out))
    policy = save_policy(trainer, out / "policy", merge=tc.merge_adapter)
    log = log_frame(trainer.state.log_history)
    atomic_write_text(paths.results / "sft_train_log.csv", log.to_csv(index=False))
    write_manifest(out, "03_sft", cfg, timings, inputs=[paths.data / "train.parquet"],
                   extra={"backend": tc.backend, "summaries": tc.summaries.source, "rows": len(ds),
                          "rows_over_budget": len(train) - len(ds)}, results=paths.results)  # fmt: skip
    _finish(cfg, paths, "sft", out)
    sft_point(cfg, paths, force)  # its own step and key: a reward- or eval-only change does not retrain SFT
    return {"policy": policy, "log": log, "rows": len(ds)}


def _backend_flags(cfg: RunConfig, plan: Precision) -> dict[str, Any]:
    """Trainer precision flags: hf gets the device too; Unsloth picks its device itself (its trainer patch turns
    the flags into accelerate's mixed precision, unsloth/models/rl.py ~2637)."""
    return device_kwargs(cfg, plan) if cfg.train.backend == "hf" else plan.trainer_flags()


def grpo_config(cfg: RunConfig, out: Path, plan: Precision | None = None):
    """TRL's GRPOConfig of the profile: the plan's precision flags, the reference model in the plan's 16-bit dtype
    (TRL builds it in fp32 unless ``model_init_kwargs`` says otherwise, trl/trainer/utils.py create_model_from_path)."""
    from trl import GRPOConfig

    tc = cfg.train
    validate_trainer_keys("grpo", tc.grpo, GRPOConfig)
    plan = plan or precision_plan(cfg)
    kw = _backend_flags(cfg, plan)
    grpo = _trainer_args(tc.grpo, keep_all=cfg.eval.checkpoint_rows_per_split > 0)
    if "model_init_kwargs" not in grpo and not tc.lora.enabled and float(grpo.get("beta", 0.0)) > 0:
        # TRL then warns that model_init_kwargs is ignored for an instantiated model: it still builds the reference
        # model with it (trl/trainer/grpo_trainer.py, "Reference model")
        grpo = {**grpo, "model_init_kwargs": {"dtype": plan.reference_dtype}}
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
    plan = precision_plan(cfg)
    args = grpo_config(cfg, out, plan)
    train, _ = load_prepared(paths.data)
    ds = grpo_dataset(train, cfg.data.grpo_rows if cfg.data.train_source == "final_train" else None)
    timings: dict[str, float] = {}
    with timed(timings, "load"):
        init = resolve_policy(tc.init, cfg, paths.root)
        keep_all = tc.grpo.get("max_steps", 0) // max(1, tc.grpo.get("save_steps", 1))
        check_disk(cfg, init, paths.root, "grpo", keep_all if cfg.eval.checkpoint_rows_per_split else None)
        model, tok, peft_config = load_model(cfg, init, plan)
        longest = check_prompt_lengths(ds, tok, tc.max_prompt_length)
        device = "cuda" if not args.use_cpu else "cpu"
        reward = build_reward(cfg.reward, resolve_estimator(cfg, paths), tokenizer=tok, device=device)
    extra = [trainer_callback("grpo"), _OptimizerInLastCheckpoint(), *(callbacks or [])]
    if tc.validation_every:
        validator = Validator(cfg, paths, reward, args.max_completion_length)
    out, state = _commit(cfg, start), start.state
    if tc.validation_every:  # the curve moved aside with an old run: only this run's points are reloaded
        extra.append(curve_callback(validator, tc.validation_every, paths.results / "validation_curve.csv"))
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=ds, processing_class=tok,
                          peft_config=peft_config, callbacks=extra)  # fmt: skip
    check_trainable_dtype(trainer.model, plan)
    chunk_generation(trainer.model, tc.generation_chunk)
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
