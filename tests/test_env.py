"""environment.yml stays a thin wrapper consistent with pyproject.toml."""

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert sorted(re.split(r"[=<>]", d)[0] for d in conda) == ["pip", "python"], "no ML pins in the conda section"
    pyver = next(d for d in conda if d.startswith("python=")).split("=")[1]
    major, minor = map(int, pyver.split("."))
    assert (3, 10) <= (major, minor) < (3, 13), py["project"]["requires-python"]
    pip = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    extras = set(py["project"]["optional-dependencies"])
    for line in pip:
        m = re.fullmatch(r"-e \.\[([a-z,]+)\]", line)
        assert m, line
        assert set(m.group(1).split(",")) <= extras - {"gpu"}


def test_exact_pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for pin in (
        "transformers==5.17.0",
        "trl==1.14.2",
        "peft==0.21.2",
        "accelerate==1.15.0",
        "sentence-transformers==6.2.0",
    ):
        assert pin in deps
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["cpu"] == ["torch==2.13.0"]
    assert all("==" in d for d in extras["gpu"])


def test_no_heavy_imports_at_package_import():
    import subprocess
    import sys

    code = (
        "import sys, opgrpo_lib, opgrpo_lib.config, opgrpo_lib.text, opgrpo_lib.data, opgrpo_lib.cli; "
        "print(sorted(m for m in ('torch','transformers','trl','unsloth','sentence_transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
