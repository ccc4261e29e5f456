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


def test_binder_config_is_valid():
    env = yaml.safe_load((ROOT / "binder" / "environment.yml").read_text())
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"])
    post = ROOT / "binder" / "postBuild"
    text = post.read_text()
    assert post.stat().st_mode & 0o111, "postBuild must be executable"
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert "download.pytorch.org/whl/cpu" in text and "[gpu" not in text
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"mybinder\.org/v2/gh/[^)]*labpath=([^)\s]+)\)", readme)
    assert m and (ROOT / m.group(1).replace("%2F", "/")).exists()


def test_readme_results_table_matches_committed_results():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "update_readme.py"), "--check"], cwd=ROOT)
    assert out.returncode == 0, "README results block is stale: run python scripts/update_readme.py"


def test_makefile_help_lists_every_target():
    import subprocess

    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    targets = re.findall(r"^([a-z-]+):[^=\n]*?## ", (ROOT / "Makefile").read_text(), re.M)
    assert targets and all(t in out for t in targets)
    for t in ("reproduce", "test", "smoke", "figures", "models"):
        assert t in targets
