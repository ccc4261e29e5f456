"""Provenance keys: every step's output knows exactly what made it.

A step's key hashes (1) the config sections that step reads, (2) the keys of its upstream steps, (3) the source of
the library modules it imports (the transitive closure of its entry module, so a change to ``figures.py`` never
reruns training) and (4) the versions of the numerical packages. Keys depend on inputs only, so they are known
before anything runs: ``opgrpo reproduce`` decides what to skip up front, and a step refuses an upstream output that
was made with other settings. Each step folder holds ``fingerprint.json`` (key, status, the inputs behind the key).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from .config import RunConfig, section

PACKAGE_DIR = Path(__file__).resolve().parent
KEY_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "sentence-transformers")
FINGERPRINT = "fingerprint.json"


class StaleUpstream(RuntimeError):
    """An upstream output is missing, unfinished or was made with other settings."""


@dataclass(frozen=True)
class StepSpec:
    name: str  # folder under the run root
    notebook: str  # the notebook that runs it
    module: str  # entry module (its import closure is the code fingerprint)
    config: Callable[[RunConfig], tuple[str, ...]]  # dotted config keys the step reads (may depend on switches)
    upstream: Callable[[RunConfig], tuple[str, ...]]


def _grpo_upstream(cfg: RunConfig) -> tuple[str, ...]:
    ups = ["data"]
    if cfg.reward.estimator == "run:estimator":
        ups.append("estimator")
    if cfg.train.init.startswith("run:"):
        ups.append(cfg.train.init[4:])
    return tuple(ups)


def policy_steps(cfg: RunConfig) -> tuple[str, ...]:
    """Training steps whose saved policies step 05 generates from (``run:sft`` / ``run:grpo`` systems)."""
    return tuple(dict.fromkeys(s.policy[4:] for s in cfg.generate.systems if s.policy.startswith("run:")))


_TRAIN_COMMON = ("seed", "device", "models.policy", "train.backend", "train.lora", "train.load_in_4bit",
                 "train.max_seq_length", "train.merge_adapter", "train.precision")  # fmt: skip
_VALIDATION = ("train.validation_every", "train.validation_rows", "models.eval_encoder", "eval.sbert_thresholds")


def _validation(cfg: RunConfig, *extra: str) -> tuple[str, ...]:
    """The validation curve's settings, part of a training step's key only when the curve is on."""
    return (*_VALIDATION, *extra) if cfg.train.validation_every else ()


def _keys(*keys: str) -> Callable[[RunConfig], tuple[str, ...]]:
    return lambda cfg: keys


STEPS: dict[str, StepSpec] = {
    s.name: s
    for s in (
        StepSpec("data", "01_data_prep", "data", _keys("seed", "data"), lambda c: ()),
        StepSpec("estimator", "02_similarity_estimator", "estimator",
                 _keys("seed", "device", "models.encoder", "estimator", "reward.batch_size", "reward.mask",
                       "reward.coverage_threshold"), lambda c: ("data",)),
        StepSpec("sft", "03_sft", "train",
                 lambda c: (*_TRAIN_COMMON, "train.summaries", "train.targets", "train.compact_words", "train.sft",
                            *_validation(c, "train.grpo.max_completion_length", "reward", "models.encoder")),
                 lambda c: ("data",)),
        StepSpec("grpo", "04_op_grpo", "train",
                 lambda c: (*_TRAIN_COMMON, "train.init", "train.use_vllm", "train.max_prompt_length", "train.grpo",
                            "train.generation_chunk", "reward", "data.grpo_rows", *_validation(c)), _grpo_upstream),
        StepSpec("generate", "05_generate", "generate", _keys("seed", "device", "models.policy", "generate"),
                 lambda c: ("data", *policy_steps(c))),
        StepSpec("evaluate", "06_evaluate", "evaluate",
                 _keys("seed", "device", "models", "reward.batch_size", "reward.estimator", "eval", "train.init"),
                 lambda c: ("data", "generate") + (("grpo",) if c.eval.checkpoint_rows_per_split else ())
                 + (("estimator",) if c.eval.estimator_coverage and c.reward.estimator == "run:estimator" else ())),
        StepSpec("figures", "07_figures_and_tables", "figures", _keys("eval.reference_system"),
                 lambda c: ("data", "estimator", *policy_steps(c), "evaluate")),
        StepSpec("authors", "08_authors_evidence", "authors", _keys("seed", "device", "data", "authors"), lambda c: ()),
    )
}  # fmt: skip


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()[
        :16
    ]


def _local_imports(path: Path) -> set[str]:
    """Names of the library modules ``path`` imports (relative or ``opgrpo_lib.`` imports, at any depth)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x
                found.update(a.name for a in node.names)
            elif node.module and node.module.startswith("opgrpo_lib."):
                found.add(node.module.split(".")[1])
    return {m for m in found if (PACKAGE_DIR / f"{m}.py").exists()}


@functools.cache
def code_closure(module: str) -> tuple[str, ...]:
    """``module`` and every library module it imports, transitively (sorted)."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += sorted(_local_imports(PACKAGE_DIR / f"{m}.py") - seen)
    return tuple(sorted(seen))


def code_hash(module: str) -> str:
    """Hash of the source of ``module``'s import closure and of the packaged resources (stopword list...)."""
    h = hashlib.sha256()
    files = [PACKAGE_DIR / f"{m}.py" for m in code_closure(module)]
    files += sorted((PACKAGE_DIR / "resources").glob("*")) if (PACKAGE_DIR / "resources").is_dir() else []
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def package_versions(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def step_inputs(cfg: RunConfig, step: str) -> dict[str, Any]:
    """Everything a step's key is made of (JSON-able), upstream keys included (computed, not read from disk)."""
    spec = STEPS[step]
    return {
        "step": step,
        "config": {key: section(cfg, key) for key in spec.config(cfg)},
        "upstream": {u: step_key(cfg, u) for u in spec.upstream(cfg)},
        "code": code_hash(spec.module),
        "packages": package_versions(),
    }


def step_key(cfg: RunConfig, step: str) -> str:
    return _digest(step_inputs(cfg, step))


def value_key(*parts: Any) -> str:
    """A key for a finer-grained output (one system's generations, one checkpoint's outputs)."""
    return _digest(list(parts))


def changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two input records ("train.grpo.learning_rate: 1e-05 -> 2e-05")."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += changes(a, b, f"{name}.")
        elif a != b:
            out.append(f"{name}: {json.dumps(a, default=str)[:60]} -> {json.dumps(b, default=str)[:60]}")
    return out


def _describe(out: list[str]) -> str:
    return "; ".join(
        c.replace("config.", "", 1).replace("upstream.", "upstream step ", 1).replace("code:", "library code:", 1)
        for c in out[:6]
    ) + (f" (+{len(out) - 6} more)" if len(out) > 6 else "")


def recorded(step_dir: Path) -> dict[str, Any] | None:
    path = Path(step_dir) / FINGERPRINT
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def mark(step_dir: Path, cfg: RunConfig, step: str, status: Literal["running", "finished"]) -> dict[str, Any]:
    """Record a step's status. "finished" keeps the key recorded when the step started (the code and settings
    it ran with), so an edit made while it ran cannot be claimed by its output."""
    from .runs import atomic_write_text

    started = recorded(step_dir) if status == "finished" else None
    if started and started.get("status") == "running":
        rec = {**started, "status": status}
    else:
        rec = {"key": step_key(cfg, step), "status": status, "inputs": step_inputs(cfg, step)}
    atomic_write_text(Path(step_dir) / FINGERPRINT, json.dumps(rec, indent=1, default=str))
    return rec


def is_current(cfg: RunConfig, root: Path, step: str) -> bool:
    rec = recorded(Path(root) / step)
    return bool(rec) and rec.get("status") == "finished" and rec.get("key") == step_key(cfg, step)


def require_upstream(cfg: RunConfig, root: Path, step: str) -> dict[str, str]:
    """Keys of ``step``'s upstream outputs; raises :class:`StaleUpstream` naming what to rerun and what changed."""
    keys = {}
    for up in STEPS[step].upstream(cfg):
        rec = recorded(Path(root) / up)
        cmd = f"notebook {STEPS[up].notebook} (or `opgrpo {_CLI[up]}`)"
        if rec is None or rec.get("status") != "finished":
            raise StaleUpstream(f"step {step} needs the finished output of step {up} in {Path(root) / up}; run {cmd}")
        want = step_key(cfg, up)
        if rec["key"] != want:
            what = _describe(changes(rec.get("inputs", {}), step_inputs(cfg, up)))
            raise StaleUpstream(
                f"the {up} output in {Path(root) / up} was made with other settings ({what}); rerun {cmd} "
                "with these settings first, or use a fresh --run-dir"
            )
        keys[up] = want
    return keys


_CLI = {"data": "data", "estimator": "estimator", "sft": "sft", "grpo": "train", "generate": "generate",
        "evaluate": "evaluate", "figures": "figures", "authors": "authors"}  # fmt: skip


def begin(
    cfg: RunConfig, root: Path, step: str, force: bool = False, log: Callable[[str], None] = print
) -> Literal["finished", "resume", "fresh"]:
    """Decide how a (long) step starts: ``finished`` (same key, done: rerun is a no-op), ``resume`` (same key,
    interrupted) or ``fresh``. A folder made with other settings (or ``force``) is moved aside to
    ``<step>.previous`` (one kept) and the reason is printed, so old checkpoints never continue under new settings."""
    step_dir = Path(root) / step
    rec = recorded(step_dir)
    key = step_key(cfg, step)
    if rec is not None and rec.get("key") == key and not force:
        return "finished" if rec.get("status") == "finished" else "resume"
    if int(os.environ.get("RANK", "0")) != 0:  # distributed: only rank 0 moves folders and writes records
        return "fresh"
    if step_dir.exists() and any(step_dir.iterdir()):
        if rec is None:
            why = "it has no fingerprint (made by an older version or interrupted before it started)"
        elif force:
            why = "--force"
        else:
            why = "settings changed: " + _describe(changes(rec.get("inputs", {}), step_inputs(cfg, step)))
        previous = step_dir.with_name(f"{step}.previous")
        shutil.rmtree(previous, ignore_errors=True)
        step_dir.rename(previous)
        log(f"[{step}] starting a new run ({why}); the previous one moved to {previous}")
    step_dir.mkdir(parents=True, exist_ok=True)
    mark(step_dir, cfg, step, "running")
    return "fresh"
