from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from app.core.report import Performance, Teaser
from worker.insights import SEVERITIES, phrase_in_text, words_match
from worker.insights import rule_insights as typed_rule_insights

PHRASES = [("compost", 0.71), ("kitchen scraps", 0.62), ("garden soil", 0.55), ("worms", 0.4)]

# A page no rule objects to; each test changes one fact and expects exactly one insight.
GOOD_TEASER: dict[str, Any] = {
    "url": "https://example.test/compost",
    "title": "Composting at home: a beginner's guide",
    "description": "How to turn kitchen scraps and garden waste into rich compost in a few months, without smells.",
    "canonical": "https://example.test/compost",
    "language": "en",
    "headings": [{"level": 1, "text": "How to compost at home"}, {"level": 2, "text": "What to add"}],
    "h1Count": 1,
    "wordCount": 812,
    "links": {"internal": 12, "external": 3},
    "images": {"total": 5, "withoutAlt": 0, "withoutAltSamples": []},
    "excerpt": "Composting turns kitchen scraps into garden soil.",
}
GOOD_LAB: dict[str, Any] = {
    "ttfbMs": 120.0,
    "totalMs": 300.0,
    "htmlBytes": 51_234,
    "transferBytes": 9_876,
    "compression": "gzip",
    "compressionRatio": 0.19,
    "scripts": 7,
    "stylesheets": 3,
    "images": 12,
    "renderBlocking": 3,
    "redirects": 1,
}


def rule_insights(
    teaser: dict[str, Any], lab: dict[str, Any] | None, keyphrases: list[tuple[str, float]], *, kind: str
) -> list[dict[str, Any]]:
    """The rules over teaser and lab JSON as the store holds them; the insights back as JSON."""
    performance = None if lab is None else Performance.model_validate(lab)
    found = typed_rule_insights(Teaser.model_validate(teaser), performance, keyphrases, kind=kind)
    return [i.to_json() for i in found]


def ids(insights: list[dict[str, Any]]) -> list[str]:
    return [i["id"] for i in insights]


def run(teaser: dict[str, Any] | None = None, lab: dict[str, Any] | None = None) -> list[str]:
    return ids(rule_insights({**GOOD_TEASER, **(teaser or {})}, {**GOOD_LAB, **(lab or {})}, PHRASES, kind="url"))


def test_good_page_has_no_findings() -> None:
    assert rule_insights(GOOD_TEASER, GOOD_LAB, PHRASES, kind="url") == []


@pytest.mark.parametrize(
    ("teaser", "expected"),
    [
        ({"title": None}, ["title-missing"]),
        ({"title": "   "}, ["title-missing"]),
        ({"title": "Compost 1"}, ["title-too-short"]),  # 9 chars
        ({"title": "Compost 12"}, []),  # 10 chars
        ({"title": "Compost " + "x" * 52}, []),  # 60 chars
        ({"title": "Compost " + "x" * 53}, ["title-too-long"]),  # 61 chars
        ({"description": None}, ["description-missing"]),
        ({"description": "d" * 49}, ["description-too-short"]),
        ({"description": "d" * 50}, []),
        ({"description": "d" * 160}, []),
        ({"description": "d" * 161}, ["description-too-long"]),
        ({"headings": [], "h1Count": 0}, ["h1-missing"]),
        (
            {"headings": [{"level": 1, "text": "Compost"}, {"level": 1, "text": "Compost more"}], "h1Count": 2},
            ["h1-multiple"],
        ),
        ({"wordCount": 299}, ["content-thin"]),
        ({"wordCount": 300}, []),
        ({"images": {"total": 5, "withoutAlt": 2, "withoutAltSamples": ["a.png", "b.jpg"]}}, ["images-missing-alt"]),
        ({"canonical": None}, ["canonical-missing"]),
        ({"language": ""}, ["language-missing"]),
        ({"title": "A beginner's guide to the garden"}, ["keyphrase-not-in-title"]),
        ({"headings": [{"level": 1, "text": "Start here"}]}, ["keyphrase-not-in-h1"]),
    ],
)
def test_each_teaser_rule_fires_alone(teaser: dict[str, Any], expected: list[str]) -> None:
    assert run(teaser) == expected


@pytest.mark.parametrize(
    ("lab", "expected"),
    [
        ({"htmlBytes": 500 * 1024}, []),
        ({"htmlBytes": 500 * 1024 + 1}, ["html-heavy"]),
        ({"compression": None, "htmlBytes": 10 * 1024}, []),
        ({"compression": None, "htmlBytes": 10 * 1024 + 1}, ["compression-missing"]),
        ({"ttfbMs": 800.0}, []),
        ({"ttfbMs": 800.5}, ["ttfb-slow"]),
        ({"renderBlocking": 4}, ["render-blocking-many"]),
        ({"redirects": 2}, ["redirects-many"]),
    ],
)
def test_each_lab_rule_fires_alone(lab: dict[str, Any], expected: list[str]) -> None:
    assert run(lab=lab) == expected


def message(insights: list[dict[str, Any]], id: str) -> str:
    return str(next(i for i in insights if i["id"] == id)["message"])


def test_messages_quote_the_numbers() -> None:
    teaser = {
        **GOOD_TEASER,
        "title": "T" * 75,
        "wordCount": 123,
        "images": {"total": 9, "withoutAlt": 4, "withoutAltSamples": ["hero.png"]},
    }
    lab = {**GOOD_LAB, "ttfbMs": 1234.4, "renderBlocking": 6, "redirects": 3, "htmlBytes": 700 * 1024}
    found = rule_insights(teaser, lab, PHRASES, kind="url")
    assert "75" in message(found, "title-too-long")
    assert "123" in message(found, "content-thin")
    assert "4 of 9" in message(found, "images-missing-alt") and "hero.png" in message(found, "images-missing-alt")
    assert "1234 ms" in message(found, "ttfb-slow")
    assert "6" in message(found, "render-blocking-many")
    assert "3 redirects" in message(found, "redirects-many")
    assert "700 KB" in message(found, "html-heavy")


def test_sorted_most_severe_first_with_valid_fields() -> None:
    lab = {**GOOD_LAB, "ttfbMs": 2000, "redirects": 4, "compression": None, "htmlBytes": 600_000}
    found = rule_insights({"wordCount": 10, "headings": []}, lab, PHRASES, kind="url")
    ranks = [SEVERITIES.index(i["severity"]) for i in found]
    assert ranks == sorted(ranks)
    assert found[0]["id"] == "title-missing"
    assert {"ttfb-slow", "redirects-many", "compression-missing", "html-heavy", "content-thin"} <= set(ids(found))
    for item in found:
        assert item["source"] == "rules"
        assert item["category"] in {"seo", "content", "accessibility", "performance"}
        assert item["message"]


def test_keyphrase_rules_use_top_phrases_and_loose_stems() -> None:
    # "Composting" matches the top phrase "compost"; the 2nd phrase also counts.
    assert run({"title": "Composting made simple"}) == []
    assert run({"title": "What to do with kitchen scrap"}) == []
    # Only the 4th phrase ("worms") appears: not one of the top ones.
    found = run({"title": "Worms for beginners", "headings": [{"level": 1, "text": "About worms"}]})
    assert found == ["keyphrase-not-in-title", "keyphrase-not-in-h1"]
    # No title / no H1 is reported by its own rule, not as a missing keyphrase.
    assert "keyphrase-not-in-title" not in run({"title": None})
    assert "keyphrase-not-in-h1" not in run({"headings": [], "h1Count": 0})
    # No keyphrases, nothing to compare.
    teaser = {**GOOD_TEASER, "title": "Unrelated words here"}
    assert rule_insights(teaser, GOOD_LAB, [], kind="url") == []


def test_keyphrase_message_names_the_phrases() -> None:
    found = rule_insights({**GOOD_TEASER, "title": "Nothing relevant"}, GOOD_LAB, PHRASES, kind="url")
    assert '"compost"' in message(found, "keyphrase-not-in-title")


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("compost", "composting", True),
        ("Garden", "gardens", True),
        ("analysis", "analyses", True),
        ("run", "running", True),
        ("cat", "category", False),
        ("compost", "compote", False),
        ("seo", "seo", True),
    ],
)
def test_words_match(a: str, b: str, same: bool) -> None:
    assert words_match(a, b) is same
    assert words_match(b, a) is same


def test_phrase_in_text_needs_every_word() -> None:
    assert phrase_in_text("garden soil", "Soil for the gardener? No: soil for gardens.")
    assert not phrase_in_text("garden soil", "Soil types explained")
    assert not phrase_in_text("", "anything")


DOCUMENT: dict[str, Any] = {
    "url": None,
    "title": "Meeting notes",
    "description": None,
    "canonical": None,
    "language": None,
    "headings": [],
    "h1Count": 0,
    "wordCount": 120,
    "links": {"internal": 0, "external": 0},
    "images": {"total": 0, "withoutAlt": 0, "withoutAltSamples": []},
    "excerpt": "Notes",
}


def test_document_kind_skips_html_rules() -> None:
    bad_lab = {"ttfbMs": 5000, "htmlBytes": 900_000, "compression": None, "renderBlocking": 9, "redirects": 5}
    assert ids(rule_insights(DOCUMENT, bad_lab, PHRASES, kind="document")) == [
        "content-thin",
        "keyphrase-not-in-title",
    ]
    long_doc = {**DOCUMENT, "wordCount": 5000, "title": "Compost planning notes"}
    assert rule_insights(long_doc, None, PHRASES, kind="document") == []


def test_an_empty_teaser_is_an_empty_page_and_mistyped_input_is_refused() -> None:
    assert ids(rule_insights({}, None, [], kind="url")) == [
        "title-missing",
        "description-missing",
        "h1-missing",
        "content-thin",
        "canonical-missing",
        "language-missing",
    ]
    assert ids(rule_insights({}, None, [], kind="document")) == ["content-thin"]
    garbage: dict[str, Any] = {
        "title": 5,
        "description": ["x"],
        "headings": "nope",
        "h1Count": True,
        "wordCount": "many",
        "images": "none",
        "canonical": {},
    }
    bad_lab: dict[str, Any] = {"htmlBytes": "big", "ttfbMs": None, "renderBlocking": [], "compression": 1}
    # The models are the contract the rules rely on: what breaks it never reaches them.
    with pytest.raises(ValidationError) as teaser_errors:
        Teaser.model_validate(garbage)
    assert {e["loc"][0] for e in teaser_errors.value.errors()} == set(garbage)
    with pytest.raises(ValidationError) as lab_errors:
        Performance.model_validate(bad_lab)
    assert {e["loc"][0] for e in lab_errors.value.errors()} == set(bad_lab)
    assert ids(rule_insights(GOOD_TEASER, GOOD_LAB, [("", 1.0), (" ", 0.5)], kind="url")) == []
