"""The CLI never shows a raw traceback for a user error: one line naming the file/key/value, exit 2."""

import subprocess
import sys

import pytest

from opgrpo_lib.cli import main


def _run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "opgrpo_lib.cli", *args], capture_output=True, text=True, **kw)


@pytest.mark.parametrize(
    "args, message",
    [
        (["data", "--profile", "tiny", "--set", "device=gpu"], "device: 'gpu' is not one of"),
        (["data", "--profile", "tiny", "--set", "generate.rows_per_split=-3"], "generate.rows_per_split"),
        (["data", "--profile", "tiny", "--set", "reward.mask=situaton"], "reward.mask"),
        (["data", "--profile", "nope"], "unknown profile"),
    ],
)
def test_bad_settings_exit_2_with_one_line(args, message, tmp_path):
    out = _run(*args, "--run-dir", str(tmp_path))
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_reward_cli_rejects_non_finite_weights(tmp_path, opv2_dir):
    out = _run("reward", "--profile", "tiny", "--references", str(opv2_dir / "test_5p.csv"), "--completions",
               str(opv2_dir / "test_5p.csv"), "--completion-column", "answer", "--weights", "nan,inf",
               "--out", str(tmp_path / "s.csv"))  # fmt: skip
    assert out.returncode == 2 and "finite" in out.stderr and "Traceback" not in out.stderr
    unwritable = _run("reward", "--profile", "tiny", "--references", str(opv2_dir / "test_5p.csv"), "--completions",
                      str(opv2_dir / "test_5p.csv"), "--completion-column", "answer", "--out", "/proc/no/s.csv")  # fmt: skip
    assert unwritable.returncode == 2 and "--out" in unwritable.stderr and "Traceback" not in unwritable.stderr


def test_yaml_error_names_the_file(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("seed: 1\nseed: 2\n")
    out = _run("data", "--profile", str(bad), "--run-dir", str(tmp_path / "r"))
    assert out.returncode == 2 and "mine.yaml: line 2: key 'seed' is given twice" in out.stderr


def test_unavailable_model_and_missing_cuda_are_one_line(tmp_path, opv2_dir, capsys):
    import torch

    args = ["eval", "sbert", "--references", str(opv2_dir / "test_5p.csv"), "--candidates",
            str(opv2_dir / "test_5p.csv"), "--candidate-column", "answer"]  # fmt: skip
    assert main([*args, "--model", "no-such-org/no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("opgrpo: error:") and len(err.strip().splitlines()) == 1
    if not torch.cuda.is_available():
        assert main([*args, "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
