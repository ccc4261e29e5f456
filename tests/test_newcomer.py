"""The entry points as a newcomer meets them: a fresh clone (tracked files only: no runs/, no models/, no figures
made here) next to shared/, notebooks 00 and 07 executed as they are, and the Colab bootstrap run twice."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


def fresh_clone(tmp_path: Path) -> Path:
    """The tracked files of this checkout (as a clone would have them), with shared/ beside it as on this machine."""
    repo = tmp_path / "clone" / "opgrpo"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / rel)
    shared = ROOT.parent / "shared"
    if shared.is_dir():
        (repo.parent / "shared").symlink_to(shared)
    assert not (repo / "runs").exists() and not (repo / "models").exists()
    return repo


def execute(repo: Path, name: str, monkeypatch, **parameters) -> nbformat.NotebookNode:
    import papermill as pm

    monkeypatch.setenv("PYTHONPATH", str(repo))  # the kernel imports the clone's library, not this checkout's
    monkeypatch.delenv("OPGRPO_RUN_DIR", raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    out = repo.parent / f"{name}.out.ipynb"
    pm.execute_notebook(
        str(repo / "notebooks" / f"{name}.ipynb"),
        str(out),
        parameters=parameters,
        cwd=str(repo),
        kernel_name="python3",
        progress_bar=False,
    )
    return nbformat.read(out, as_version=4)


def outputs(nb: nbformat.NotebookNode, mime: str) -> list[str]:
    return [
        o["data"][mime]
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if mime in o.get("data", {})
    ]


@pytest.mark.slow
def test_figures_notebook_on_a_fresh_clone_shows_the_committed_results(tmp_path, monkeypatch):
    repo = fresh_clone(tmp_path)
    run = tmp_path / "run"
    nb = execute(repo, "07_figures", monkeypatch, profile="cpu", run_dir=str(run))
    pngs = outputs(nb, "image/png")
    md = "\n".join(outputs(nb, "text/markdown"))
    committed = {p.name for p in (repo / "figures" / "cpu").glob("*.png")}
    assert len(pngs) == len(committed) >= 6, "every committed figure is shown"
    assert "committed results/cpu" in md and "headline comparisons" in md
    assert "| op_grpo | sft |" in md or "| sbert | 5p+10p |" in md, "tables are rendered, not only named"
    assert "missing inputs" not in md.split("headline gains")[0].split("| headline comparisons |")[1][:40]
    for png in committed:  # the same inputs give the committed figures byte for byte
        assert (run / "figures" / png).read_bytes() == (repo / "figures" / "cpu" / png).read_bytes(), png
    assert not (repo / "runs").exists(), "nothing written into the clone"


@pytest.mark.slow
def test_reward_explorer_notebook_on_a_fresh_clone(tmp_path, monkeypatch):
    repo = fresh_clone(tmp_path)
    if not (repo.parent / "shared" / "data" / "opv2").is_dir() and not os.environ.get("OPGRPO_DATA_DIR"):
        pytest.skip("OP-V2 data not available offline (../shared/data/opv2 or $OPGRPO_DATA_DIR)")
    monkeypatch.setenv("OPGRPO_MODELS_DIR", str(ROOT / "models"))  # the offline MiniLM, as `make models` builds it
    nb = execute(
        repo, "00_explore_reward", monkeypatch, profile="cpu", run_dir=str(tmp_path / "run"), interactive=False
    )
    assert len(outputs(nb, "image/png")) == 1, "the similarity heatmap and weighted terms are shown"
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "5p:0" in text and "total" in text and "interactive explorer off" in text
    assert (tmp_path / "run" / "explain" / "explanation.png").exists() and not (repo / "runs").exists()


def _bootstrap_source() -> str:
    nb = nbformat.read(ROOT / "notebooks" / "07_figures.ipynb", as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code")


def _run_bootstrap(tmp_path: Path, gpu: bool) -> tuple[str, list[str]]:
    """Run the Colab cell as Colab would (google.colab imported), pip recorded instead of run; git for real
    against a clone of this repository."""
    bin_dir = tmp_path / ("bin-gpu" if gpu else "bin")
    bin_dir.mkdir(exist_ok=True)
    if gpu:
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: Tesla T4 (UUID: GPU-0)'\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    log = tmp_path / "pip.log"
    driver = (
        "import subprocess, sys, types\n"
        "sys.modules['google.colab'] = types.ModuleType('google.colab')\n"
        "real = subprocess.run\n"
        "def run(cmd, *a, **k):\n"
        "    if isinstance(cmd, list) and cmd[1:3] == ['-m', 'pip']:\n"
        f"        open({str(log)!r}, 'a').write(' '.join(cmd[3:]) + '\\n')\n"
        "        return subprocess.CompletedProcess(cmd, 0)\n"
        "    return real(cmd, *a, **k)\n"
        "subprocess.run = run\n"
        f"exec(compile(open({str(tmp_path / 'cell.py')!r}).read(), 'bootstrap', 'exec'))\n"
    )
    (tmp_path / "cell.py").write_text(_bootstrap_source())
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "OPGRPO_REPO": str(ROOT),
        "OPGRPO_COLAB_DIR": str(tmp_path / "content" / "opgrpo"),
    }
    out = subprocess.run([sys.executable, "-c", driver], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return out.stdout, log.read_text().splitlines() if log.exists() else []


def test_colab_bootstrap_is_idempotent_and_installs_gpu_only_with_a_gpu(tmp_path):
    ref = "main"
    if subprocess.run(["git", "rev-parse", "--verify", "--quiet", ref], cwd=ROOT, capture_output=True).returncode:
        pytest.skip(f"no {ref} branch in this checkout to clone from")
    first, pip = _run_bootstrap(tmp_path, gpu=False)
    assert "no GPU" in first and len(pip) == 1 and pip[0].endswith("[notebooks,models]"), pip
    second, pip = _run_bootstrap(tmp_path, gpu=False)  # "Restart session" and run again: no clone, no reinstall
    assert "no GPU" in second and len(pip) == 1, "the same commit with the same extras is not reinstalled"
    third, pip = _run_bootstrap(tmp_path, gpu=True)
    assert "GPU" in third and len(pip) == 2 and pip[1].endswith("[notebooks,models,gpu]"), pip
    head = subprocess.run(
        ["git", "-C", str(tmp_path / "content" / "opgrpo"), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert head == subprocess.run(["git", "rev-parse", ref], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def test_the_readme_colab_badge_opens_a_notebook_that_needs_no_run():
    """The badge opens one of the notebooks the tests above execute on a fresh clone with no run folder."""
    import re

    badge = re.search(
        r"colab\.research\.google\.com/github/[^)]*/notebooks/([0-9a-z_]+)\.ipynb\)", (ROOT / "README.md").read_text()
    )
    assert badge and badge.group(1) in {"00_explore_reward", "07_figures"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_lab(repo: Path, port: int, tmp_path: Path):
    """JupyterLab on ``repo`` at ``port`` with token ``t``, logging to ``tmp_path/jupyter.log``."""
    env = {
        **os.environ,
        "PYTHONPATH": str(repo),
        "OPGRPO_MODELS_DIR": str(ROOT / "models"),
        "OPGRPO_RUN_DIR": str(tmp_path / "runs"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    log = open(tmp_path / "jupyter.log", "w")
    lab = ["--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1", "--ServerApp.token=t"]
    lab += [f"--ServerApp.root_dir={repo}", "--LabApp.expose_app_in_browser=True", "--allow-root"]
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", *lab], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    return server, log


def _wait_for_server(port: int) -> None:
    import time
    import urllib.request

    for _ in range(240):  # the server is up when its API answers
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token=t", timeout=2)
            return
        except OSError:
            time.sleep(0.5)


def _headless_chromium(webdriver, chromium: str, chromedriver: str):
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1200",
    ):
        opts.add_argument(arg)
    return webdriver.Chrome(service=webdriver.ChromeService(chromedriver), options=opts)


@pytest.mark.slow
def test_explorer_widgets_in_jupyterlab_with_headless_chromium(tmp_path):
    """JupyterLab on a fresh clone, notebook 00 run from the browser: the widgets render, picking another row updates
    header and totals, a bad row is put back with a message, the button label is not cut off. Optional: needs the
    `browser` extra (selenium) and Debian's chromium + chromium-driver (`apt-get install chromium chromium-driver`)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install '.[browser]'")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.skip("no chromium/chromedriver (apt-get install chromium chromium-driver)")
    repo = fresh_clone(tmp_path)
    if not (repo.parent / "shared" / "data" / "opv2").is_dir():
        pytest.skip("OP-V2 data not available offline")
    port = _free_port()
    server, log = _start_lab(repo, port, tmp_path)
    drv = None
    try:
        _wait_for_server(port)
        drv = _headless_chromium(webdriver, chromium, chromedriver)
        drv.get(f"http://127.0.0.1:{port}/lab/tree/notebooks/00_explore_reward.ipynb?token=t")
        wait = WebDriverWait(drv, 600, poll_frequency=1)
        ready = "const a = window.jupyterapp; const w = a && a.shell.currentWidget; return !!(w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel && w.sessionContext.session.kernel.status === 'idle')"
        wait.until(lambda d: d.execute_script(ready))
        drv.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")

        def status(d):
            found = [e.text for e in d.find_elements(By.CSS_SELECTOR, ".widget-html") if "total" in e.text]
            return found[0] if found else ""

        wait.until(lambda d: "A: total" in status(d) and "B: total" in status(d))
        label = drv.find_element(By.XPATH, "//button[contains(., 'released output')]")
        assert drv.execute_script("return arguments[0].scrollWidth <= arguments[0].clientWidth + 1", label)
        row = drv.find_element(By.CSS_SELECTOR, ".widget-text input[type=number]")
        row.send_keys(Keys.CONTROL, "a")
        row.send_keys("1", Keys.ENTER)
        wait.until(lambda d: "(5p:1)" in d.page_source and "B cleared" in d.page_source and "A: total" in status(d))
        row.send_keys(Keys.CONTROL, "a")
        row.send_keys("9999", Keys.ENTER)
        wait.until(lambda d: "no parsed row 9999" in d.page_source)
        wait.until(lambda d: row.get_attribute("value") == "1")
        assert "(5p:1)" in drv.page_source
        drv.save_screenshot(str(tmp_path / "explorer.png"))
    finally:
        if drv is not None:
            drv.quit()
        server.terminate()
        server.wait(timeout=60)
        log.close()
