"""``make reproduce``: run the numbered notebooks in order with papermill, skipping steps that are up to date.

A step is skipped when its output's provenance key (``keys.step_key``: the config sections it reads, its
upstream keys, its library code, package versions) and the notebook source match what the last run recorded. Keys
are computed from the inputs, so the plan is known before anything runs: an eval-only change reruns 06-07, a change
to ``train.grpo`` reruns 04-07, a change to ``figures.py`` reruns 07 only. While a notebook runs, the console shows
the library's progress events (training step k/N with the latest reward, generation rows k/N) with elapsed time and an
ETA, and a heartbeat at least every minute; kernel start-up noise is filtered out. The end prints a summary.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .config import RunConfig, load_profile
from .keys import is_current, step_key
from .lifecycle import lock_env, run_lock
from .models import check_agreement
from .paths import NOTEBOOK_DIR, committed_results
from .progress import ENV as PROGRESS_ENV
from .registry import notebooks as registry_notebooks
from .registry import steps_of
from .runs import atomic_write_text, run_paths

# Lines the kernel or jupyter_client print on every healthy run (see the module docstring).
NOISE = (
    "Kernel is running over TCP without encryption",
    "KeyboardInterrupt caught in kernel",
    "[IPKernelApp]",
    "IProgress not found",
    "Executing notebook with kernel",
    "Input notebook:",
    "Output notebook:",
    "Executing Cell",
    "Ending Cell",
    "WARNING: Location 'file://",
)
HEARTBEAT_S = 60.0


GPU_PROFILES = ("paper", "gpu-small")  # largest first; auto picks the first whose computed peak fits the free memory


def default_profile() -> tuple[str, str]:
    """(profile, reason) for ``PROFILE=auto`` / ``profile = "auto"``: with a usable CUDA GPU and the ``[gpu]``
    extra, the first of :data:`GPU_PROFILES` whose computed peak memory (``gpu.peak_gib``) fits the card's free
    memory, else ``cpu`` with the reason. A GPU that is visible but unusable by torch is an error (one line), not a
    silent CPU run."""
    from importlib.util import find_spec

    from . import device, gpu

    if find_spec("torch") is None:
        return "cpu", "torch is not installed"
    device.require_usable_gpu()
    if not device.cuda_usable():
        return "cpu", "no CUDA GPU"
    name = device.gpu_name()
    if find_spec("unsloth") is None:
        return (
            "cpu",
            f"CUDA GPU ({name}) found but the [gpu] extra (unsloth) is not installed: pip install -e '.[gpu]'",
        )
    free = device.free_gib()
    needs = []
    for prof in GPU_PROFILES:
        need = gpu.peak_gib(load_profile(prof))
        needs.append(f"{prof} {need:.1f} GiB" if need is not None else f"{prof} unknown (policy shape unknown)")
        if need is not None and gpu.fits(need, free):
            return (
                prof,
                f"{name} with {free:.1f} GiB free; {prof} needs about {need:.1f} GiB (computed, + 10 % margin)",
            )
    return "cpu", (
        f"{name} has {free:.1f} GiB free, less than any GPU profile needs ({', '.join(needs)}, computed): "
        "running the cpu profile; free GPU memory or set PROFILE / profile explicitly"
    )


def resolve_profile(profile: str) -> str:
    """``auto`` → :func:`default_profile` (the rule ``make reproduce`` uses); anything else unchanged."""
    return default_profile()[0] if profile in ("auto", "", None) else profile


def notebooks(names: list[str] | None = None) -> list[Path]:
    """The pipeline notebooks (01-08, the registry's) in order, optionally restricted to stems or numbers."""
    found = [NOTEBOOK_DIR / f"{stem}.ipynb" for stem in registry_notebooks()]
    if names:
        found = [p for p in found if p.stem in names or p.stem[:2] in names]
    return found


class StepFailed(RuntimeError):
    pass


class Stopped(RuntimeError):
    """``opgrpo reproduce`` got SIGTERM / SIGINT; the running notebook and its kernel were stopped."""

    def __init__(self, signum: int, notebook: str | None = None):
        self.signum, self.notebook = signum, notebook
        name = signal.Signals(signum).name
        where = f" while {notebook} ran: it and its kernel were stopped" if notebook else ""
        super().__init__(
            f"stopped by {name}{where}; its step is left as it was (a training step resumes from its last complete "
            "checkpoint): rerun the same command to continue"
        )


_STOPPING: list[int] = []


def _raise_stop(signum, frame):
    if not _STOPPING:  # a second signal while stopping must not interrupt the stop itself
        _STOPPING.append(signum)
        raise Stopped(signum)


def stop_tree(proc: subprocess.Popen, grace_s: float = 10.0) -> list[int]:
    """Stop ``proc`` and every process under it, the kernel included (jupyter starts it in a session of its own, so
    it gets no terminal signal): SIGTERM, then SIGKILL after ``grace_s``. Returns the PIDs stopped."""
    import psutil

    try:
        root = psutil.Process(proc.pid)
        procs = root.children(recursive=True) + [root]  # collected first: orphans are reparented and lost from view
    except psutil.NoSuchProcess:
        return []
    for p in procs:  # the kernel before papermill, so papermill cannot restart or wait on it
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    proc.wait()
    return [p.pid for p in procs]


def _step_of(nb: Path) -> str:
    """The notebook's first step (the one whose folder holds its manifest)."""
    return steps_of(nb.stem)[0].name


def notebook_source(nb: Path) -> list:
    """What counts of a notebook: its code cells' source and tags (the parameters cell is one), in order. Outputs,
    execution counts, cell ids and metadata that Jupyter rewrites when it saves do not."""
    cells = json.loads(nb.read_text()).get("cells", [])
    return [
        [
            "".join(c["source"]) if isinstance(c.get("source"), list) else c.get("source", ""),
            sorted(c.get("metadata", {}).get("tags", [])),
        ]
        for c in cells
        if c.get("cell_type") == "code"
    ]


def notebook_key(cfg: RunConfig, nb: Path) -> str:
    """Skip key of one notebook: the provenance keys of its (enabled) steps + its code cells."""
    keys = [step_key(cfg, s.name) for s in steps_of(nb.stem) if s.enabled(cfg)]
    src = hashlib.sha256(json.dumps(notebook_source(nb)).encode()).hexdigest()
    return hashlib.sha256(f"{'|'.join(keys)}|{src}".encode()).hexdigest()[:16]


def plan(cfg: RunConfig, root: Path, only: list[str] | None = None, force: bool = False) -> list[dict]:
    """For each selected notebook: run or skip, and why."""
    executed = root / "executed"
    out = []
    for nb in notebooks(only):
        key = notebook_key(cfg, nb)
        record = executed / f"{nb.stem}.done.json"
        try:
            same_nb = json.loads(record.read_text()).get("key") == key
        except (OSError, json.JSONDecodeError):
            same_nb = False
        current = all(is_current(cfg, root, st.name) for st in steps_of(nb.stem) if st.enabled(cfg))
        if force:
            why = "--force"
        elif not current:
            why = "inputs changed or never ran"
        elif not same_nb:
            why = "notebook changed"
        else:
            why = None
        out.append({"notebook": nb.name, "path": nb, "key": key, "run": why is not None, "why": why})
    return out


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


class _Watcher(threading.Thread):
    """Prints the progress events a running notebook appends to the progress file, plus a heartbeat."""

    def __init__(self, name: str, path: Path):
        super().__init__(daemon=True)
        self.name_, self.path, self.t0 = name, path, time.time()
        self.stop = threading.Event()
        self.first: dict[str, tuple[float, int]] = {}

    def line(self, ev: dict) -> str:
        stage, done, total = ev["stage"], ev["done"], ev.get("total")
        t0, d0 = self.first.setdefault(stage, (ev["t"], done))
        msg = f"  [{self.name_}] {stage} {done}/{total}" if total else f"  [{self.name_}] {stage} {done}"
        extra = {k: v for k, v in ev.items() if k not in ("t", "stage", "done", "total")}
        msg += "".join(f" {k} {v}" for k, v in extra.items())
        msg += f" | {_fmt(time.time() - self.t0)} elapsed"
        if total and done > d0 and ev["t"] > t0:
            msg += f", ETA {_fmt((total - done) * (ev['t'] - t0) / (done - d0))}"
        return msg

    def run(self) -> None:
        pos = self.path.stat().st_size if self.path.exists() else 0  # events of earlier notebooks are not news
        last_print = time.time()
        while not self.stop.wait(2.0):
            if self.path.exists():
                with open(self.path) as fh:
                    fh.seek(pos)
                    chunk = fh.read()
                    pos = fh.tell()
                for raw in chunk.splitlines():
                    try:
                        print(self.line(json.loads(raw)), flush=True)
                        last_print = time.time()
                    except (json.JSONDecodeError, KeyError):
                        continue
            if time.time() - last_print >= HEARTBEAT_S:
                print(f"  [{self.name_}] running | {_fmt(time.time() - self.t0)} elapsed", flush=True)
                last_print = time.time()


def _failure(out_nb: Path) -> str:
    """ "cell N: Ename: message" of the failed cell of an executed notebook."""
    try:
        nb = json.loads(out_nb.read_text())
    except (OSError, json.JSONDecodeError):
        return "the notebook could not be executed (see the lines above)"
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("metadata", {}).get("papermill", {}).get("status") == "failed":
            errs = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            err = f"{errs[0]['ename']}: {errs[0]['evalue']}" if errs else "error"
            return f"cell {i}: {err}"
    return "unknown cell (see the executed notebook)"


def execute(nb: Path, out_nb: Path, params: dict, progress_file: Path, env_extra: dict | None = None) -> None:
    """Run one notebook with papermill in a child process; stream its warnings, drop known noise. On SIGTERM /
    SIGINT (:class:`Stopped`) the child and its kernel are stopped before the exception goes on."""
    env = {
        **os.environ,
        PROGRESS_ENV: str(progress_file),
        "PYTHONWARNINGS": "ignore::DeprecationWarning",
        **(env_extra or {}),
    }
    cmd = [
        sys.executable,
        "-m",
        "papermill",
        str(nb),
        str(out_nb),
        "-y",
        json.dumps(params),
        "-k",
        "python3",
        "--cwd",
        str(NOTEBOOK_DIR),
        "--no-progress-bar",
        "--no-log-output",
        "--log-level",
        "WARNING",
        "--request-save-on-cell-execute",
    ]
    watcher = _Watcher(nb.stem, progress_file)
    watcher.start()
    proc = None
    try:
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )  # a terminal's Ctrl-C reaches us only: we stop the tree
        tail = []
        failing = False  # papermill's traceback of a failed cell: summarised by StepFailed instead
        for line in proc.stdout:
            if line.strip() and not any(n in line for n in NOISE):
                tail = (tail + [line.rstrip()])[-20:]
                failing = failing or any(m in line for m in ("Traceback", "Exception encountered", "Error"))
                if not failing:
                    print(f"  [{nb.stem}] {line.rstrip()}", flush=True)  # a real warning from papermill/the kernel
        rc = proc.wait()
    except BaseException as exc:
        if proc is not None and proc.poll() is None:
            stop_tree(proc)
        if isinstance(exc, Stopped):
            raise Stopped(exc.signum, nb.name) from None
        raise
    finally:
        watcher.stop.set()
        watcher.join()
    if rc != 0:
        where = _failure(out_nb)
        hint = "" if where.startswith("cell") else "\n" + "\n".join(tail[-8:])  # e.g. the kernel did not start
        raise StepFailed(f"{nb.name} failed in {where}\nexecuted notebook: {out_nb}{hint}")


def _peak_memory(root: Path, step: str) -> str:
    try:
        dev = json.loads((root / step / "manifest.json").read_text())["device"]
    except (OSError, json.JSONDecodeError, KeyError):
        return "-"
    if "peak_gpu_mem_gb" in dev:
        return f"{dev['peak_gpu_mem_gb']:.1f} GB GPU"
    return f"{dev['peak_rss_gb']:.1f} GB RAM" if "peak_rss_gb" in dev else "-"


def headline(results: Path) -> dict[str, float]:
    """Pooled SBERT relative accuracy per system (first threshold, core text) from ``results/eval``."""
    import pandas as pd

    path = results / "eval" / "sbert_per_sample.parquet"
    if not path.exists():
        return {}
    per = pd.read_parquet(path)
    if per.empty:
        return {}
    per = per[(per["text"] != "summary") & (per["threshold"] == per["threshold"].min())]
    if "evaluator" in per:
        per = per[per["evaluator"] == "independent"]
    return {k: round(float(v), 3) for k, v in per.groupby("system")["ratio"].mean().items()}


def failed_parts(root: Path) -> list[str]:
    """Parts of a finished run that failed without stopping it (an LLM judge that scored nothing): every other
    result stands, but ``opgrpo reproduce`` says so and exits non-zero."""
    try:
        judge = json.loads((root / "results" / "eval" / "eval_summary.json").read_text()).get("judge", {})
    except (OSError, json.JSONDecodeError):
        return []
    return [f"LLM {judge['reason']}"] if judge.get("status") == "failed" else []


def summary_text(profile: str, root: Path, report: list[dict]) -> str:
    lines = [f"\nopgrpo reproduce — profile {profile}, run folder {root}", ""]
    lines.append(f"  {'step':<32}{'status':<9}{'wall':>9}  peak memory")
    for r in report:
        wall = _fmt(r["wall_s"]) if "wall_s" in r else "-"
        step = _step_of(Path(r["notebook"]))
        lines.append(f"  {r['notebook']:<32}{r['status']:<9}{wall:>9}  {_peak_memory(root, step)}")
    ours, committed = headline(root / "results"), headline(committed_results(profile))
    if ours:
        lines += ["", "  SBERT relative accuracy (pooled) this run vs committed results/" + profile]
        for system, value in ours.items():
            ref = committed.get(system)
            lines.append(
                f"    {system:<22}{value:.3f}   committed {ref:.3f}"
                if ref is not None
                else f"    {system:<22}{value:.3f}   committed -"
            )
    lines += [f"  FAILED: {part}" for part in failed_parts(root)]
    lines += [
        "",
        f"  results: {root / 'results'}",
        f"  figures: {root / 'figures'} (INDEX.md lists them)",
        f"  executed notebooks: {root / 'executed'}",
        f"  to make these the committed results: opgrpo publish --profile {profile}",
    ]
    return "\n".join(lines)


def reproduce(
    profile: str,
    run_dir: str | None = None,
    only: list[str] | None = None,
    force: bool = False,
    overrides: dict | None = None,
    quiet: bool = False,
) -> list[dict]:
    """Execute each notebook that is not up to date into ``<run_dir>/executed/``. A failure names the notebook and
    cell; earlier outputs stay. Returns one record per notebook (ran / skipped, wall time)."""
    cfg = load_profile(profile, overrides)
    check_agreement(cfg)  # a model of the reward's agreement list that is not here: refused before any step
    paths = run_paths(cfg, run_dir)
    handlers = {}
    _STOPPING.clear()
    # SIGTERM / SIGINT stop the notebook's process tree, then this process (Stopped)
    if threading.current_thread() is threading.main_thread():
        handlers = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with run_lock(paths.root, f"opgrpo reproduce --profile {profile}"):
            return _reproduce(cfg, profile, paths, only, force, overrides, quiet)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


def _reproduce(cfg: RunConfig, profile: str, paths, only, force: bool, overrides, quiet: bool) -> list[dict]:
    executed = paths.root / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    progress_file = paths.root / "progress.jsonl"
    report = []
    for item in plan(cfg, paths.root, only, force):
        nb, key = item["path"], item["key"]
        record, out_nb = executed / f"{nb.stem}.done.json", executed / nb.name
        if not item["run"]:
            print(f"[skip] {nb.name}: up to date (key {key})", flush=True)
            report.append({"notebook": nb.name, "status": "skipped", "key": key})
            continue
        print(f"[run ] {nb.name} ({item['why']}) started {time.strftime('%H:%M:%S')}", flush=True)
        t0 = time.perf_counter()
        params = {"profile": profile, "run_dir": str(paths.root), "overrides": overrides or {}}
        # A failed or refused run writes <nb>.failed.ipynb: a finished run's executed notebook and record stay, so
        # a refused start (other settings) never makes the finished step look changed.
        running, failed = executed / f".{nb.stem}.running.ipynb", executed / f"{nb.stem}.failed.ipynb"
        try:
            execute(nb, running, params, progress_file, lock_env(paths.root))
        except BaseException as exc:
            if running.exists():
                running.replace(failed)
            if isinstance(exc, StepFailed):
                raise StepFailed(str(exc).replace(str(running), str(failed))) from None
            raise
        running.replace(out_nb)
        failed.unlink(missing_ok=True)
        wall = time.perf_counter() - t0
        atomic_write_text(record, json.dumps({"key": key, "wall_s": round(wall, 1)}))
        print(f"[done] {nb.name} in {_fmt(wall)}", flush=True)
        report.append({"notebook": nb.name, "status": "ran", "key": key, "wall_s": round(wall, 1)})
    atomic_write_text(paths.root / "reproduce_report.json", json.dumps(report, indent=2))
    if not quiet:
        print(summary_text(profile, paths.root, report), flush=True)
    return report
