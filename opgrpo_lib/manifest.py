"""Per-step manifests: what a step ran with (config and its hash, seed, key, package versions, the git commit,
device, timings, input digests). Written by the lifecycle when a step finishes; neutral (not in any key)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .config import RunConfig
from .keys import package_versions as _versions
from .paths import REPO_ROOT, atomic_write_text

PACKAGES = (
    "torch",
    "transformers",
    "trl",
    "datasets",
    "peft",
    "accelerate",
    "sentence-transformers",
    "pandas",
    "numpy",
    "papermill",
    "unsloth",
)


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
