"""Provenance keys: every step's output knows exactly what made it, and the step registry.

``STEPS`` is the one list of pipeline steps (name, notebook, CLI verb, entry function, config keys read, upstream
steps, outputs): the pipeline, the CLI, publish and the keys all read it, so adding a step is one entry here.

A step's key hashes (1) the config keys that step reads, minus the throughput-only ones (batch sizes of encoders and
of per-row seeded generation, worker counts: ``config.throughput`` / ``config.TRAINER_THROUGHPUT``), (2) the keys
of its upstream steps, (3) the *behaviour* of the library code it imports: the transitive import closure of its
entry module, each module as its syntax tree without docstrings (comments, docstrings and formatting do not count),
and (4) the versions of the numerical packages. Keys depend on inputs only, so they are known before anything runs:
``opgrpo reproduce`` decides what to skip up front, and a step refuses an upstream output that was made with other
settings. Each step folder holds ``fingerprint.json`` (key, status, the inputs behind the key).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from .checkpoints import checkpoint_problem
from .config import TRAINER_THROUGHPUT, RunConfig
from .paths import atomic_write_text

PACKAGE_DIR = Path(__file__).resolve().parent
KEY_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "sentence-transformers")
FINGERPRINT = "fingerprint.json"
# Modules that decide whether a step runs or report on it, never what it computes: not part of any code key.
NEUTRAL_MODULES = frozenset({"provenance", "progress", "paths"})


class StaleUpstream(RuntimeError):
    """An upstream output is missing, unfinished or was made with other settings."""


@dataclass(frozen=True)
class StepSpec:
    name: str  # folder under the run root
    notebook: str  # the notebook that runs it (a notebook may run several steps, in registry order)
    cli: str | None  # `opgrpo <cli>` runs it (None: run by another step's entry function)
    function: str  # "module:function" called as function(cfg, paths, **kw)
    config: Callable[[RunConfig], tuple[str, ...]]  # dotted config keys the step reads (may depend on switches)
    upstream: Callable[[RunConfig], tuple[str, ...]]
    outputs: tuple[str, ...] = ()  # what it writes under the run's results/ (files or folders)
    help: str = ""
    enabled: Callable[[RunConfig], bool] = lambda cfg: True  # a step that is off has no output to reuse or check

    @property
    def module(self) -> str:
        """Entry module (its import closure is the code part of the key)."""
        return self.function.split(":")[0].rsplit(".", 1)[-1]


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
# The validation curve during GRPO (train.validation_every is its period: which steps get a point).
_CURVE = ("train.validation_every", "train.validation_rows", "models.eval_encoder", "eval.sbert_thresholds")


def _keys(*keys: str) -> Callable[[RunConfig], tuple[str, ...]]:
    return lambda cfg: keys


STEPS: dict[str, StepSpec] = {
    s.name: s
    for s in (
        StepSpec("data", "01_data_prep", "data", "opgrpo_lib.data:run", _keys("seed", "data"), lambda c: (),
                 ("data_card.json",), "step 01: fetch (hash-checked), parse and split OP-V2"),
        StepSpec("estimator", "02_similarity_estimator", "estimator", "opgrpo_lib.estimator:run",
                 _keys("seed", "device", "models.encoder", "estimator", "reward.mask", "reward.coverage_threshold"),
                 lambda c: ("data",), ("estimator",),
                 "step 02: mine triplets, fine-tune and evaluate the similarity estimator"),
        StepSpec("sft", "03_sft", "sft", "opgrpo_lib.train:run_sft",
                 _keys(*_TRAIN_COMMON, "train.summaries", "train.targets", "train.compact_words", "train.sft",
                       "train.grpo.max_completion_length"),
                 lambda c: ("data",), ("sft_train_log.csv",), "step 03: SFT warm start (core perspectives + summary)"),
        StepSpec("sft_validation", "03_sft", None, "opgrpo_lib.validation:sft_point",
                 _keys("seed", "device", "train.validation_rows", "models.eval_encoder", "models.encoder",
                       "eval.sbert_thresholds", "train.grpo.max_completion_length", "reward"),
                 lambda c: ("data", "sft"), ("sft_validation.json",),
                 "end-of-SFT validation point (run by `opgrpo sft`)", lambda c: c.train.validation_every > 0),
        StepSpec("grpo", "04_op_grpo", "train", "opgrpo_lib.train:run_grpo",
                 lambda c: (*_TRAIN_COMMON, "train.init", "train.use_vllm", "train.max_prompt_length", "train.grpo",
                            "train.generation_chunk", "reward", "data.grpo_rows", "data.train_source", "eval.checkpoint_rows_per_split",
                            *(_CURVE if c.train.validation_every else ())),
                 _grpo_upstream, ("train_log.csv", "validation_curve.csv"),
                 "step 04: OP-GRPO (resumes from the last checkpoint)"),
        StepSpec("generate", "05_generate", "generate", "opgrpo_lib.generate:run",
                 _keys("seed", "device", "models.policy", "generate"), lambda c: ("data", *policy_steps(c)),
                 ("generations",), "step 05: outputs of every configured system for the eval splits"),
        StepSpec("evaluate", "06_evaluate", "evaluate", "opgrpo_lib.evaluate:run",
                 _keys("seed", "device", "models", "reward", "eval", "train.init"),
                 lambda c: ("data", "generate") + (("grpo",) if c.eval.checkpoint_rows_per_split else ())
                 + (("estimator",) if c.eval.estimator_coverage and c.reward.estimator == "run:estimator" else ()),
                 ("eval",), "step 06: SBERT / NLI coverage, tokens, judge, paired tests"),
        StepSpec("figures", "07_figures_and_tables", "figures", "opgrpo_lib.figures:run", _keys("eval.reference_system"),
                 lambda c: ("data", "estimator", *policy_steps(c), "evaluate"), (),
                 "step 07: every figure and table from results/"),
        StepSpec("authors", "08_authors_evidence", "authors", "opgrpo_lib.authors:run",
                 _keys("seed", "device", "data", "authors"), lambda c: (), ("authors",),
                 "step 08: the authors' own evaluation logs, verified, regenerated and re-scored"),
    )
}  # fmt: skip


def steps_of(notebook: str) -> list[StepSpec]:
    """The steps a notebook runs, in registry order."""
    return [s for s in STEPS.values() if s.notebook == notebook]


def step_named(name_or_notebook: str) -> StepSpec | None:
    """The step called ``name`` or whose manifest name is ``<notebook>`` / ``<number>_<name>`` (``04_grpo``)."""
    if name_or_notebook in STEPS:
        return STEPS[name_or_notebook]
    tail = name_or_notebook.split("_", 1)[-1]
    return STEPS.get(tail) or next((s for s in STEPS.values() if s.notebook == name_or_notebook), None)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()[
        :16
    ]


def _behaviour(obj: Any) -> Any:
    """A config value as plain data without its throughput-only fields (``config.throughput`` and the TRL ones)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: _behaviour(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not f.metadata.get("throughput")}  # fmt: skip
    if isinstance(obj, dict):
        return {k: _behaviour(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_behaviour(v) for v in obj]
    return obj


def key_section(cfg: RunConfig, dotted: str) -> Any:
    """What the value at a dotted key contributes to a key: plain data, throughput-only settings left out (None
    for a TRL key the profile leaves at TRL's default)."""
    node: Any = cfg
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if dataclasses.is_dataclass(node):
            f = next((f for f in dataclasses.fields(node) if f.name == part), None)
            if f is None:
                raise KeyError(f"{dotted}: no such config key")
            node = getattr(node, part)
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return None
        if i == len(parts) - 2 and isinstance(node, dict) and parts[-1] in TRAINER_THROUGHPUT:
            return None
    if isinstance(node, dict) and parts[0] == "train" and parts[-1] in ("sft", "grpo"):
        node = {k: v for k, v in node.items() if k not in TRAINER_THROUGHPUT}
    return _behaviour(node)


def _local_imports(tree: ast.AST, package_dir: Path) -> set[str]:
    """Names of the library modules a module imports (relative or ``opgrpo_lib.`` imports, at any depth)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x
                found.update(a.name for a in node.names)
            elif node.module and node.module.startswith("opgrpo_lib."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("opgrpo_lib."))
    return {m for m in found if (package_dir / f"{m}.py").exists()}


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return tree


@functools.lru_cache(maxsize=512)
def _parsed(path: str, source: str) -> tuple[str, frozenset[str]]:
    """(digest of the module's syntax tree without docstrings, the library modules it imports)."""
    tree = ast.parse(source)
    imports = frozenset(_local_imports(tree, Path(path).parent))
    return hashlib.sha256(ast.dump(_strip_docstrings(tree)).encode()).hexdigest(), imports


def _module(name: str, package_dir: Path) -> tuple[str, frozenset[str]]:
    path = package_dir / f"{name}.py"
    return _parsed(str(path), path.read_text())


def code_closure(module: str, package_dir: Path | None = None) -> tuple[str, ...]:
    """``module`` and every library module it imports, transitively (sorted)."""
    package_dir = package_dir or PACKAGE_DIR
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += sorted(_module(m, package_dir)[1] - seen)
    return tuple(sorted(seen))


def code_hash(module: str, package_dir: Path | None = None) -> str:
    """Hash of the behaviour of ``module``'s import closure (each module's syntax tree without docstrings; the
    neutral modules left out) and of the packaged resources (stopword list...)."""
    package_dir = package_dir or PACKAGE_DIR
    h = hashlib.sha256()
    for m in code_closure(module, package_dir):
        if m not in NEUTRAL_MODULES:
            h.update(f"{m}\0{_module(m, package_dir)[0]}\0".encode())
    resources = package_dir / "resources"
    for f in sorted(resources.glob("*")) if resources.is_dir() else []:
        if f.is_file() and f.suffix != ".pyc":
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def package_versions(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None when absent)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.cache
def _key_versions() -> tuple[tuple[str, str | None], ...]:
    return tuple(package_versions().items())  # read once per process


def step_inputs(cfg: RunConfig, step: str, _memo: dict[str, str] | None = None) -> dict[str, Any]:
    """Everything a step's key is made of (JSON-able), upstream keys included (computed, not read from disk)."""
    spec = STEPS[step]
    memo = {} if _memo is None else _memo
    return {
        "step": step,
        "config": {key: key_section(cfg, key) for key in spec.config(cfg)},
        "upstream": {u: step_key(cfg, u, memo) for u in spec.upstream(cfg)},
        "code": code_hash(spec.module),
        "packages": dict(_key_versions()),
    }


def step_key(cfg: RunConfig, step: str, _memo: dict[str, str] | None = None) -> str:
    memo = {} if _memo is None else _memo
    if step not in memo:
        memo[step] = _digest(step_inputs(cfg, step, memo))
    return memo[step]


def step_keys(cfg: RunConfig) -> dict[str, str]:
    """Every step's key (one pass: upstream keys computed once)."""
    memo: dict[str, str] = {}
    return {s: step_key(cfg, s, memo) for s in STEPS}


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
        verb = STEPS[up].cli or next(s.cli for s in steps_of(STEPS[up].notebook) if s.cli)
        cmd = f"notebook {STEPS[up].notebook} (or `opgrpo {verb}`)"
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


# Files a step writes under ``<run>/results`` that belong to one run of it: they move aside (and come back) with the
# step folder, so a new run never inherits the old run's curve, log or metrics.
RESULTS: dict[str, tuple[str, ...]] = {
    "estimator": ("estimator", "manifests/02_estimator.json"),
    "sft": ("sft_train_log.csv", "sft_validation.json", "manifests/03_sft.json"),
    "grpo": ("train_log.csv", "validation_curve.csv", "manifests/04_grpo.json"),
}
REPLACED = "replaced.json"  # in ``<step>.previous``: why it was replaced, by which key, when


@dataclass(frozen=True)
class Start:
    """How a step starts (:func:`prepare_start`); nothing is written until :func:`commit_start`."""

    step: str
    root: Path
    state: Literal["finished", "resume", "fresh"]
    why: str | None = None  # for a fresh start over an existing folder


def _has_work(step_dir: Path, rec: dict[str, Any] | None, previous_finished: bool) -> bool:
    """Worth keeping as ``.previous``: a finished run, or one with a complete checkpoint. An unfinished start with
    no checkpoint is discarded instead, so it never pushes a finished run out of ``.previous``."""
    if not step_dir.is_dir() or not any(step_dir.iterdir()):
        return False
    if rec is None and not previous_finished:
        return True  # made by an older version: keep it
    if rec is not None and rec.get("status") == "finished":
        return True
    ckpts = [p for p in step_dir.rglob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return any(checkpoint_problem(c) is None for c in ckpts)


def _move_results(root: Path, step: str, dest: Path | None) -> None:
    """Move the step's files under ``results/`` into ``dest`` (``None``: delete them)."""
    for rel in RESULTS.get(step, ()):
        src = Path(root) / "results" / rel
        if not src.exists():
            continue
        if dest is None:
            shutil.rmtree(src) if src.is_dir() else src.unlink()
            continue
        target = dest / "results" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        src.rename(target)


def _restore_results(root: Path, step: str, src: Path) -> None:
    for rel in RESULTS.get(step, ()):
        if (src / "results" / rel).exists():
            target = Path(root) / "results" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            (src / "results" / rel).rename(target)
    shutil.rmtree(src / "results", ignore_errors=True)


def _swap_previous(root: Path, step: str, log: Callable[[str], None]) -> None:
    """``<step>.previous`` (finished with the wanted key) becomes the step folder again; the current folder becomes
    ``.previous`` when it holds work, else it is discarded."""
    step_dir, previous = Path(root) / step, Path(root) / f"{step}.previous"
    parked = previous.with_name(f".{step}.swap")
    shutil.rmtree(parked, ignore_errors=True)
    previous.rename(parked)
    (parked / REPLACED).unlink(missing_ok=True)
    rec = recorded(step_dir)
    if _has_work(step_dir, rec, True):
        _move_results(root, step, step_dir)
        _write_replaced(step_dir, "the previous run matches these settings again", recorded(parked))
        step_dir.rename(previous)
    else:
        _move_results(root, step, None)
        shutil.rmtree(step_dir, ignore_errors=True)
    _restore_results(root, step, parked)
    parked.rename(step_dir)
    log(f"[{step}] the run in {previous.name} finished with these settings: restored it to {step_dir}")


def _write_replaced(folder: Path, why: str, by: dict[str, Any] | None) -> None:
    note = {"why": why, "replaced_by_key": (by or {}).get("key"), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_text(folder / REPLACED, json.dumps(note, indent=1))


def prepare_start(cfg: RunConfig, root: Path, step: str, force: bool = False,
                  log: Callable[[str], None] = print) -> Start:  # fmt: skip
    """Decide how a (long) step starts without touching anything: ``finished`` (same key, done: a rerun is a
    no-op), ``resume`` (same key, interrupted) or ``fresh``. A finished ``<step>.previous`` with the wanted key is
    restored (no retraining when settings go back). The step runs every check that can refuse (trainer config,
    disk, model load) and only then :func:`commit_start`: a refused start leaves the run folder as it was."""
    step_dir = Path(root) / step
    rec = recorded(step_dir)
    key = step_key(cfg, step)
    if rec is not None and rec.get("key") == key and not force:
        return Start(step, Path(root), "finished" if rec.get("status") == "finished" else "resume")
    prev = recorded(step_dir.with_name(f"{step}.previous"))
    if (not force and prev and prev.get("key") == key and prev.get("status") == "finished"
            and int(os.environ.get("RANK", "0")) == 0):  # fmt: skip
        _swap_previous(Path(root), step, log)
        return Start(step, Path(root), "finished")
    if rec is None:
        why = "it has no fingerprint (made by an older version or interrupted before it started)"
    elif force:
        why = "--force"
    else:
        why = "settings changed: " + _describe(changes(rec.get("inputs", {}), step_inputs(cfg, step)))
    return Start(step, Path(root), "fresh", why)


def commit_start(cfg: RunConfig, start: Start, log: Callable[[str], None] = print) -> Path:
    """Make the step folder ready for ``start`` (after every check passed). A fresh start moves a folder holding
    work to ``<step>.previous`` (with ``replaced.json`` saying what changed; the step's files under ``results/``
    move with it); an earlier start that never reached a checkpoint is discarded instead, so a finished
    ``.previous`` stays until the new run has a checkpoint of its own."""
    step, root = start.step, start.root
    step_dir = root / step
    if start.state != "fresh":
        step_dir.mkdir(parents=True, exist_ok=True)
        return step_dir
    if int(os.environ.get("RANK", "0")) != 0:  # distributed: only rank 0 moves folders and writes records
        step_dir.mkdir(parents=True, exist_ok=True)
        return step_dir
    rec, previous = recorded(step_dir), step_dir.with_name(f"{step}.previous")
    prev = recorded(previous)
    prev_finished = bool(prev) and prev.get("status") == "finished"
    if _has_work(step_dir, rec, prev_finished):
        shutil.rmtree(previous, ignore_errors=True)
        _move_results(root, step, step_dir)
        _write_replaced(step_dir, start.why or "", {"key": step_key(cfg, step)})
        step_dir.rename(previous)
        log(f"[{step}] starting a new run ({start.why}); the previous one moved to {previous}")
    elif step_dir.exists():
        shutil.rmtree(step_dir)
        _move_results(root, step, None)
        if prev_finished:
            log(f"[{step}] starting a new run ({start.why}); an earlier start without a checkpoint was discarded, "
                f"the finished run in {previous} is kept")  # fmt: skip
    else:
        _move_results(root, step, None)
    step_dir.mkdir(parents=True, exist_ok=True)
    mark(step_dir, cfg, step, "running")
    return step_dir


def begin(
    cfg: RunConfig, root: Path, step: str, force: bool = False, log: Callable[[str], None] = print
) -> Literal["finished", "resume", "fresh"]:
    """:func:`prepare_start` + :func:`commit_start` (for steps with nothing to check in between)."""
    start = prepare_start(cfg, root, step, force, log)
    if start.state != "finished":
        commit_start(cfg, start, log)
    return start.state
