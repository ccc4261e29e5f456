"""Run folders, atomic writes and per-step manifests (config, versions, seeds, timings, inputs)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoints import checkpoint_problem  # noqa: F401 (re-exported)
from .config import RunConfig
from .paths import REPO_ROOT, atomic_path, atomic_write_bytes, atomic_write_text, default_run_dir  # noqa: F401
from .keys import package_versions as _versions

PACKAGES = (
    "torch", "transformers", "trl", "datasets", "peft", "accelerate", "sentence-transformers",
    "pandas", "numpy", "papermill", "unsloth",
)  # fmt: skip


def atomic_write_parquet(df, path: Path) -> None:
    """``df.to_parquet`` through a temporary file renamed into place."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


@dataclass(frozen=True)
class RunPaths:
    """Where one run writes: ``root`` (``runs/<profile>`` unless ``--run-dir`` / ``$OPGRPO_RUN_DIR``), its
    ``results`` and ``figures`` inside it. The committed ``results/<profile>`` changes only via ``opgrpo publish``."""

    root: Path
    results: Path

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def step(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def run_paths(cfg: RunConfig, run_dir: str | Path | None = None) -> RunPaths:
    root = Path(run_dir) if run_dir else default_run_dir(cfg.profile)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"run folder {root}: cannot create it ({exc.strerror or exc})") from None
    root = root.resolve()
    return RunPaths(root, root / "results")


def package_versions() -> dict[str, str | None]:
    """Versions of the packages a manifest records (a superset of the ones in the provenance keys)."""
    return _versions(PACKAGES)


def _git(*args: str, timeout: float = 60.0) -> str | None:
    """``git <args>`` in the repository: its stdout, or None when git is missing, fails or times out."""
    try:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state() -> dict[str, Any]:
    """The commit a result was made from and whether the tree differed from it. The sha is kept when ``status``
    fails; ``status`` runs without the notebook clean filter (a Python process per modified notebook on a loaded
    machine), so a notebook saved with outputs counts as a change."""
    sha = _git("rev-parse", "HEAD")
    status = _git("-c", "filter.nbstrip.clean=cat", "status", "--porcelain")
    return {"sha": sha.strip() or None if sha else None, "dirty": None if status is None else bool(status.strip())}


def device_info() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count()}
    if "torch" in sys.modules:  # never import torch just for the manifest (figures step stays torch-free)
        torch = sys.modules["torch"]
        info["cuda"] = bool(torch.cuda.is_available())
        if info["cuda"]:
            info["gpu"] = torch.cuda.get_device_name(0)
            info["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    try:
        import resource

        info["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    except ImportError:  # pragma: no cover (Windows)
        pass
    return info


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def inputs_digest(paths: list[Path]) -> dict[str, str]:
    return {str(p): file_digest(p) for p in paths if Path(p).is_file()}


def write_manifest(
    step_dir: Path,
    step: str,
    cfg: RunConfig,
    key: str,
    timings: dict[str, float],
    inputs: list[Path] | None = None,
    extra: dict[str, Any] | None = None,
    results: Path | None = None,
) -> Path:
    """Write ``manifest.json`` for one step (``step``: its manifest name, ``key``: the key it ran with): config +
    hash, seeds, versions, git commit, device, timings, input digests. With ``results``, a copy without input
    paths and config goes to ``results/manifests/<step>.json`` (committed)."""
    manifest = {
        "step": step,
        "profile": cfg.profile,
        "key": key,
        "config_hash": cfg.config_hash,
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "packages": package_versions(),
        "git": git_state(),
        "device": device_info(),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "inputs": inputs_digest(inputs or []),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }
    path = Path(step_dir) / "manifest.json"
    atomic_write_text(path, json.dumps(manifest, indent=2, default=str))
    if results is not None:
        public = {k: v for k, v in manifest.items() if k not in ("inputs", "config")}
        atomic_write_text(Path(results) / "manifests" / f"{step}.json", json.dumps(public, indent=2, default=str))
    return path


@contextmanager
def timed(timings: dict[str, float], name: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0


def last_complete_checkpoint(ckpt_dir: Path, log=print) -> str | None:
    """The newest ``checkpoint-N`` folder that can be resumed from; incomplete newer ones are named and skipped."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    found = [p for p in ckpt_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and p.is_dir()]
    for ckpt in sorted(found, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return str(ckpt)
        log(f"[resume] skipping {ckpt.name}: {problem}")
    return None


def drop_optimizer_states(ckpt_dir: Path, nested: bool = True) -> int:
    """Delete optimizer/scheduler states from the checkpoints of a finished run (a finished run never resumes; the
    weights stay for checkpoint evaluation), or from one checkpoint folder (``nested=False``). Returns the bytes
    freed."""
    freed = 0
    for f in Path(ckpt_dir).glob("checkpoint-*/*" if nested else "*"):
        if f.name in ("optimizer.pt", "scheduler.pt") or f.name.startswith("rng_state"):
            freed += f.stat().st_size
            f.unlink()
    return freed


def check_free_disk(path: Path, need_gb: float, what: str) -> None:
    """Fail before a long step when the disk holding ``path`` has less than ``need_gb`` free."""
    free = shutil.disk_usage(Path(path)).free / 2**30
    if free < need_gb:
        raise OSError(
            f"{what} needs about {need_gb:.1f} GB free under {path}, only {free:.1f} GB are: free space or use "
            "--run-dir on a larger disk"
        )
