"""The Chinese arm: CJK share and sentence splitting by hand, the per-row translation checks, the evaluator
calibration on cases with a known answer, the profile checks, and the translate step on the tiny fixture."""

import dataclasses
import json
import zlib

import numpy as np
import pandas as pd
import pytest

from opgrpo_lib import chinese
from opgrpo_lib.chinese import (
    FixtureTranslator,
    calibrate,
    check_rows,
    cohen_kappa,
    load_translations,
    read_parallel,
    split_sentences_zh,
    translate_rows,
    zh_coverage,
    zh_share,
)
from opgrpo_lib.config import REPO_ROOT, ConfigError, chinese_arm, load_profile
from opgrpo_lib.text import eval_candidate_sentences

FIXTURE = REPO_ROOT / "opgrpo_lib" / "resources" / "zh_parallel.jsonl"


class NgramEncoder:
    """Hashed character bi- and trigrams, L2-normalised: identical texts score 1, unrelated ones near 0."""

    def encode(self, sentences):
        out = np.zeros((len(sentences), 512), dtype=np.float32)
        for i, s in enumerate(sentences):
            for gram in [s[k : k + n] for n in (2, 3) for k in range(len(s) - n + 1)]:
                out[i, zlib.crc32(gram.encode()) % 512] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


class SquashedEncoder:
    """The n-gram embedding beside a constant direction: cosine a*c + (1-a), a monotone squash of the n-gram cosine
    into a narrow high range (as E5's cosines sit)."""

    def encode(self, sentences):
        base = NgramEncoder().encode(sentences)
        const = np.ones((len(sentences), 1), dtype=np.float32)
        return np.hstack([base * np.sqrt(0.3), const * np.sqrt(0.7)])


class ConstantEncoder:
    def encode(self, sentences):
        return np.ones((len(sentences), 4), dtype=np.float32) / 2.0


def test_zh_share_counts_cjk_among_letters_without_layout_tags():
    assert zh_share("<core perspectives>从关怀的角度来看</core perspectives>") == 1.0  # the tags are not letters
    assert zh_share("AI 很重要") == pytest.approx(3 / 5)  # 3 CJK of 5 letters
    assert zh_share("<summary>Summary only</summary>") == 0.0
    assert zh_share("2024，。！") == 0.0 and zh_share("") == 0.0  # digits and punctuation are not letters


def test_split_sentences_zh_mixed_punctuation_and_newlines():
    text = "关怀很重要。我们要帮忙！Is it fair? 也许；价格是3.5元.下一句\n<summary>\n总结\n</summary>"
    assert split_sentences_zh(text) == [
        "关怀很重要。", "我们要帮忙！", "Is it fair?", "也许；", "价格是3.5元.", "下一句", "<summary>", "总结", "</summary>",
    ]  # fmt: skip
    assert split_sentences_zh("他说：“好。”然后走了。") == ["他说：“好。”", "然后走了。"]  # the quote stays
    assert split_sentences_zh("No end mark") == ["No end mark"] and split_sentences_zh(" \n") == []
    # the SBERT protocol keeps the authors' candidate splitter: it already splits on 。！？
    assert eval_candidate_sentences("第一句。第二句！第三句？") == ["第一句", "第二句", "第三句"]


def test_zh_coverage_matches_reference_sentences_one_to_one():
    refs = [
        {"name": "关怀", "explanation": "父母想保护孩子。"},
        {"name": "隐私", "explanation": "青少年有权拥有私人想法。"},
    ]
    cand = "从关怀的角度来看，父母想保护孩子。今天天气很好。"
    per = zh_coverage([refs, refs], [cand, None], NgramEncoder(), 0.9)
    assert per[["matched", "n_references", "n_candidate_sentences"]].values.tolist() == [[1, 2, 2]]  # None left out


def _translated(**changes) -> pd.DataFrame:
    """One fixture situation translated by the fixture translator, with ``changes`` applied to its row."""
    rows = chinese.source_rows(read_parallel(FIXTURE), ["5p"], 1)
    out = translate_rows(rows, FixtureTranslator(read_parallel(FIXTURE)))
    for key, value in changes.items():
        out.at[0, key] = value
    return out


def test_each_check_drops_and_counts_its_row():
    good = _translated()
    kept, checks, report = check_rows(good, NgramEncoder(), 0.8, 0.6)
    assert len(kept) == 1 and report["kept"] == 1 and checks["back_translation"][0] == pytest.approx(1.0)
    refs = [dict(p) for p in good.at[0, "references_zh"]]
    refs[1]["explanation"] = None  # a perspective with no translation: the count drifts
    english = [{"name": p["name"], "explanation": p["explanation"]} for p in good.at[0, "references"]]
    cases = {
        "perspective_count": _translated(references_zh=refs),
        "zh_share": _translated(references_zh=english, situation_zh=good.at[0, "prompt"]),  # left in English
        "back_translation": _translated(situation_back="Completely unrelated words about the weather in spring."),
        "situation_untranslated": _translated(situation_zh=None),
    }
    for reason, frame in cases.items():
        kept, checks, report = check_rows(frame, NgramEncoder(), 0.8, 0.6)
        assert kept.empty and checks["reason"][0] == reason, reason
        assert report["dropped"][reason] == 1 and sum(report["dropped"].values()) == 1, reason


def test_load_translations_refuses_count_drift(tmp_path):
    refs = [{"name": "Care", "explanation": "A."}, {"name": "Duty", "explanation": "B."}]
    frame = pd.DataFrame(
        {
            "prompt": ["S"],
            "split": ["5p"],
            "references": [refs],
            "situation_zh": ["情境"],
            "references_zh": [[{"name": "关怀", "explanation": "甲。"}]],
        }
    )
    (tmp_path / "translate").mkdir()
    frame.to_parquet(tmp_path / "translate" / "zh.parquet")
    with pytest.raises(ValueError, match="1 Chinese perspectives for 2 English ones"):
        load_translations(tmp_path)
    with pytest.raises(FileNotFoundError, match="opgrpo translate"):
        load_translations(tmp_path / "elsewhere")


def _pairs() -> pd.DataFrame:
    """Parallel pairs over 8 situations: a reference with a close paraphrase (a match) and with an unrelated
    sentence (no match); the Chinese side is the English text itself."""
    rows = []
    for k in range(8):
        ref = f"In the perspective of value {k}, people care about honesty and trust number {k}."
        for cand in (ref.replace("people", "persons"), f"The weather {k} was sunny over the hills."):
            rows.append(
                {
                    "situation": f"s{k}",
                    "candidate_en": cand,
                    "reference_en": ref,
                    "candidate_zh": cand,
                    "reference_zh": ref,
                }
            )
    return pd.DataFrame(rows)


def test_calibration_known_answers():
    pairs, enc = _pairs(), NgramEncoder()
    same = calibrate(enc, enc, pairs, 0.7, seed=1)  # the same evaluator: perfect agreement at the same threshold
    assert same["zh_threshold"] == 0.7 and same["calibration"]["kappa"] == 1.0 and same["heldout"]["kappa"] == 1.0
    assert same["validated"] and same["heldout"]["en_matches"] == 4 and same["heldout"]["pairs"] == 8
    squashed = calibrate(enc, SquashedEncoder(), pairs, 0.7, seed=1)  # monotone squash: same decisions, higher cut
    assert squashed["heldout"]["kappa"] == 1.0 and squashed["zh_threshold"] > 0.7
    blind = calibrate(enc, ConstantEncoder(), pairs, 0.7, seed=1, min_kappa=0.6)  # sees nothing: flagged
    assert not blind["validated"] and "unvalidated" in blind["reason"]
    assert not calibrate(enc, enc, pairs.head(2), 0.7)["validated"]  # one situation cannot be split in halves


def test_cohen_kappa_by_hand():
    a, b = np.array([1, 1, 0, 0, 1, 0]), np.array([1, 0, 0, 0, 1, 1])  # po = 4/6, pe = 1/2
    assert cohen_kappa(a, b) == pytest.approx((4 / 6 - 0.5) / 0.5)
    assert cohen_kappa(np.ones(3), np.ones(3)) is None


def test_profile_checks_of_the_chinese_arm():
    english = "sentence-transformers/all-mpnet-base-v2"
    with pytest.raises(
        ConfigError, match=r"translate.zh_evaluator: .*\(models.eval_encoder\) is not a known multilingual"
    ):
        load_profile("tiny", {"models.eval_encoder": english, "translate.zh_evaluator": english})
    with pytest.raises(ConfigError, match="translate.zh_evaluator"):
        load_profile("paper", {"translate.zh_evaluator": "sentence-transformers/paraphrase-mpnet-base-v2"})
    with pytest.raises(ConfigError, match="translate.model: .* translates only its own English"):
        load_profile("tiny", {"translate.source": "eval"})
    with pytest.raises(ConfigError, match="translate.source: 'nowhere.jsonl': no such file"):
        load_profile("tiny", {"translate.source": "nowhere.jsonl", "translate.model": "Qwen/Qwen3-8B"})
    with pytest.raises(ConfigError, match="translate.min_kappa"):
        load_profile("tiny", {"translate.min_kappa": 1.5})
    with pytest.raises(ConfigError, match=r"translate.zh_nli: .*\(models.nli\) is not a known multilingual") as err:
        load_profile("paper", {"translate.zh_nli": load_profile("paper").models.nli})  # the English MNLI model
    assert "\n" not in str(err.value)
    assert load_profile("paper", {"translate.zh_nli": None}).translate.zh_nli is None  # Chinese NLI off
    ok = load_profile("paper", {"translate.zh_evaluator": "intfloat/multilingual-e5-small"})
    assert chinese_arm(ok) and not chinese_arm(load_profile("cpu"))
    load_profile("cpu", {"translate.zh_evaluator": "sentence-transformers/all-MiniLM-L6-v2"})  # off: not checked


def test_chat_prompt_turns_thinking_off_where_the_template_accepts_it():
    class Qwen3Like:
        def apply_chat_template(self, conv, **kw):
            return f"{conv[0]['content']}|thinking={kw.get('enable_thinking', 'unset')}"

    class Strict:
        def apply_chat_template(self, conv, tokenize, add_generation_prompt):
            return conv[0]["content"]

    assert chinese.chat_prompt(Qwen3Like(), "hi") == "hi|thinking=False"
    assert chinese.chat_prompt(Strict(), "hi") == "hi"


def test_llm_translator_translates_each_text_once_and_refuses_clipped(monkeypatch):
    calls = []

    def fake(lm, prompts, max_new_tokens, temperature, chat):
        calls.append(prompts)
        assert temperature == 0.0 and not chat  # greedy, the prompt already through the chat template
        outs = ["<think>\n</think>\n\n关怀" if "Care" in p else "半句" for p in prompts]
        return outs, ["Duty" in p for p in prompts]

    monkeypatch.setattr("opgrpo_lib.lm.sample_clipped", fake)

    class Tok:
        def apply_chat_template(self, conv, **kw):
            return conv[0]["content"]

    lm = type("LM", (), {"tokenizer": Tok()})()
    got = chinese.LLMTranslator(lm, 16, batch_size=8).translate(["Care", "Duty", "Care", ""], "zh")
    assert got == ["关怀", None, "关怀", None] and len(calls) == 1 and len(calls[0]) == 2


def test_translate_step_on_the_tiny_fixture_drops_exactly_the_broken_row(tmp_path):
    from opgrpo_lib.runs import run_paths
    from opgrpo_lib.steps import translate

    cfg = load_profile("tiny")
    paths = run_paths(cfg, tmp_path / "run")
    out = translate.run(cfg, paths)
    fixture = read_parallel(FIXTURE)
    broken = [
        p for p, refs in zip(fixture["prompt"], fixture["references"]) if any(not r.get("name_zh") for r in refs)
    ]
    assert len(broken) == 1
    kept = load_translations(paths.root)
    assert sorted(kept["prompt"]) == sorted(set(fixture["prompt"]) - set(broken))
    assert [len(r) for r in kept["references_zh"]] == [len(r) for r in kept["references"]]
    report = out["report"]
    assert report["rows"] == 6 and report["kept"] == 5 and report["dropped"]["perspective_count"] == 1
    assert sum(report["dropped"].values()) == 1 and report["per_split"]["10p"] == {"rows": 3, "kept": 2}
    assert {"zh_threshold", "validated"} <= set(report["calibration"])
    published = (paths.results / "translate" / "report.json").read_text()
    assert not any(p in published or p[:20] in published for p in fixture["prompt"])  # counts only, no text
    local = json.loads((paths.root / "translate" / "report.json").read_text())
    assert [(r["prompt"], r["reason"]) for r in local["dropped_rows"]] == [(broken[0], "perspective_count")]
    again = translate.run(cfg, paths)  # same settings: read back, nothing recomputed
    assert "checks" not in again and again["report"]["kept"] == 5


@pytest.mark.slow
def test_llm_path_on_the_evaluation_situations_drops_and_counts_what_the_tiny_lm_cannot_translate(tmp_path, opv2_dir):
    """The paper's path (the evaluation situations, an LLM through lm.load) with the tiny LM, which writes no
    Chinese: the first rows of each split in evaluation order, every row dropped and counted, nothing kept."""
    from opgrpo_lib.data import load_prepared
    from opgrpo_lib.generate import eval_items
    from opgrpo_lib.runs import run_paths
    from opgrpo_lib.steps import data, translate

    over = {
        "translate.source": "eval",
        "translate.model": "tiny:causal-lm",
        "translate.max_new_tokens": 6,
        "translate.split_rows": 2,
        "translate.splits": ["5p", "gt10p"],
    }
    cfg = load_profile("tiny", over)
    paths = run_paths(cfg, tmp_path / "run")
    data.run(cfg, paths)
    out = translate.run(cfg, paths)
    _, ev = load_prepared(paths.data)
    gen = dataclasses.replace(cfg.generate, splits=["5p", "gt10p"], split_rows={}, rows_per_split=2)
    assert list(zip(out["checks"]["prompt"], out["checks"]["split"])) == eval_items(ev, gen)
    report = out["report"]
    assert report["rows"] == 4 and report["kept"] == 0 and sum(report["dropped"].values()) == 4
    assert load_translations(paths.root).empty and not report["calibration"]["validated"]


class OverlapNLI:
    """P(entailment): share of the premise's characters found in the hypothesis."""

    def entailment(self, premises, hypotheses, progress=False):
        return np.array([len(set(p) & set(h)) / len(set(p)) for p, h in zip(premises, hypotheses)])


class NeverNLI:
    def entailment(self, premises, hypotheses, progress=False):
        return np.zeros(len(premises))


def test_nli_agreement_known_answers():
    pairs = chinese.calibration_pairs(load_translations_fixture())
    assert {"premise_en", "premise_zh"} <= set(pairs.columns)
    same = chinese.nli_agreement(OverlapNLI(), OverlapNLI(), pairs)
    assert same["en_entailed"] >= pairs["same"].sum() and same["pairs"] == len(pairs)
    assert 0 < same["agreement"] <= 1 and same["situations"] == pairs["situation"].nunique()
    blind = chinese.nli_agreement(OverlapNLI(), NeverNLI(), pairs)
    assert not blind["validated"] and "unvalidated" in blind["reason"] and blind["zh_entailed"] == 0
    assert not chinese.nli_agreement(OverlapNLI(), OverlapNLI(), pairs.iloc[:0])["validated"]


def load_translations_fixture() -> pd.DataFrame:
    """The fixture's situations as the translate step keeps them (translated by the fixture; no similarity bar)."""
    rows = chinese.source_rows(read_parallel(FIXTURE), ["5p", "10p"], 100)
    kept, _, _ = check_rows(translate_rows(rows, FixtureTranslator(read_parallel(FIXTURE))), NgramEncoder(), 0.0, 0.0)
    return kept
