"""Step 08: the authors' evaluation logs — parser, verification, hash refusal, regenerated cells, re-scoring,
``opgrpo compare`` end to end."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from opgrpo_lib.authors import claims as authors_claims
from opgrpo_lib.authors import evidence, logs, rescore, sources
from opgrpo_lib.config import load_profile
from opgrpo_lib.data import DataIntegrityError, git_blob_sha1
from opgrpo_lib.reward import SentenceEncoder

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "authors-eval-logs"
LOGGED = ROOT.parent / "shared" / "data" / "authors-logged-results" / "sbert_coverage.csv"
OPV2 = ROOT.parent / "shared" / "data" / "opv2"
need_shared = pytest.mark.skipif(not (SHARED.is_dir() and OPV2.is_dir()), reason="shared authors' logs not here")

HEADER = """=== Static parameters ===
  REFERENCE_CSV : /home/zczlyf7/Overton-PPO/benchmark_new/dataset/test_5p.csv
  CANDIDATE_CSV : /home/zczlyf7/Overton-PPO/workflow/Qwen3-8B/explicit/test_5p_gen.csv
     SBERT_PATH : paraphrase-mpnet-base-v2
      THRESHOLD : 0.75
           MODE : explicit
      MAX_WORDS : 450
         DEVICE : cuda

Loaded 2 reference samples
Loaded 2 candidate samples

"""
ROW0 = """
=== Row 0 ===
[PROMPT] Helping a friend move
Ref (2):
  [R1] In the perspective of Loyalty, friends help each other.
  [R2] In the perspective of Time, your time matters.
Cand(3):
  [C1] Friends help
  [C2] A sentence that goes
on a second line
  [C3] Time is precious
  ✔ R1 ↔ C1  sim=0.912
  ✔ R2 ↔ C3  sim=0.801
Matched 2/2 → ✓ ALL
------------------------------------------------------------
"""
ROW1 = """
=== Row 1 ===
[PROMPT] Lying to a stranger
Ref (2):
  [R1] In the perspective of Honesty, lying is wrong.
  [R2] In the perspective of Privacy, strangers need not know.
Cand(1):
  [C1] Honesty matters
  ✔ R1 ↔ C1  sim=0.700
Matched 1/2 → ✗
------------------------------------------------------------
"""
FOOTER = """
==========================
Absolute Accuracy = {a}  ({h}/{t})
Relative Accuracy = {r}  (average matched ratio)
==========================
"""


def synthetic(rel: str = "0.7500", hit: int = 1, total: int = 2, footer: bool = True) -> str:
    return HEADER + ROW0 + ROW1 + (FOOTER.format(a="0.5000", h=hit, t=total, r=rel) if footer else "")


def test_parser_reads_header_rows_matches_and_footer():
    log = logs.parse_log(synthetic(), "x.log")
    assert log.header["THRESHOLD"] == "0.75" and log.header["SBERT_PATH"] == "paraphrase-mpnet-base-v2"
    assert log.loaded == {"reference": 2, "candidate": 2}
    assert [r.row for r in log.rows] == [0, 1]
    r0 = log.rows[0]
    assert r0.prompt == "Helping a friend move"
    assert r0.references[1] == "In the perspective of Time, your time matters."
    assert r0.candidates == ["Friends help", "A sentence that goes\non a second line", "Time is precious"]
    assert r0.matches == [(1, 1, 0.912), (2, 3, 0.801)] and (r0.k, r0.n) == (2, 2) and r0.all_flag
    assert (log.rows[1].k, log.rows[1].n, log.rows[1].all_flag) == (1, 2, False)
    assert log.footer == {"absolute": 0.5, "hit_all": 1, "total": 2, "relative": 0.75}
    assert logs.check_log(log) == ""


def test_header_facts_come_from_the_header():
    log = logs.parse_log(synthetic())
    assert logs.split_of_reference(log.header["REFERENCE_CSV"]) == "5p"
    assert logs.evaluator_of(log.header["SBERT_PATH"]) == "paraphrase-mpnet-base-v2"
    assert (
        logs.evaluator_of("/scratch/x/MultipleNegativesRankingLoss/hpo_scale_70/checkpoint-1186") == "op-sbert-scale70"
    )
    assert logs.system_of(log.header["CANDIDATE_CSV"]) == ("Qwen3-8B explicit", "prompting-baseline", None)
    # the llama step files are named qwen2.5-1.5b-im-*.csv: the folder says what they are
    assert (
        logs.system_of("/home/zczlyf7/Overton-PPO/steps_results/llama/90steps/qwen2.5-1.5b-im-5p.csv")[0]
        == "OP-GRPO Llama-3.2-3B step 90"
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (synthetic(rel="0.7600"), "footer relative accuracy"),
        (synthetic(hit=2), "footer hit_all"),
        (synthetic(total=3), "footer total"),
        (synthetic(footer=False), "no totals (aborted run after 2 rows)"),
        (synthetic().replace("Matched 1/2 → ✗", "Matched 0/2 → ✗"), "row 1: Matched 0 but 1 match lines"),
        (synthetic().replace("Cand(1):", "Cand(4):"), "row 1: Cand(4) but 1 listed"),
        (synthetic().replace("      THRESHOLD : 0.75\n", ""), "header has no THRESHOLD"),
        (HEADER + FOOTER.format(a="0", h=0, t=0, r="0"), "no rows"),
    ],
)
def test_a_log_that_does_not_reproduce_its_totals_is_refused(text, reason):
    assert logs.check_log(logs.parse_log(text)).startswith(reason)


def test_another_format_is_a_one_line_error():
    with pytest.raises(logs.LogFormatError, match="not an authors' evaluation log"):
        logs.parse_log("label,total\n5p,300\n", "eval_st.csv")


def test_summary_csv_disagreeing_with_its_log():
    log = logs.parse_log(synthetic())
    ok = {
        "summary_csv": "s.csv",
        "total": "2",
        "hit_all": "1",
        "relative_accuracy": "0.75",
        "candidate_csv": log.header["CANDIDATE_CSV"],
    }
    assert logs.check_summary(log, [ok]) == ""
    assert "relative_accuracy" in logs.check_summary(log, [{**ok, "relative_accuracy": "0.7501"}])
    assert "hit_all" in logs.check_summary(log, [{**ok, "hit_all": "2"}])
    assert "candidate_csv" in logs.check_summary(log, [{**ok, "candidate_csv": "/other.csv"}])


def _entry(content: bytes, name: str = "eval_logs_steps/eval_5p_0101_000000.log") -> sources.ManifestEntry:
    return sources.ManifestEntry(
        name, Path(name).name + ".gz", git_blob_sha1(content), hashlib.sha256(content).hexdigest(), len(content)
    )


def test_local_copy_is_hash_checked(tmp_path):
    good = synthetic().encode()
    entry = _entry(good)
    folder = tmp_path / "logs" / "eval_logs_steps"
    folder.mkdir(parents=True)
    cfg = load_profile("tiny")
    cfg = replace(cfg, authors=replace(cfg.authors, local_dir=str(tmp_path / "logs"), download=False))
    (folder / entry.stored_as).write_bytes(gzip.compress(good))
    assert sources.read_source(entry, cfg) == good
    (folder / entry.stored_as).write_bytes(gzip.compress(good.replace(b"0.912", b"0.913")))
    with pytest.raises(DataIntegrityError, match="eval_5p_0101_000000.log"):
        sources.read_source(entry, cfg)


def test_download_refuses_a_tampered_file_and_caches_nothing(tmp_path, monkeypatch):
    good = synthetic().encode()
    entry = _entry(good)
    cfg = load_profile("tiny")
    commit = cfg.authors.commit
    remote = tmp_path / "remote" / commit / sources.UPSTREAM_DIR / entry.upstream_path
    remote.parent.mkdir(parents=True)
    remote.write_bytes(good + b"tampered")
    monkeypatch.setenv("OPGRPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(sources.ENV_AUTHORS_LOGS, raising=False)
    cfg = replace(cfg, authors=replace(cfg.authors, local_dir=None, base_url=(tmp_path / "remote").as_uri()))
    with pytest.raises(DataIntegrityError, match="git blob sha1|sha256"):
        sources.read_source(entry, cfg)
    assert not any((tmp_path / "cache").rglob("*.log")), "a file that failed its hash was cached"
    remote.write_bytes(good)
    assert sources.read_source(entry, cfg) == good
    assert len(list((tmp_path / "cache").rglob("*.log"))) == 1  # verified, then cached


class CountingEncoder:
    """Deterministic unit vectors from a hash of the text; records every sentence it is asked to encode."""

    def __init__(self):
        self.seen: list[str] = []

    def encode(self, sentences):
        self.seen += list(sentences)
        out = []
        for s in sentences:
            rng = np.random.default_rng(int(hashlib.md5(s.encode()).hexdigest()[:8], 16))
            v = rng.normal(size=8)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)


def test_rescore_encodes_each_distinct_sentence_once_and_matches_greedily():
    from opgrpo_lib.reward import greedy_matches

    refs, cands = ["r one", "r two"], ["c one", "c two", "r one"]
    items = [("A", "5p", 0, refs, cands), ("B", "5p", 0, refs, cands[:2]), ("A", "5p", 1, ["r one"], ["r one"])]
    enc = CountingEncoder()
    per = rescore.rescore_sbert(items, enc, 0.5, "fake")
    assert sorted(enc.seen) == sorted({*refs, *cands})  # 4 distinct sentences, each once
    e = CountingEncoder()
    for (_s, _sp, _r, rr, cc), k in zip(items, per["k"]):
        assert k == greedy_matches(e.encode(rr).astype(float) @ e.encode(cc).astype(float).T, 0.5)
    assert per.loc[2, "k"] == 1 and per.loc[2, "hit_all"]  # identical sentence: cosine 1


def test_paired_claims_on_common_situations():
    rows = pd.DataFrame(
        {
            "system": ["a"] * 4 + ["b"] * 3,
            "split": ["5p", "5p", "10p", "10p", "5p", "10p", "10p"],
            "opv2_row": [0, 1, 0, 1, 0, 0, 1],
            "ratio": [1, 0.5, 1, 1, 0.5, 0.5, 0.0],
            "evaluator": "e",
            "threshold": 0.7,
        }
    )
    res = authors_claims.paired_claims(rows, [("a", "b")], reps=200)
    pooled = res[res.split == "5p+10p"].iloc[0]
    assert pooled["n"] == 3  # 5p row 1 has no partner
    assert pooled["diff"] == pytest.approx((1 + 1 + 1) / 3 - (0.5 + 0.5 + 0) / 3)
    assert pooled["ci_low"] <= pooled["diff"] <= pooled["ci_high"]


@need_shared
def test_real_logs_parse_verify_and_regenerate_the_logged_cells():
    cfg = load_profile("tiny")
    cfg = replace(cfg, authors=replace(cfg.authors, max_logs=8))
    ev = evidence.load_evidence(cfg)
    assert len(ev.logs) == 8 and ev.logs.verified.sum() >= 6
    assert ev.rows["refs_as_ours"].all()  # the logged references are exactly our reference splitting
    cells = authors_claims.cells(ev.rows, reps=100)
    if LOGGED.exists():
        logged = pd.read_csv(LOGGED, keep_default_na=False)
        logged = logged[logged.log_file != ""]
        m = cells.assign(version=cells.version.fillna("")).merge(
            logged,
            left_on=["system", "split", "evaluator", "threshold", "version"],
            right_on=["system", "split", "sbert", "threshold", "run"],
            suffixes=("", "_logged"),
        )
        assert len(m) == len(cells) > 0
        assert (m.n == m.n_logged).all() and (m.hit_all == m.hit_all_logged).all()
        assert np.allclose(m.relative_accuracy.round(6), m.relative_accuracy_logged, atol=1e-9)


@need_shared
def test_aborted_real_log_is_listed_with_its_reason():
    cfg = load_profile("tiny")
    entry = next(e for e in sources.manifest() if e.upstream_path.endswith("eval_6p_0816_164806.log"))
    log = logs.parse_log(sources.read_source(entry, cfg).decode(), entry.upstream_path)
    assert logs.check_log(log) == "no totals (aborted run after 168 rows)"


def _copy_logs(dest: Path, n_logs: int) -> list:
    """The summary CSVs and the first ``n_logs`` logs of the shared folder, copied (the manifest entries)."""
    entries = sources.manifest()
    logs_ = sorted((e for e in entries if e.is_log), key=lambda e: e.upstream_path)[:n_logs]
    wanted = [e for e in entries if not e.is_log] + logs_
    for e in wanted:
        rel = Path(e.upstream_path).parent / e.stored_as
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED / rel, dest / rel)
    return logs_


@need_shared
def test_step_08_refuses_a_tampered_log_before_it_starts(tmp_path, monkeypatch):
    """A log that fails its hash stops step 08 with one line naming it, before the step is marked running: the
    finished step's fingerprint, manifest and results stay as they were."""
    from opgrpo_lib.runs import run_paths
    from opgrpo_lib.steps import authors as step08

    logs_ = _copy_logs(tmp_path / "logs", 2)
    monkeypatch.setenv(sources.ENV_AUTHORS_LOGS, str(tmp_path / "logs"))
    monkeypatch.setenv("OPGRPO_CACHE", str(tmp_path / "cache"))
    cfg = load_profile("tiny")
    cfg = replace(cfg, authors=replace(cfg.authors, max_logs=2, download=False, rescore_encoders=[], rescore_nli=None))
    paths = run_paths(cfg, tmp_path / "run")
    step08.run(cfg, paths, progress=False)
    assert json.loads((paths.root / "authors" / "fingerprint.json").read_text())["status"] == "finished"
    before = {p: p.read_bytes() for p in paths.root.rglob("*") if p.is_file()}
    assert (paths.results / "authors" / "cells.csv") in before
    victim = tmp_path / "logs" / Path(logs_[-1].upstream_path).parent / logs_[-1].stored_as
    text = gzip.decompress(victim.read_bytes())
    victim.write_bytes(gzip.compress(text.replace(b"sim=0.", b"sim=1.", 1)))
    with pytest.raises(DataIntegrityError) as exc:
        step08.run(cfg, paths, progress=False)
    message = str(exc.value)
    assert "\n" not in message and Path(logs_[-1].upstream_path).name in message and "!= pinned" in message
    assert {p: p.read_bytes() for p in paths.root.rglob("*") if p.is_file()} == before


def test_step_08_is_not_keyed_over_the_evaluation_stack():
    """Step 08 re-scores with SBERT and NLI through ``reward`` / ``nli``; it calls no generation, training, judge or
    step-06 code, so an edit there does not rerun it (it does use ``stats``)."""
    from opgrpo_lib.keys import code_closure
    from opgrpo_lib.registry import STEPS

    closure = set(code_closure(STEPS["authors"].module))
    assert {"steps.authors", "authors.evidence", "authors.rescore", "nli", "reward", "stats"} <= closure
    forbidden = {"evaluate", "judge", "generate", "train", "lm", "estimator", "coverage", "validation", "sweep"}
    forbidden |= {"figures", "figures_gpu", "figures_authors", "plots", "authors.compare", "gpu", "explain"}
    assert not forbidden & closure, sorted(forbidden & closure)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "opgrpo_lib.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT
    )


@need_shared
def test_compare_cli_end_to_end_with_a_tiny_encoder(tmp_path):
    test5 = pd.read_csv(OPV2 / "test_5p.csv")
    rows = [{"prompt": p, "out": a.replace("\n", " ")} for p, a in zip(test5.prompt[:3], test5.answer[:3])]
    rows += [
        {"prompt": test5.prompt[3], "out": ""},
        {"prompt": "not a situation", "out": "x"},
        {"prompt": test5.prompt[4], "out": "a"},
        {"prompt": test5.prompt[4], "out": "b"},
    ]
    res = _compare_cli(tmp_path, rows, "--evaluator", "tiny:encoder")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "3 OP-V2 situations matched" in res.stdout
    assert "'duplicate_prompt_rows': 2, 'empty_outputs': 1, 'not_opv2_prompts': 1" in res.stdout
    table = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert not table.empty and (table.n == 3).all() and (tmp_path / "cmp" / "compare_figure.png").exists()
    # no matching prompt: one line, no traceback
    bad = _compare_cli(tmp_path, [{"prompt": "nothing here", "out": "x"}], "--evaluator", "tiny:encoder")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "none of its 1 rows has a prompt that is an OP-V2 test situation" in bad.stderr


def _compare_cli(tmp_path: Path, rows: list[dict[str, str]], *extra: str) -> subprocess.CompletedProcess:
    pd.DataFrame(rows).to_csv(tmp_path / "outs.csv", index=False)
    return _cli(
        "compare",
        "--profile",
        "tiny",
        "--candidates",
        str(tmp_path / "outs.csv"),
        "--candidate-column",
        "out",
        "--out",
        str(tmp_path / "cmp"),
        "--no-profile-systems",
        *extra,
    )


@need_shared
@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        (["a", "b"], "each of its 2 rows repeats the prompt of another row"),
        (["", " "], "column 'out' is empty in each of its 2 rows with a unique prompt"),
    ],
)
def test_compare_says_why_no_row_is_left(tmp_path, outputs, message):
    test5 = pd.read_csv(OPV2 / "test_5p.csv")
    prompts = [test5.prompt[0]] * 2 if outputs[0] == "a" else list(test5.prompt[:2])
    res = _compare_cli(
        tmp_path, [{"prompt": p, "out": o} for p, o in zip(prompts, outputs)], "--evaluator", "tiny:encoder"
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and str(tmp_path / "outs.csv") in res.stderr
    assert message in res.stderr
    assert not (tmp_path / "cmp").exists()


@need_shared
def test_compare_refuses_a_bad_evaluator_before_reading_the_logs(tmp_path, monkeypatch):
    from opgrpo_lib.authors import compare as compare_mod

    test5 = pd.read_csv(OPV2 / "test_5p.csv")
    rows = [{"prompt": p, "out": a} for p, a in zip(test5.prompt[:2], test5.answer[:2])]
    res = _compare_cli(tmp_path, rows, "--evaluator", str(tmp_path / "no-such-model"))
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert f"--evaluator {tmp_path / 'no-such-model'}: cannot be loaded here" in res.stderr
    assert not (tmp_path / "cmp").exists()

    def no_logs(*_a, **_k):
        raise AssertionError("the logs were read before the evaluators were checked")

    monkeypatch.setattr(compare_mod, "load_evidence", no_logs)
    with pytest.raises(compare_mod.CompareInputError, match="--evaluator tiny:no-such-thing"):
        compare_mod.compare(
            load_profile("tiny"), tmp_path / "outs.csv", "out", ["tiny:no-such-thing"], tmp_path / "cmp"
        )
    assert not (tmp_path / "cmp").exists()


def test_an_evaluator_folder_is_named_by_its_model(tmp_path):
    from opgrpo_lib.authors.rescore import evaluator_name
    from opgrpo_lib.models import local_path

    assert evaluator_name("sentence-transformers/all-MiniLM-L6-v2") == "all-MiniLM-L6-v2"
    assert evaluator_name("tiny:encoder") == "tiny:encoder"
    (tmp_path / "my-encoder").mkdir()
    assert evaluator_name(str(tmp_path / "my-encoder") + "/") == "my-encoder"
    minilm = local_path("sentence-transformers/all-MiniLM-L6-v2")
    if minilm is None:
        pytest.skip("the offline MiniLM package is not installed")
    assert minilm.name == "model" and evaluator_name(str(minilm)) == "all-MiniLM-L6-v2"


def test_compare_figure_fits_in_the_systems_colours():
    from opgrpo_lib.authors.compare import fig_compare
    from opgrpo_lib.plots import SYSTEM_COLORS

    systems = ["OP-GRPO Qwen2.5-3B im-rewarddown", "ModPlural raw", "Qwen3-8B explicit", "ours (cpu): op_grpo"]
    table = pd.DataFrame(
        [
            {
                "evaluator": e,
                "threshold": 0.7,
                "a": "mine",
                "b": b,
                "split": "all common",
                "n": 3,
                "score_a": 0.5,
                "score_b": 0.2 + 0.1 * i,
                "diff": 0.3 - 0.1 * i,
                "ci_low": -0.1,
                "ci_high": 0.6,
            }
            for e in ("all-MiniLM-L6-v2", "all-mpnet-base-v2")
            for i, b in enumerate(systems)
        ]
    )
    fig = fig_compare(table, "mine", 3)
    _assert_readable(fig)
    assert len(fig.legends) == 1 and len([ax for ax in fig.axes if ax.get_xlabel()]) == 2
    colours = {matplotlib_colors(b.get_facecolor()) for b in fig.axes[0].patches}
    assert {matplotlib_colors(SYSTEM_COLORS["op_grpo"]), matplotlib_colors(SYSTEM_COLORS["modplural"])} <= colours
    plt_close(fig)


@pytest.mark.network
def test_paraphrase_mpnet_reproduces_the_authors_base_sbert_logs():
    """On a machine with the hub: the authors' base evaluator re-run on their logged sentences gives each logged
    sim= to ±0.001 and each cell to ±0.002."""
    cfg = load_profile("cpu")
    entry = next(e for e in sources.manifest() if e.upstream_path.endswith("eval_logs_steps/eval_5p_0830_160653.log"))
    log = logs.parse_log(sources.read_source(entry, cfg).decode(), entry.upstream_path)
    enc = SentenceEncoder("sentence-transformers/paraphrase-mpnet-base-v2", device="cpu")
    items = [("s", "5p", r.row, r.references, r.candidates) for r in log.rows]
    per = rescore.rescore_sbert(items, enc, float(log.header["THRESHOLD"]), "paraphrase-mpnet-base-v2")
    for r in log.rows[:50]:
        er, ec = enc.encode(r.references), enc.encode(r.candidates)
        for a, c, sim in r.matches:
            assert abs(float(er[a - 1] @ ec[c - 1]) - sim) <= 0.001 + 5e-4  # printed to 3 decimals
    assert abs(per["ratio"].mean() - np.mean([r.k / r.n for r in log.rows])) <= 0.002


@need_shared
@pytest.mark.slow
def test_rescore_benchmark_reports_identical_counts():
    import json as _json

    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "authors_rescore.py"),
            "--logs",
            "2",
            "--rows",
            "3",
            "--encoder",
            "tiny:encoder",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    res = _json.loads(out.stdout.strip().splitlines()[-1])
    assert res["identical"] is True and res["rows"] == 6
    assert res["distinct_sentences_encoded"] < res["sentences_per_log_loop"]


def _claims_frame(evaluators: list[str], pairs: list[tuple[str, str]], pooled: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for ev in evaluators:
        for a, b in pairs:
            for split in ["5p", "10p", "5p+10p", "all common"] if pooled else ["6p", "7p", "all common"]:
                d = float(rng.uniform(-0.2, 0.6))
                rows.append(
                    {
                        "evaluator": ev,
                        "threshold": 0.7,
                        "a": a,
                        "b": b,
                        "split": split,
                        "n": 600,
                        "diff": d,
                        "ci_low": d - 0.1,
                        "ci_high": d + 0.1,
                    }
                )
    return pd.DataFrame(rows)


def _assert_readable(fig) -> None:
    """Every drawn text inside the canvas at the saved dpi and >= 9 pt; no legend over an axes."""
    from matplotlib.legend import Legend
    from matplotlib.text import Text

    fig.set_dpi(130)  # the dpi of figures.save_figure: layout and text extents as saved
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    hidden = set()  # tick labels outside the view limits exist but are not drawn
    for ax in fig.axes:
        for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = sorted(lim)
            hidden |= {id(t.label1) for t in axis.get_major_ticks() if not lo - 1e-9 <= t.get_loc() <= hi + 1e-9}
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in hidden]
    assert texts
    box = fig.bbox
    for t in texts:
        e = t.get_window_extent(renderer)
        assert t.get_fontsize() >= 9, t.get_text()
        assert e.x0 >= box.x0 - 1 and e.x1 <= box.x1 + 1 and e.y0 >= box.y0 - 1 and e.y1 <= box.y1 + 1, t.get_text()
    for leg in fig.findobj(Legend):
        for ax in fig.axes:
            assert not leg.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))


def test_authors_figures_fit_at_their_saved_size_in_the_systems_colours():
    from opgrpo_lib import figures_authors as fa
    from opgrpo_lib.plots import SYSTEM_COLORS

    best = "OP-GRPO Qwen2.5-3B im-rewarddown"
    pairs = [
        (best, "ModPlural raw"),
        (best, "Qwen3-8B explicit"),
        ("OP-GRPO Llama-3.2-3B step 150", "OP-GRPO Llama-3.2-3B step 0"),
    ]
    side = _claims_frame(["all-MiniLM-L6-v2", "all-mpnet-base-v2"], pairs)  # same comparisons: side by side
    stacked = pd.concat(
        [
            _claims_frame(["op-sbert-scale70"], pairs[:2]),
            _claims_frame(["op-sbert-scale70"], [(best, "Qwen2.5-1.5B-Instruct explicit")], pooled=False),
            _claims_frame(["paraphrase-mpnet-base-v2"], pairs[2:]),
        ]
    )
    for claims, panels in ((side, 2), (stacked, 2)):
        fig = fa.fig_claims(claims, "Headline claims")
        _assert_readable(fig)
        axes = [ax for ax in fig.axes if ax.get_title()]
        assert len(axes) == panels and all("evaluator" in ax.get_title() for ax in axes)
        ticks = [t.get_text() for ax in axes for t in ax.get_yticklabels() if t.get_text()]
        assert "vs ModPlural raw" in ticks and "OP-GRPO Llama-3.2-3B: step 150 − step 0" in ticks
        assert best in fig.get_suptitle() and not any(best in t for t in ticks)
        colours = {matplotlib_colors(line.get_color()) for ax in axes for line in ax.get_lines()}
        assert matplotlib_colors(SYSTEM_COLORS["modplural"]) in colours
        labels = [t.get_text() for ax in axes for t in ax.texts]
        assert any(t.startswith("+") or t.startswith("-") for t in labels)  # the values are written out
        plt_close(fig)
    assert "(pooled 6p, 7p; n = 600)" in " ".join(
        t.get_text() for ax in fa.fig_claims(stacked, "x").axes for t in ax.get_yticklabels()
    )
    plt_close()
    length = pd.DataFrame(
        [
            {"system": s, "split": sp, "candidate_words_mean": w, "candidate_sentences_mean": 9.0}
            for s, w in (
                (best, 300.0),
                ("ModPlural raw", 800.0),
                ("A rather long system name of the authors (summary) (run B)", 250.0),
            )
            for sp in ("5p", "10p")
        ][:-1]
    )
    fig = fa.fig_length(length)
    _assert_readable(fig)
    bars = {b.get_width(): matplotlib_colors(b.get_facecolor()) for b in fig.axes[0].patches}
    assert bars[300.0] == matplotlib_colors(SYSTEM_COLORS["op_grpo"])
    assert "not logged" in [t.get_text() for ax in fig.axes for t in ax.texts]
    plt_close(fig)


def matplotlib_colors(c) -> str:
    from matplotlib.colors import to_hex

    return to_hex(c)


def plt_close(fig=None) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig if fig is not None else "all")
