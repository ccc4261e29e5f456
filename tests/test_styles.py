"""Prompt styles: the no-perspective-words rule on every template, the profile checks, the empty system message as the
chat template renders it, and the pre-registered statistics on a hand-made example."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from opgrpo_lib import styles as st
from opgrpo_lib.config import ConfigError, load_profile
from opgrpo_lib.lm import chat_prompts
from opgrpo_lib.prompts import STYLES, perspective_words_in, style_template

# Written out again here (not imported): the rule a template must pass, English and Chinese.
BANNED = re.compile(
    r"perspective|viewpoint|point of view|points of view|\bsides?\b|stance|angle|standpoint|视角|观点|角度|立场|方面|各方|看法",
    re.I,
)


@pytest.mark.parametrize("style", STYLES, ids=[s.name for s in STYLES])
def test_every_template_asks_without_naming_perspectives(style):
    for text in (style.en, style.zh):
        assert text.count("{situation}") == 1
        assert not BANNED.search(text.replace("{situation}", "")), (style.name, text)
        assert not perspective_words_in(text)


def test_the_styles_are_ordered_from_the_training_prompt_and_the_chinese_ones_are_chinese():
    assert STYLES[0].name == "control" and STYLES[-1].name == "bare"
    from opgrpo_lib.prompts import IMPLICIT

    assert style_template("control") == IMPLICIT
    for s in STYLES[:-1]:
        assert sum("\u4e00" <= c <= "\u9fff" for c in s.zh) >= 4, s.name


def test_the_rule_catches_perspective_words():
    for text in (
        "Consider both sides: {situation}",
        "From each viewpoint, {situation}",
        "{situation} 请从多个视角分析",
    ):
        assert perspective_words_in(text)
    assert not perspective_words_in("Look inside {situation}")  # 'side' only as a word


@pytest.mark.parametrize(
    "override, message",
    [
        (
            {"styles.custom": {"multi": "List the perspectives on {situation}"}},
            r"styles.custom.multi: names 'perspective'",
        ),
        ({"styles.custom": {"nosit": "What now?"}}, r"styles.custom.nosit: .*\{situation\}"),
        ({"styles.styles": ["control", "limerick"]}, r"styles.styles: \['limerick'\]"),
        ({"styles.styles": ["question"]}, r"styles.styles: .*'control'"),
        ({"styles.system_modes": ["default", "pirate"]}, r"styles.system_modes: \['pirate'\]"),
        ({"styles.systems": ["op_grpo", "nobody"]}, r"styles.systems: \['nobody'\]"),
        ({"styles.systems": ["op_grpo", "modplural"]}, r"styles.systems: \['modplural'\]"),
        ({"styles.split_rows": {"5p": 0}}, r"styles.split_rows.5p"),
        ({"styles.mode_systems": ["op_grpo", "elsewhere"]}, r"styles.mode_systems: .*some of styles.systems"),
        ({"styles.mode_systems": []}, r"styles.mode_systems: \[\]"),
    ],
)
def test_bad_style_settings_fail_at_load_in_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_profile("tiny", override)
    assert "\n" not in str(err.value)


def test_an_empty_system_message_is_sent_as_one(tmp_path):
    """``""`` is not the template's default: the rendered prompt has an empty system turn (tiny chat template; and
    SmolLM2's, whose default system turn differs, where its tokenizer is on this machine)."""
    from transformers import AutoTokenizer

    from opgrpo_lib.tiny import materialize

    tok = AutoTokenizer.from_pretrained(materialize("tiny:causal-lm"))
    default, empty = chat_prompts(tok, ["Hi"], None)[0], chat_prompts(tok, ["Hi"], "")[0]
    assert "<|im_start|>system" not in default and empty.startswith("<|im_start|>system\n<|im_end|>\n")
    from opgrpo_lib.models import resolve

    try:
        smol = AutoTokenizer.from_pretrained(resolve("HuggingFaceTB/SmolLM2-135M-Instruct"))
    except Exception:  # noqa: BLE001 - the offline model is optional here
        pytest.skip("SmolLM2 not installed")
    default, empty = chat_prompts(smol, ["Hi"], None)[0], chat_prompts(smol, ["Hi"], "")[0]
    assert "SmolLM" in default and "SmolLM" not in empty and "<|im_start|>system\n<|im_end|>" in empty


def test_conditions_and_templates_follow_the_profile():
    cfg = load_profile("tiny")
    labels = [c.label for c in st.conditions(cfg)]
    n = len(cfg.styles.styles)
    assert labels[:n] == cfg.styles.styles and labels[n : n + 2] == ["control+empty", "control+generic"]
    zh = [s for s in cfg.styles.styles if s not in cfg.styles.custom]  # custom styles are English only
    assert labels[n + 2 :] == [f"{s}.zh" for s in zh] + ["control+empty.zh", "control+generic.zh"]
    assert st.template(cfg, st.systems(cfg)[0], st.Condition("zh", "control", "default")).startswith("请")
    op = st.systems(cfg)[0]
    control = st.Condition("en", "control", "default")
    assert st.template(cfg, op, control) is None, "the English control is step 05's own job (its rows are reused)"
    assert st.template(cfg, op, st.Condition("en", "plain", "default")) == cfg.styles.custom["plain"]
    assert st.system_message(st.Condition("en", "control", "empty")) == ""
    order = st.conditions(cfg)
    assert st.conditions_of(cfg, "base_implicit", order) == order, "every system runs the modes by default"
    cfg = load_profile("tiny", {"styles.mode_systems": ["op_grpo"]})
    assert [c.mode for c in st.conditions_of(cfg, "base_implicit", order)] == ["default"] * (len(order) - 4)
    assert st.conditions_of(cfg, "op_grpo", order) == order


def _per(values: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    rows = []
    for (cond, system), ratios in values.items():
        rows += [
            {"condition": cond, "system": system, "prompt": f"s{i}", "ratio": r, "valid_format": True}
            for i, r in enumerate(ratios)
        ]
    return pd.DataFrame(rows)


def test_summary_comparisons_and_verdicts_by_hand():
    order = [st.Condition("en", "control", "default"), st.Condition("en", "bare", "default")]
    per = _per(
        {
            ("control", "op"): [0.6, 0.5, 0.7, 0.6],
            ("control", "base"): [0.2, 0.1, 0.3, 0.2],
            ("control", "sft"): [0.6, 0.5, 0.7, 0.5],
            ("bare", "op"): [0.3, 0.3, 0.3, 0.3],
            ("bare", "base"): [0.3, 0.2, 0.4, 0.3],
            ("bare", "sft"): [0.3, 0.3, 0.3, 0.3],
        }
    )
    summary = st.summarize(per, order, reps=500, seed=0)
    bare_op = summary[(summary["condition"] == "bare") & (summary["system"] == "op")].iloc[0]
    assert bare_op["mean"] == pytest.approx(0.3) and bare_op["ratio_to_control"] == pytest.approx(0.3 / 0.6)
    comps = st.comparisons(per, order, "op", reps=500, seed=0)
    c = comps.set_index(["condition", "baseline"])
    assert c.loc[("control", "base"), "diff"] == pytest.approx(0.4) and c.loc[("control", "base"), "above_zero"]
    assert c.loc[("control", "sft"), "diff"] == pytest.approx(0.025)
    assert c.loc[("control", "sft"), "sd_diff"] == pytest.approx(np.std([0, 0, 0, 0.1], ddof=1))
    assert c.loc[("bare", "base"), "diff"] == pytest.approx(0.0) and not c.loc[("bare", "base"), "above_zero"]
    v = st.verdicts(summary, comps, "op", "base", "sft").set_index("condition")
    assert v.loc["control", "beats_base"] and v.loc["control", "keeps_level"]
    assert not v.loc["bare", "beats_base"] and not v.loc["bare", "keeps_level"]  # 0.5 < RETENTION_MIN


class WordNLI:
    """P(entailment) = share of the premise's words found in the hypothesis (characters for Chinese); records every
    call so a test can see each distinct pair scored once."""

    def __init__(self):
        self.calls = []

    def entailment(self, premises, hypotheses, progress=False):
        self.calls.append(list(zip(premises, hypotheses)))
        tokens = lambda t: set(t.split()) if " " in t else set(t)  # noqa: E731
        return np.array([len(tokens(p) & tokens(h)) / len(tokens(p)) for p, h in zip(premises, hypotheses)])


def test_nli_per_sample_by_hand_english_and_chinese():
    from opgrpo_lib.chinese import split_sentences_zh

    outputs = pd.DataFrame(
        {
            "condition": ["control", "control", "bare", "control.zh"],
            "system": ["op", "base", "op", "op"],
            "prompt": ["s1", "s1", "s1", "s1"],
            "split": ["5p"] * 4,
            "valid_format": [True, False, True, True],
            "text": ["Honesty matters here. Loyalty too.", "", "Honesty matters here.", "诚实很重要。忠诚也是！"],
        }
    )
    en = {"s1": ["Honesty matters here.", "Loyalty too."]}
    model = WordNLI()
    per = st.per_sample_nli(outputs[outputs["condition"] != "control.zh"], en, model, "text", str.split)
    assert len(model.calls) == 1, "one batch for every cell"
    assert len(model.calls[0]) == len(set(model.calls[0])), "each distinct pair once"
    got = per.set_index(["condition", "system"])
    assert got.loc[("control", "base"), "score"] == 0.0 and not got.loc[("control", "base"), "covered"]
    assert got.loc[("control", "op"), "n_references"] == 2 and got.loc[("control", "op"), "split"] == "5p"
    split = lambda t: [s.strip() for s in t.replace("Loyalty", "|Loyalty").split("|")]  # noqa: E731
    per = st.per_sample_nli(outputs[outputs["condition"] == "control"], en, WordNLI(), "text", split)
    assert per.set_index("system").loc["op", "score"] == pytest.approx(1.0)  # each reference entailed by a sentence
    zh = st.per_sample_nli(
        outputs[outputs["condition"] == "control.zh"],
        {"s1": ["诚实很重要。", "忠诚也是！"]},
        WordNLI(),
        "text",
        split_sentences_zh,
    )
    assert (
        zh.iloc[0]["n_sentences"] == 2 and zh.iloc[0]["score"] == pytest.approx(1.0) and zh.iloc[0]["zh_share"] == 1.0
    )


def test_nli_summary_adds_accuracy():
    order = [st.Condition("en", "control", "default")]
    per = _per({("control", "op"): [0.9, 0.2, 0.5, 0.1]}).rename(columns={"ratio": "score"})
    per["covered"] = per["score"] > 0.33
    row = st.summarize(per, order, reps=200, seed=0, value="score").iloc[0]
    assert row["mean"] == pytest.approx(0.425) and row["accuracy"] == pytest.approx(0.5)
    assert row["accuracy_ci_low"] <= 0.5 <= row["accuracy_ci_high"] and row["ratio_to_control"] == pytest.approx(1.0)
