import hashlib
import http.server
import threading
from functools import partial
from pathlib import Path

import pandas as pd
import pytest

from opgrpo_lib import data
from opgrpo_lib.config import SPLITS, load_profile
from opgrpo_lib.text import parse_perspectives


@pytest.fixture()
def cfg_local(opv2_dir, monkeypatch, tmp_path):
    monkeypatch.setenv(data.ENV_CACHE_DIR, str(tmp_path / "cache"))
    monkeypatch.setenv(data.ENV_DATA_DIR, str(opv2_dir))
    return load_profile("cpu")


def test_every_shared_row_parses_and_counts_match_split_names(opv2_dir):
    total = 0
    for split in SPLITS:
        df = pd.read_csv(opv2_dir / f"test_{split}.csv", keep_default_na=False)
        counts = [len(parse_perspectives(a)) for a in df["answer"]]
        total += len(df)
        if split == "gt10p":
            # One published gt10p row has 10 line-initial perspectives; its 11th "perspective" is the phrase
            # "From the perspective of those in power" inside an explanation (the authors counted it).
            low = [(p, c) for p, c in zip(df["prompt"], counts) if c <= 10]
            assert low == [("Fighting back against oppressive government", 10)]
        else:
            assert set(counts) == {int(split[:-1])}
    assert total == 2000
    union = pd.read_csv(opv2_dir / "final_test.csv", keep_default_na=False)
    assert len(union) == 2000 and all(len(parse_perspectives(a)) >= 5 for a in union["answer"])


def test_cpu_split_sizes_disjoint_and_seeded(cfg_local):
    prep = data.prepare(cfg_local)
    ev = prep.eval.groupby("split").size().to_dict()
    assert ev == {**{s: 100 for s in SPLITS[:-1]}, "5p": 200, "10p": 200, "gt10p": 200}
    assert len(prep.train) + len(prep.val) == 1000 and "gt10p" not in set(prep.train["split"])
    assert not set(prep.train["prompt"]) & set(prep.eval["prompt"])
    again = data.prepare(cfg_local)
    assert again.eval["prompt"].tolist() == prep.eval["prompt"].tolist()
    other = data.prepare(load_profile("cpu", {"seed": 7}))
    assert other.eval["prompt"].tolist() != prep.eval["prompt"].tolist()
    # the evaluation carve only grows: 100 per split keeps a subset of the 200 (the seeded permutation's first rows)
    fewer = data.prepare(load_profile("cpu", {"data.eval_split_rows": {"5p": 100, "10p": 100}}))
    assert set(fewer.eval["prompt"]) < set(prep.eval["prompt"]) and len(fewer.eval) == 800
    # published order is kept inside each split
    part = prep.eval[prep.eval["split"] == "5p"]["row_index"].tolist()
    assert part == sorted(part)


def test_malformed_rows_are_counted_not_lost():
    df = pd.DataFrame(
        {
            "prompt": ["ok", "bad", ""],
            "answer": ["In the perspective of A, b.", "no prefix here", "In the perspective of A, b."],
        }
    )
    out, rep = data.parse_frame(df, "x.csv")
    assert out["prompt"].tolist() == ["ok"]
    assert rep.rows == 3 and rep.kept == 1 and [d["row"] for d in rep.dropped] == [1, 2]
    with pytest.raises(ValueError, match=r"x.csv row 1 \('bad'\)"):
        data.parse_frame(df, "x.csv", on_error="raise")


def test_tampered_local_file_is_rejected(opv2_dir, tmp_path, monkeypatch):
    local = tmp_path / "opv2"
    local.mkdir()
    for f in opv2_dir.glob("*.csv"):  # byte copies: the shared folder may be read-only (CI)
        (local / f.name).write_bytes(f.read_bytes())
    raw = (local / "test_7p.csv").read_bytes()
    (local / "test_7p.csv").write_bytes(raw.replace(b"perspective", b"perspectiv3", 1))
    monkeypatch.setenv(data.ENV_DATA_DIR, str(local))
    monkeypatch.setenv(data.ENV_CACHE_DIR, str(tmp_path / "cache"))
    with pytest.raises(data.DataIntegrityError, match="test_7p.csv"):
        data.prepare(load_profile("cpu"))


def test_git_blob_sha1_matches_pins(opv2_dir):
    raw = (opv2_dir / "test_5p.csv").read_bytes()
    assert data.git_blob_sha1(raw) == data.FILES["test_5p.csv"].git_sha1
    assert hashlib.sha256(raw).hexdigest() == data.FILES["test_5p.csv"].sha256


@pytest.fixture()
def loopback_repo(opv2_dir, tmp_path):
    """A real HTTP server on 127.0.0.1 laid out like raw.githubusercontent.com/<owner>/<repo>/<commit>/<path>."""
    commit = load_profile("cpu").data.commit
    root = tmp_path / "www"
    dest = root / commit / data.BENCH
    dest.mkdir(parents=True)
    for f in opv2_dir.glob("*.csv"):
        (dest / f.name).write_bytes(f.read_bytes())
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", dest
    server.shutdown()


def test_download_over_http_is_verified_and_cached(loopback_repo, tmp_path, monkeypatch):
    url, _ = loopback_repo
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    monkeypatch.setenv(data.ENV_CACHE_DIR, str(tmp_path / "cache"))
    cfg = load_profile("cpu", {"data.local_dir": None, "data.base_url": url})
    prep = data.prepare(cfg)
    assert len(prep.eval) == 1000
    cached = sorted(p.name for p in (tmp_path / "cache" / "data" / cfg.data.commit).iterdir())
    assert cached == sorted(f"test_{s}.csv" for s in SPLITS)
    # second run is served from the cache (server content no longer matters)
    assert data.fetch("test_5p.csv", cfg).parent.name == cfg.data.commit


def test_download_with_wrong_hash_leaves_no_file(loopback_repo, tmp_path, monkeypatch):
    url, served = loopback_repo
    (served / "test_6p.csv").write_bytes(b"prompt,answer\nx,In the perspective of A, b.\n")
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    monkeypatch.setenv(data.ENV_CACHE_DIR, str(tmp_path / "cache"))
    cfg = load_profile("cpu", {"data.local_dir": None, "data.base_url": url})
    with pytest.raises(data.DataIntegrityError, match="test_6p.csv"):
        data.fetch("test_6p.csv", cfg)
    assert not list((tmp_path / "cache").rglob("*test_6p*"))


def test_offline_without_data_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    monkeypatch.setenv(data.ENV_CACHE_DIR, str(tmp_path / "cache"))
    cfg = load_profile("cpu", {"data.local_dir": str(tmp_path / "none"), "data.download": False})
    with pytest.raises(FileNotFoundError, match="data.download is false"):
        data.fetch("test_5p.csv", cfg)


def test_run_writes_parquet_card_plot_manifest(cfg_local, tmp_path):
    from opgrpo_lib.runs import run_paths
    from opgrpo_lib.steps import data as data_step

    paths = run_paths(cfg_local, tmp_path / "run")
    committed = Path(__file__).resolve().parents[1] / "results" / cfg_local.profile / "data_card.json"
    before = committed.read_bytes() if committed.exists() else None
    data_step.run(cfg_local, paths)
    after = committed.read_bytes() if committed.exists() else None
    assert before == after, "--run-dir must leave the repository's results/ untouched"
    for name in (
        "train.parquet",
        "eval.parquet",
        "data_card.json",
        "data_card.md",
        "perspectives_per_row.png",
        "manifest.json",
    ):
        assert (paths.data / name).exists(), name
    train, ev = data.load_prepared(paths.data)
    assert len(ev) == 1000 and isinstance(ev["perspectives"].iloc[0][0]["name"], str)
    assert (tmp_path / "run" / "results" / "data_card.json").exists()
    import stat

    mode = stat.S_IMODE((paths.results / "data_card.json").stat().st_mode)
    assert mode & 0o044, f"results are readable by others (mode {oct(mode)}), not mkstemp's 0600"


def test_validation_carve_is_disjoint_from_training_and_evaluation(cfg_local):
    from opgrpo_lib.config import load_profile

    cfg = load_profile("cpu", {"data.local_dir": cfg_local.data.local_dir, "data.validation_situations": 60})
    prepared = data.prepare(cfg)
    train, ev, val = prepared.train, prepared.eval, prepared.val
    assert len(val) == 60 and prepared.card["validation"]["rows"] == 60
    assert not set(val["prompt"]) & set(train["prompt"]) and not set(val["prompt"]) & set(ev["prompt"])
    again = data.prepare(cfg)
    assert again.val["prompt"].tolist() == val["prompt"].tolist(), "seeded"
