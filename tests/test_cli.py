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


def _reward(references, completions, out, *extra: str):
    """``opgrpo reward`` on the tiny profile, scoring the ``answer`` column of ``completions``."""
    paths = ("--references", str(references), "--completions", str(completions), "--out", str(out))
    return _run("reward", "--profile", "tiny", *paths, "--completion-column", "answer", *extra)


def test_reward_cli_rejects_non_finite_weights(tmp_path, opv2_dir):
    csv = opv2_dir / "test_5p.csv"
    out = _reward(csv, csv, tmp_path / "s.csv", "--weights", "nan,inf")
    assert out.returncode == 2 and "finite" in out.stderr and "Traceback" not in out.stderr
    unwritable = _reward(csv, csv, "/proc/no/s.csv")
    assert unwritable.returncode == 2 and "--out" in unwritable.stderr and "Traceback" not in unwritable.stderr


def test_yaml_error_names_the_file(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("seed: 1\nseed: 2\n")
    out = _run("data", "--profile", str(bad), "--run-dir", str(tmp_path / "r"))
    assert out.returncode == 2 and "mine.yaml: line 2: key 'seed' is given twice" in out.stderr


def test_unavailable_model_and_missing_cuda_are_one_line(tmp_path, opv2_dir, capsys):
    import torch

    args = [
        "eval",
        "sbert",
        "--references",
        str(opv2_dir / "test_5p.csv"),
        "--candidates",
        str(opv2_dir / "test_5p.csv"),
        "--candidate-column",
        "answer",
    ]
    assert main([*args, "--model", "no-such-org/no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("opgrpo: error:") and len(err.strip().splitlines()) == 1
    if not torch.cuda.is_available():
        assert main([*args, "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err


def _one_line_error(out, *needles):
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("opgrpo: error:"), out.stderr
    for needle in needles:
        assert needle in out.stderr, (needle, out.stderr)


@pytest.mark.parametrize(
    "pair, needles",
    [("seed=[1", ["--set seed", "not valid YAML"]), ("seed", ["KEY=VALUE", "'seed'"]), ("=3", ["key"])],
)
def test_bad_set_is_one_line_naming_the_key(pair, needles, tmp_path):
    _one_line_error(_run("data", "--profile", "tiny", "--set", pair, "--run-dir", str(tmp_path)), *needles)
    _one_line_error(_run("reproduce", "--profile", "tiny", "--set", pair, "--run-dir", str(tmp_path)), *needles)


def test_empty_and_undecodable_files_are_named(tmp_path, opv2_dir):
    empty, binary = tmp_path / "empty.csv", tmp_path / "latin1.csv"
    empty.write_text("")
    binary.write_bytes(b"prompt,answer\n\xff\xfe caf\xe9,x\n")
    ref = str(opv2_dir / "test_5p.csv")
    for bad, why in ((empty, "empty"), (binary, "not UTF-8")):
        out = _reward(bad, ref, tmp_path / "s.csv")
        _one_line_error(out, f"references {bad}", why)
        out = _run(
            "eval",
            "sbert",
            "--references",
            ref,
            "--candidates",
            str(bad),
            "--candidate-column",
            "x",
            "--model",
            "tiny:encoder",
        )
        _one_line_error(out, f"candidates {bad}", why)
    profile = tmp_path / "mine.yaml"
    profile.write_bytes(b"seed: 1\n# caf\xe9\n")
    _one_line_error(_run("data", "--profile", str(profile), "--run-dir", str(tmp_path / "r")), "mine.yaml", "UTF-8")
    response = tmp_path / "response.txt"
    response.write_bytes(b"\xff\xfe\x00bad")
    out = _run("explain", "--profile", "tiny", "--situation", "5p:0", "--response-file", str(response))
    _one_line_error(out, f"--response-file {response}", "not UTF-8")


def test_publish_on_a_missing_run_folder_creates_nothing(tmp_path):
    missing = tmp_path / "no" / "such" / "run"
    out = _run("publish", "--profile", "tiny", "--run-dir", str(missing))
    _one_line_error(out, str(missing), "does not exist")
    assert not (tmp_path / "no").exists()
