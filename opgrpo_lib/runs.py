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
from .provenance import package_versions as _versions
from .provenance import step_key, step_named

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


def resolve_device(cfg: RunConfig) -> str:
    """ "cuda" when the profile's ``device`` allows it (auto | cuda) and a GPU is present, else "cpu";
    ``device: cuda`` without a GPU is an error, not a silent CPU run."""
    import torch

    cuda = torch.cuda.is_available()
    if cfg.device in ("auto", "cuda") and not cuda:
        from .gpu import require_usable_gpu

        require_usable_gpu()  # a visible GPU torch cannot use: say why instead of running on the CPU
    if cfg.device == "cuda" and not cuda:
        raise RuntimeError("device: cuda, but torch sees no CUDA GPU here (use device: auto or cpu)")
    return "cuda" if cfg.device in ("auto", "cuda") and cuda else "cpu"


def package_versions() -> dict[str, str | None]:
    """Versions of the packages a manifest records (a superset of the ones in the provenance keys)."""
    return _versions(PACKAGES)


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
    spec = step_named(step)
    name = spec.name if spec else None
    manifest = {
        "step": step,
        "profile": cfg.profile,
        "key": step_key(cfg, name) if name else None,
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


# ---------------------------------------------------------------- one writer per run folder
LOCK_NAME = ".opgrpo.lock"
LOCK_ENV = "OPGRPO_RUN_LOCK"  # "<pid>:<root>": a parent (``opgrpo reproduce``) holds the lock for its notebooks
_HELD: dict[str, int] = {}  # root -> nesting depth of the locks this process holds


class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}


def _inherited(root: Path, holder: dict[str, Any]) -> bool:
    """True when an ancestor of this process holds the lock and passed it down (``LOCK_ENV``)."""
    want = os.environ.get(LOCK_ENV, "")
    return bool(holder.get("pid")) and want == f"{holder['pid']}:{root}"


@contextmanager
def run_lock(root: Path, what: str = "opgrpo", log=print):
    """Hold ``<root>/.opgrpo.lock`` (``fcntl.flock``) while a step writes in the run folder. A second process gets
    :class:`RunFolderBusy` naming the holder's PID; the lock of a dead process is released by the OS, so it is
    taken over (and said so). Reentrant within a process and inherited by children started with :func:`lock_env`.
    The lock file is removed on release (a refused or no-op start leaves the folder as it was)."""
    import fcntl

    root = Path(root).resolve()
    key = str(root)
    if int(os.environ.get("RANK", "0")) != 0:  # a distributed job (torchrun): rank 0 holds the lock for all ranks
        yield
        return
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    path = root / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OSError(f"run folder {root}: cannot write its lock file {LOCK_NAME} ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _holder(path)
            if _inherited(root, holder):
                _HELD[key] = 1
                try:
                    yield
                finally:
                    del _HELD[key]
                return
            pid = holder.get("pid", "?")
            raise RunFolderBusy(
                f"run folder {root} is in use by PID {pid} ({holder.get('what', 'opgrpo')}, since "
                f"{holder.get('since', '?')}): wait for it to finish, stop it, or use another --run-dir"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file the previous holder unlinked between our open and our flock
            break
        os.close(fd)
    stale = _holder(path)
    if stale.get("pid") and stale["pid"] != os.getpid() and not _pid_alive(int(stale["pid"])):
        log(f"[lock] {root}: took over the lock of PID {stale['pid']} ({stale.get('what', '?')}), no longer running")
    os.ftruncate(fd, 0)
    cmd = " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv))[:120]
    info = {
        "pid": os.getpid(),
        "what": f"{what}: {cmd}" if cmd else what,
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    os.write(fd, json.dumps(info).encode())
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        try:
            path.unlink()
        except OSError:
            pass
        os.close(fd)


def lock_env(root: Path) -> dict[str, str]:
    """Environment for a child process that runs steps under this process's lock of ``root``."""
    return {LOCK_ENV: f"{os.getpid()}:{Path(root).resolve()}"}


def locked(what: str):
    """Decorator for a step entry point ``fn(cfg, paths, ...)``: the step runs under the run folder's lock."""
    import functools

    def wrap(fn):
        @functools.wraps(fn)
        def inner(cfg, paths, *args, **kwargs):
            with run_lock(paths.root, what):
                return fn(cfg, paths, *args, **kwargs)

        return inner

    return wrap
