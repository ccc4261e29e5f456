"""Run folders, atomic writes and per-step manifests (config, versions, seeds, timings, inputs)."""

from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import checkpoint_problem  # noqa: F401 (re-exported)
from .config import RunConfig
from .paths import REPO_ROOT, atomic_path, atomic_write_bytes, atomic_write_text, default_run_dir  # noqa: F401


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
