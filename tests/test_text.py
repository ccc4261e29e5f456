import pytest

from opgrpo_lib.text import (
    MalformedReference,
    check_layout,
    eval_candidate_sentences,
    eval_reference_sentences,
    keywords,
    mask_sentence,
    parse_perspectives,
    split_segments,
    stopwords,
)


def test_stopwords_vendored():
    sw = stopwords()
    assert len(sw) == 179 and {"the", "of", "in", "wouldn't", "ourselves"} <= sw


def test_parse_perspectives_in_and_from():
    ans = "In the perspective of Care, Helping, kindly.\nFrom the perspective of Duty to self, Rest\nmatters."
    assert parse_perspectives(ans) == [("Care", "Helping, kindly."), ("Duty to self", "Rest matters.")]


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "   ",
        "Some text without prefix",
        "Intro line\nIn the perspective of A, b.",
        "In the perspective of A without comma",
    ],
)
def test_parse_perspectives_malformed(answer):
    with pytest.raises(MalformedReference):
        parse_perspectives(answer)


def test_split_segments_line_initial_only():
    text = "In the perspective of A, x. In the perspective of B, y.\nfrom the perspective of C, z.\n\n"
    assert split_segments(text) == [
        "In the perspective of A, x. In the perspective of B, y.",
        "from the perspective of C, z.",
    ]
    assert split_segments("plain prose. More prose.") == ["plain prose. More prose."]
    assert split_segments("  \n ") == []


def test_layout_strict():
    ok = check_layout(
        "  <Core Perspectives>\nIn the perspective of A, x.\n</core   perspectives>\n\n<summary> S </SUMMARY>\n"
    )
    assert ok.valid and ok.core == "In the perspective of A, x." and ok.summary == "S"
    for bad in (
        "<core perspectives>a</core perspectives> junk <summary>b</summary>",
        "<core perspectives>a</core perspectives><summary>b</summary> trailing",
        "<core perspectives> </core perspectives><summary>b</summary>",
        "<core perspectives>a</core perspectives>",
        "",
    ):
        res = check_layout(bad)
        assert not res.valid and res.core == bad.strip()


def test_keywords_and_mask():
    kws = keywords("Provide a structured analysis on this topic: Lying to my friend_s mom\n\n")
    assert kws == {"provide", "structured", "analysis", "topic", "lying", "mom"}  # friend_s is not alnum
    assert mask_sentence("In the perspective of Honesty, lying hurts Mom's trust!", kws) == (
        "In the perspective of Honesty [KW] hurts [KW] s trust"
    )


def test_eval_splitters():
    assert eval_reference_sentences("In the perspective of A, x. [1] In the perspective of B, y.") == [
        "In the perspective of A, x.",
        "In the perspective of B, y.",
    ]
    assert eval_candidate_sentences("One. Two! Three? 四。 [2] Five") == ["One", "Two", "Three", "四", "Five"]
