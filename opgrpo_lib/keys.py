"""Step keys: every step's output knows exactly what made it.

A step's key hashes (1) the config keys that step reads (its registry entry), minus the throughput-only ones (batch
sizes of encoders and of per-row seeded generation, worker counts: ``config.throughput`` /
``config.TRAINER_THROUGHPUT``), (2) the keys of its upstream steps, (3) the *behaviour* of the library code it
imports: the transitive import closure of its entry module, each module as its syntax tree without docstrings
(comments, docstrings and formatting do not count; of the settings module only the code a step runs:
``SETTINGS_MODULE``), and (4) the versions of the numerical packages. Keys depend on
inputs only, so they are known before anything runs: ``opgrpo reproduce`` decides what to skip up front, and a step
refuses an upstream output that was made with other settings. Each step folder holds ``fingerprint.json`` (key,
status, the inputs behind the key).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from .config import TRAINER_THROUGHPUT, RunConfig
from .paths import atomic_write_text
from .registry import STEPS, upstream_hint

PACKAGE_DIR = Path(__file__).resolve().parent
KEY_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "sentence-transformers")
FINGERPRINT = "fingerprint.json"
# Modules that decide whether and where a step runs or report on it, never what it computes: not part of any key
# (and what they import is not followed). ``gpu`` is the memory/disk model: it refuses a start or picks a profile
# (which is in the key), it computes nothing a step writes.
NEUTRAL_MODULES = frozenset({"registry", "keys", "lifecycle", "manifest", "progress", "paths", "gpu"})
# The settings module is keyed through the values a step reads (its registry entry), not as a whole: a new setting,
# another default or a load-time check changes no step that does not read that setting. Its code that a step runs is
# what the step's modules import from it (helpers such as ``trl_value``, ``weight_pair``, constants) and the methods
# of its settings classes, each with the module-level names it uses; field declarations and loading are left out.
SETTINGS_MODULE = "config"


class StaleUpstream(RuntimeError):
    """An upstream output is missing, unfinished or was made with other settings."""


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()[
        :16
    ]


def _behaviour(obj: Any) -> Any:
    """A config value as plain data without its throughput-only fields (``config.throughput`` and the TRL ones)."""
    if dataclasses.is_dataclass(obj):
        return {
            f.name: _behaviour(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if not f.metadata.get("throughput")
        }
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


def module_path(name: str, package_dir: Path) -> Path | None:
    """The file of library module ``name`` (dotted below the package: ``steps.grpo``, ``authors``), or None."""
    base = package_dir.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _resolve(parts: list[str], package_dir: Path) -> list[str]:
    """The library modules an import of ``parts`` executes: every subpackage on the way and the longest prefix
    that is a module (``from .x import name`` names an attribute, not a module)."""
    found = []
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if module_path(name, package_dir) is None:
            break
        found.append(name)
    return found


def _local_imports(tree: ast.AST, name: str, package_dir: Path) -> set[str]:
    """The library modules a module imports (relative or ``opgrpo_lib.`` imports, at any depth, function-local
    ones included: they run when the step runs)."""
    is_pkg = module_path(name, package_dir) == package_dir.joinpath(*name.split("."), "__init__.py")
    package = name.split(".") if is_pkg else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.startswith("opgrpo_lib."):
                target = node.module.split(".")[1:]
            else:
                continue
            found.update(_resolve(target, package_dir))
            for alias in node.names:  # from . import x / from .steps import grpo
                found.update(_resolve([*target, alias.name], package_dir))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("opgrpo_lib."):
                    found.update(_resolve(alias.name.split(".")[1:], package_dir))
    return found - {name}


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
def _parsed(name: str, package_dir: str, source: str) -> tuple[str, frozenset[str], frozenset[str]]:
    """(digest of the module's syntax tree without docstrings, the library modules it imports, the names it
    imports from the settings module)."""
    tree = ast.parse(source)
    imports = frozenset(_local_imports(tree, name, Path(package_dir)))
    settings = frozenset(_names_from_settings(tree, name, Path(package_dir)))
    return hashlib.sha256(ast.dump(_strip_docstrings(tree)).encode()).hexdigest(), imports, settings


def _names_from_settings(tree: ast.AST, name: str, package_dir: Path) -> set[str]:
    """The names a module imports from the settings module (``from .config import trl_value``)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[-1] == SETTINGS_MODULE:
            if _local_imports(ast.Module(body=[node], type_ignores=[]), name, package_dir) == {SETTINGS_MODULE}:
                found.update(alias.name for alias in node.names)
    return found


def _defined(node: ast.stmt) -> list[str]:
    """The module-level names a statement defines."""
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return [node.name]
    targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
    return [t.id for t in targets if isinstance(t, ast.Name)]


def _is_settings_class(node: ast.stmt) -> bool:
    return isinstance(node, ast.ClassDef) and any("dataclass" in ast.unparse(d) for d in node.decorator_list)


@functools.lru_cache(maxsize=64)
def _settings_digest(source: str, names: frozenset[str]) -> str:
    """Digest of the settings module's code a step runs: ``names`` (what its modules import) and every settings
    class's methods, with the module-level definitions they use, transitively; field declarations left out."""
    tree = _strip_docstrings(ast.parse(source))
    defs = {name: node for node in tree.body for name in _defined(node)}
    methods = {
        name: ast.Module([b for b in node.body if not isinstance(b, ast.AnnAssign)], [])
        for name, node in defs.items()
        if _is_settings_class(node) and any(not isinstance(b, ast.AnnAssign) for b in node.body)
    }
    keep: dict[str, ast.AST] = {}
    todo = sorted(names | set(methods))
    while todo:
        n = todo.pop()
        if n in keep or n not in defs:
            continue
        keep[n] = methods.get(n, defs[n])
        todo += sorted({x.id for x in ast.walk(keep[n]) if isinstance(x, ast.Name)} & set(defs) - set(keep))
    return hashlib.sha256("".join(f"{n}\0{ast.dump(keep[n])}\0" for n in sorted(keep)).encode()).hexdigest()


def _module(name: str, package_dir: Path) -> tuple[str, frozenset[str], frozenset[str]]:
    path = module_path(name, package_dir)
    if path is None:
        raise KeyError(f"{name}: no such library module under {package_dir}")
    return _parsed(name, str(package_dir), path.read_text())


def code_closure(module: str, package_dir: Path | None = None) -> tuple[str, ...]:
    """``module`` and every library module it imports, transitively (sorted). A neutral module is listed but not
    followed: it decides whether and where a step runs, so what it imports does not make the step's output."""
    package_dir = package_dir or PACKAGE_DIR
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        if m not in NEUTRAL_MODULES or m == module:
            todo += sorted(_module(m, package_dir)[1] - seen)
    return tuple(sorted(seen))


def code_hash(module: str, package_dir: Path | None = None) -> str:
    """Hash of the behaviour of ``module``'s import closure (each module's syntax tree without docstrings; the
    neutral modules left out) and of the packaged resources (stopword list...)."""
    package_dir = package_dir or PACKAGE_DIR
    h = hashlib.sha256()
    closure = [m for m in code_closure(module, package_dir) if m not in NEUTRAL_MODULES]
    for m in closure:
        if m == SETTINGS_MODULE:
            names = frozenset().union(*(_module(o, package_dir)[2] for o in closure))
            digest = _settings_digest(module_path(m, package_dir).read_text(), names)
        else:
            digest = _module(m, package_dir)[0]
        h.update(f"{m}\0{digest}\0".encode())
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
        cmd = upstream_hint(up)
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
