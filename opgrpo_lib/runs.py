"""Run folders, atomic writes and per-step manifests (config, versions, seeds, timings, inputs)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .config import REPO_ROOT, RunConfig

PACKAGES = (
    "torch", "transformers", "trl", "datasets", "peft", "accelerate", "sentence-transformers",
    "pandas", "numpy", "papermill", "unsloth",
)  # fmt: skip


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it into place (no partial files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_parquet(df, path: Path) -> None:
    """``df.to_parquet`` through a temporary file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class RunPaths:
    """Where one profile's run writes (``runs/<profile>`` by default) and its committed results folder."""

    root: Path
    results: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    def step(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def run_paths(cfg: RunConfig, run_dir: str | Path | None = None, results_dir: str | Path | None = None) -> RunPaths:
    root = Path(run_dir) if run_dir else REPO_ROOT / "runs" / cfg.profile
    results = Path(results_dir) if results_dir else REPO_ROOT / "results" / cfg.profile
    root.mkdir(parents=True, exist_ok=True)
    return RunPaths(root.resolve(), results.resolve())


def resolve_device(cfg: RunConfig) -> str:
    """ "cuda" when the profile's ``device`` allows it (auto | cuda) and a GPU is present, else "cpu"."""
    import torch

    return "cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state() -> dict[str, Any]:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        return {"sha": sha.stdout.strip() or None, "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}


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
    step_dir: Path, step: str, cfg: RunConfig, timings: dict[str, float], inputs: list[Path] | None = None,
    extra: dict[str, Any] | None = None, results: Path | None = None,
) -> Path:  # fmt: skip
    """Write ``manifest.json`` for one step: config + hash, seeds, versions, device, timings, input digests.
    With ``results``, a copy without input paths goes to ``results/manifests/<step>.json`` (committed)."""
    manifest = {
        "step": step,
        "profile": cfg.profile,
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
