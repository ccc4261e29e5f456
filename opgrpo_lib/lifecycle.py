"""One lifecycle for every step: lock, upstream check, refusing checks, start, manifest, finish.

A step's entry function is ``with step_run(cfg, paths, "<name>") as run:`` around its body. On entry the run folder
is locked (one writer: ``fcntl.flock`` on ``<run>/.opgrpo.lock``, naming the holder's PID), the upstream outputs are
checked (:class:`keys.StaleUpstream`) and a long step decides how it starts without touching anything
(:func:`prepare_start`: finished, resume or fresh). The body runs every check that can refuse (trainer config,
data, disk, model load), then calls :meth:`StepRun.begin`: only now is an older run moved aside (long steps) and
the step marked running. When the body returns, the manifest is written and the step marked finished; when it
raises, nothing more is written, so a refused start leaves the run folder as it was. Neutral: not in any key.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .checkpoints import checkpoint_problem
from .config import RunConfig
from .keys import _describe, changes, is_current, mark, recorded, require_upstream, step_inputs, step_key
from .manifest import write_manifest
from .paths import atomic_write_text
from .registry import STEPS
from .runs import RunPaths, timed

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
    """Who holds the lock, as its file says; {} for a file that is empty, unreadable or not ours (garbage)."""
    try:
        holder = json.loads(path.read_bytes().decode("utf-8") or "{}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


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
    root = Path(root).resolve()
    key, path = str(root), root / LOCK_NAME
    # a distributed job (torchrun): rank 0 holds the lock for all ranks; a nested or inherited lock is held already
    fd = None if key in _HELD or not rank0() else _acquire(root, path)
    if fd is not None:
        _claim(fd, root, path, what, log)
    _HELD[key] = _HELD.get(key, 0) + 1
    try:
        yield
    finally:
        _HELD[key] -= 1
        if not _HELD[key]:
            del _HELD[key]
        if fd is not None:
            path.unlink(missing_ok=True)
            os.close(fd)


def _acquire(root: Path, path: Path) -> int | None:
    """The locked file descriptor of ``path``; None when an ancestor holds the lock and passed it down."""
    import fcntl  # POSIX only, imported when a step runs

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
                return None
            raise RunFolderBusy(
                f"run folder {root} is in use by PID {holder.get('pid', '?')} ({holder.get('what', 'opgrpo')}, "
                f"since {holder.get('since', '?')}): wait for it to finish, stop it, or use another --run-dir"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file the previous holder unlinked between our open and our flock
            return fd
        os.close(fd)


def _claim(fd: int, root: Path, path: Path, what: str, log: Callable[[str], None]) -> None:
    """Write who holds the lock now, saying whose lock was taken over (a dead process's, or a file of garbage)."""
    stale = _holder(path)
    if stale.get("pid") and stale["pid"] != os.getpid() and not _pid_alive(int(stale["pid"])):
        log(f"[lock] {root}: took over the lock of PID {stale['pid']} ({stale.get('what', '?')}), no longer running")
    elif not stale and path.stat().st_size:
        log(f"[lock] {root}: took over {LOCK_NAME}, which named no holder (unreadable content)")
    os.ftruncate(fd, 0)
    cmd = " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv))[:120]
    info = {
        "pid": os.getpid(),
        "what": f"{what}: {cmd}" if cmd else what,
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    os.write(fd, json.dumps(info).encode())


def lock_env(root: Path) -> dict[str, str]:
    """Environment for a child process that runs steps under this process's lock of ``root``."""
    return {LOCK_ENV: f"{os.getpid()}:{Path(root).resolve()}"}


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
    for rel in STEPS[step].moves:
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
    for rel in STEPS[step].moves:
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


def prepare_start(
    cfg: RunConfig, root: Path, step: str, force: bool = False, log: Callable[[str], None] = print
) -> Start:
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
    if not force and prev and prev.get("key") == key and prev.get("status") == "finished" and rank0():
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
    if not rank0():  # distributed: only rank 0 moves folders and writes records
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
            log(
                f"[{step}] starting a new run ({start.why}); an earlier start without a checkpoint was discarded, "
                f"the finished run in {previous} is kept"
            )
    else:
        _move_results(root, step, None)
    step_dir.mkdir(parents=True, exist_ok=True)
    mark(step_dir, cfg, step, "running")
    return step_dir


@dataclass
class StepRun:
    """One run of a step inside :func:`step_run`: how it starts, its folder once begun, and what its manifest
    records (``timings``, ``inputs``, ``extra``)."""

    cfg: RunConfig
    paths: RunPaths
    name: str
    start: Start
    key: str
    log: Callable[[str], None] = print
    dir: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    inputs: list[Path] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        """A long step that finished earlier with these settings: the body only reads its outputs back."""
        return self.start.state == "finished"

    @property
    def resuming(self) -> bool:
        return self.start.state == "resume"

    @property
    def folder(self) -> Path:
        """The step's folder (``<run>/<name>``, ``<run>/data`` for step 01); nothing is created."""
        return self.paths.root / self.name

    def timed(self, name: str):
        return timed(self.timings, name)

    def begin(self) -> Path:
        """Every check that can refuse has passed: move an older run aside (long steps), mark the step running."""
        if STEPS[self.name].long:
            self.dir = commit_start(self.cfg, self.start, self.log)
        else:
            self.dir = self.folder
            self.dir.mkdir(parents=True, exist_ok=True)
            if rank0():
                mark(self.dir, self.cfg, self.name, "running")
        return self.dir


def rank0() -> bool:
    """Whether this process writes the run folder (rank 0 of a torchrun job, or a plain run)."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def step_run(
    cfg: RunConfig,
    paths: RunPaths,
    name: str,
    force: bool = False,
    upstream: bool = True,
    log: Callable[[str], None] = print,
) -> Iterator[StepRun]:
    """Run step ``name``'s body under the lifecycle (see the module docstring). ``upstream=False`` skips the
    upstream check (step 07 drawing the committed results). A body that never calls :meth:`StepRun.begin`
    records nothing (a no-op rerun, or figures of results that are not the run's own)."""
    spec = STEPS[name]
    with run_lock(paths.root, f"step {spec.manifest}", log):
        if upstream:
            require_upstream(cfg, paths.root, name)
        if spec.long:
            start = prepare_start(cfg, paths.root, name, force, log)
        else:
            current = spec.noop_when_current and not force and is_current(cfg, paths.root, name)
            start = Start(name, paths.root, "finished" if current else "fresh")
        run = StepRun(cfg, paths, name, start, step_key(cfg, name), log)
        if run.done:
            log(f"[{name}] finished earlier with these settings: nothing to do (force=True / --force redoes it)")
        yield run
        if run.dir is not None and rank0():
            write_manifest(run.dir, spec.manifest, cfg, run.key, run.timings, run.inputs, run.extra, paths.results)
            mark(run.dir, cfg, name, "finished")
