"""Run-folder safety without training: a step's start touches nothing until every check passed, a finished run is
kept aside (never deleted by a failed start) and restored when its settings come back, per-run results move with
their step, and one process writes a run folder at a time (the lock names its holder; a dead holder's lock is
taken over)."""

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from opgrpo_lib.config import load_profile
from opgrpo_lib.keys import mark, recorded, step_key
from opgrpo_lib.lifecycle import LOCK_NAME, REPLACED, RunFolderBusy, commit_start, lock_env, prepare_start, run_lock


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content hash (what "byte-identical" is checked against)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


def _checkpoint(folder: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    save_file({"w": np.zeros(2, dtype=np.float32)}, str(folder / "model.safetensors"))


def _finished_grpo(root: Path, cfg, curve: str = "step,mean_reward\n0,0.5\n2,2.0\n") -> None:
    step = root / "grpo"
    _checkpoint(step / "checkpoints" / "checkpoint-2")
    (step / "policy").mkdir()
    mark(step, cfg, "grpo", "running")
    mark(step, cfg, "grpo", "finished")
    (root / "results").mkdir(exist_ok=True)
    (root / "results" / "validation_curve.csv").write_text(curve)
    (root / "results" / "train_log.csv").write_text("step,loss\n1,0.1\n")


def test_prepare_touches_nothing_and_a_finished_run_survives_failed_starts(tmp_path):
    old = load_profile("tiny")
    _finished_grpo(tmp_path, old)
    before = tree(tmp_path)
    new = load_profile("tiny", {"train.grpo.learning_rate": 5e-2})
    start = prepare_start(new, tmp_path, "grpo")
    assert start.state == "fresh" and "learning_rate" in start.why
    assert tree(tmp_path) == before, "deciding how to start moves nothing (the checks come before commit_start)"

    commit_start(new, start)  # the checks passed: the finished run moves aside with its curve and log
    prev = tmp_path / "grpo.previous"
    assert recorded(prev)["status"] == "finished" and (prev / "checkpoints" / "checkpoint-2").is_dir()
    assert (prev / "results" / "validation_curve.csv").read_text().endswith("2,2.0\n")
    assert not (tmp_path / "results" / "validation_curve.csv").exists(), "a new run never inherits the old curve"
    assert "learning_rate" in json.loads((prev / REPLACED).read_text())["why"]
    assert recorded(tmp_path / "grpo")["status"] == "running"

    # that start died before its first checkpoint; another setting starts: the stub goes, the finished run stays
    other = load_profile("tiny", {"train.grpo.learning_rate": 7e-2})
    commit_start(other, prepare_start(other, tmp_path, "grpo"))
    assert recorded(prev)["key"] == step_key(old, "grpo"), "a start without a checkpoint never replaces .previous"

    # the original settings again: the finished run comes back as it was, nothing retrains
    assert prepare_start(old, tmp_path, "grpo").state == "finished"
    assert recorded(tmp_path / "grpo")["key"] == step_key(old, "grpo")
    assert (tmp_path / "results" / "validation_curve.csv").read_text().endswith("2,2.0\n")
    assert not (tmp_path / "grpo" / REPLACED).exists() and not (tmp_path / "grpo" / "results").exists()
    assert tree(tmp_path / "grpo") == {k[5:]: v for k, v in before.items() if k.startswith("grpo/")}


def test_a_new_run_with_a_checkpoint_becomes_previous(tmp_path):
    old, new = load_profile("tiny"), load_profile("tiny", {"train.grpo.learning_rate": 5e-2})
    _finished_grpo(tmp_path, old)
    commit_start(new, prepare_start(new, tmp_path, "grpo"))
    _checkpoint(tmp_path / "grpo" / "checkpoints" / "checkpoint-2")  # the new run saved its first checkpoint
    third = load_profile("tiny", {"train.grpo.learning_rate": 9e-2})
    commit_start(third, prepare_start(third, tmp_path, "grpo"))
    assert recorded(tmp_path / "grpo.previous")["key"] == step_key(new, "grpo")


def test_second_process_is_refused_with_the_holders_pid(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from opgrpo_lib.lifecycle import run_lock\n"
         f"with run_lock({str(tmp_path)!r}, 'test holder'):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        out = subprocess.run(
            [sys.executable, "-m", "opgrpo_lib.cli", "grpo", "--profile", "tiny", "--run-dir", str(tmp_path)],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and f"in use by PID {holder.pid}" in out.stderr
        with pytest.raises(RunFolderBusy, match=str(holder.pid)):
            with run_lock(tmp_path):
                pass
        holder.send_signal(signal.SIGKILL)  # dies holding it: the OS frees the lock, its file stays behind
        holder.wait()
        assert (tmp_path / LOCK_NAME).exists()
        said = []
        with run_lock(tmp_path, log=said.append):
            assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert said and f"PID {holder.pid}" in said[0] and "no longer running" in said[0]
        assert not (tmp_path / LOCK_NAME).exists(), "released: the folder is left as it was"
    finally:
        holder.kill()


def test_lock_is_reentrant_and_inherited_by_children(tmp_path, monkeypatch):
    with run_lock(tmp_path):
        with run_lock(tmp_path):  # a step calling another step
            pass
        assert (tmp_path / LOCK_NAME).exists()
        code = f"from opgrpo_lib.lifecycle import run_lock\nwith run_lock({str(tmp_path)!r}):\n    print('ok')"
        env = {**os.environ, **lock_env(tmp_path)}
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert child.stdout.strip() == "ok", child.stderr  # a notebook kernel under `opgrpo reproduce`
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert other.returncode != 0 and "in use by PID" in other.stderr
    assert not (tmp_path / LOCK_NAME).exists()


def test_concurrent_lockers_never_both_hold(tmp_path):
    """Many processes racing for the lock (acquire, note, release, again): no two hold it at once."""
    code = (
        "import os, sys, time\nfrom opgrpo_lib.lifecycle import run_lock, RunFolderBusy\n"
        f"root = {str(tmp_path)!r}\nfor _ in range(40):\n    try:\n        with run_lock(root):\n"
        "            fd = os.open(os.path.join(root, 'holder'), os.O_CREAT | os.O_EXCL | os.O_WRONLY)\n"
        "            time.sleep(0.002)\n            os.close(fd); os.unlink(os.path.join(root, 'holder'))\n"
        "    except RunFolderBusy:\n        pass\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errs = [p.communicate()[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs  # O_EXCL would fail if two held the lock together


def test_a_lock_file_of_garbage_is_taken_over_saying_so(tmp_path):
    """A lock file holding binary garbage (no live holder) is taken over with a line naming it, not a decode error."""
    (tmp_path / LOCK_NAME).write_bytes(b"\xff\xfe\x00 not json")
    said: list[str] = []
    with run_lock(tmp_path, "test", log=said.append):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert len(said) == 1 and LOCK_NAME in said[0] and "named no holder" in said[0]
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_manifest_names_its_commit_when_git_status_fails(monkeypatch):
    """``git status`` timing out on a loaded machine once dropped the sha of every manifest of a published run."""
    from opgrpo_lib import manifest

    real = manifest._git
    monkeypatch.setattr(manifest, "_git", lambda *args, **kw: None if "status" in args else real(*args, **kw))
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=manifest.REPO_ROOT)
    assert manifest.git_state() == {"sha": head.stdout.strip(), "dirty": None}
    assert len(head.stdout.strip()) == 40
