"""Structured-data audits: is there any, does its JSON parse, and do rich-result types carry their essentials.

The essentials follow what search engines need to show a rich result: a required property
missing fails the audit, a recommended one missing is a warning.
"""

from __future__ import annotations

from typing import Any

from app.core.page_audit import Audit, AuditCategory
from worker.audit.common import FAIL, HIGH, LOW, MEDIUM, NA, PASS, WARNING, make
from worker.audit.structured import Item, StructuredData

CATEGORY = AuditCategory.STRUCTURED_DATA

# type -> (required, recommended); "a|b" means one of them is enough.
ESSENTIALS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Article": (("headline",), ("image", "datePublished", "author")),
    "Product": (("name", "offers|review|aggregateRating"), ("image", "description")),
    "FAQPage": (("mainEntity",), ()),
    "BreadcrumbList": (("itemListElement",), ()),
    "Organization": (("name",), ("url", "logo")),
    "LocalBusiness": (("name", "address"), ("telephone", "url")),
    "Event": (("name", "startDate", "location"), ("endDate", "image", "description")),
    "Recipe": (("name", "image"), ("recipeIngredient", "recipeInstructions", "author")),
    "HowTo": (("name", "step"), ("image", "totalTime")),
}
# Common subtypes, checked as their parent.
SUBTYPES = {
    **dict.fromkeys(("NewsArticle", "BlogPosting", "TechArticle", "ScholarlyArticle", "Report"), "Article"),
    **dict.fromkeys(
        ("Corporation", "NGO", "EducationalOrganization", "OnlineStore", "NewsMediaOrganization"), "Organization"
    ),
    **dict.fromkeys(
        ("Restaurant", "Store", "Dentist", "Hotel", "MedicalClinic", "AutoRepair", "Bakery", "CafeOrCoffeeShop"),
        "LocalBusiness",
    ),
    **dict.fromkeys(("MusicEvent", "SportsEvent", "BusinessEvent", "Festival", "TheaterEvent"), "Event"),
}


def _present(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    return value not in (None, [], {})


def _has(data: dict[str, Any], prop: str) -> bool:
    return any(_present(data.get(name)) for name in prop.split("|"))


def family(item: Item) -> str | None:
    for name in item.types:
        name = SUBTYPES.get(name, name)
        if name in ESSENTIALS:
            return name
    return None


def _nested_problems(kind: str, data: dict[str, Any]) -> list[str]:
    """Essentials of the entries inside FAQPage and BreadcrumbList."""
    problems = []
    if kind == "FAQPage":
        questions = data.get("mainEntity")
        for n, question in enumerate(questions if isinstance(questions, list) else [questions], start=1):
            if not isinstance(question, dict):
                continue
            answer = question.get("acceptedAnswer")
            answer = answer[0] if isinstance(answer, list) and answer else answer
            if not _has(question, "name"):
                problems.append(f"question {n} has no name")
            if not isinstance(answer, dict) or not _has(answer, "text"):
                problems.append(f"question {n} has no acceptedAnswer.text")
    if kind == "BreadcrumbList":
        entries = data.get("itemListElement")
        for n, entry in enumerate(entries if isinstance(entries, list) else [entries], start=1):
            if isinstance(entry, dict) and not (_has(entry, "position") and _has(entry, "name|item")):
                problems.append(f"breadcrumb {n} lacks position or name")
    return problems


def audits(data: StructuredData) -> list[Audit]:
    return [_present_audit(data), _syntax(data), _limits(data), *(_essentials(kind, data) for kind in ESSENTIALS)]


def _present_audit(data: StructuredData) -> Audit:
    evidence = [f"{item.syntax}: {', '.join(item.types) or '(no @type)'}" for item in data.items]
    return make(
        "structured-data",
        CATEGORY,
        "The page describes itself with structured data",
        PASS if data.items else WARNING,
        MEDIUM,
        evidence or ["no JSON-LD, microdata or RDFa found"],
        "Add a JSON-LD block describing the page (schema.org Article, Product, Organization…).",
    )


def _syntax(data: StructuredData) -> Audit:
    title = "Structured data parses without errors"
    if not data.jsonld_blocks and not data.errors:
        return make("structured-data-syntax", CATEGORY, title, NA, HIGH, ["no JSON-LD blocks"])
    if data.errors:
        fix = "Fix the JSON syntax of the listed blocks (a validator such as validator.schema.org shows where)."
        return make("structured-data-syntax", CATEGORY, title, FAIL, HIGH, data.errors, fix)
    return make("structured-data-syntax", CATEGORY, title, PASS, HIGH, [f"{data.jsonld_read} JSON-LD blocks parsed"])


def _limits(data: StructuredData) -> Audit:
    title = "Structured data is of a reasonable size"
    fix = "Keep structured data to a few blocks describing this page; most of it was not read."
    return make("structured-data-size", CATEGORY, title, WARNING if data.skipped else PASS, LOW, data.skipped, fix)


def _essentials(kind: str, data: StructuredData) -> Audit:
    id = f"schema-{kind.lower()}"
    title = f"{kind} has the properties rich results need"
    items = [item for item in data.items if family(item) == kind]
    if not items:
        return make(id, CATEGORY, title, NA, MEDIUM, [f"no {kind}"])
    required, recommended = ESSENTIALS[kind]
    missing_required: list[str] = []
    missing_recommended: list[str] = []
    for n, item in enumerate(items, start=1):
        label = f"{kind} {n} ({item.syntax})" if len(items) > 1 else f"{kind} ({item.syntax})"
        gone = [p.replace("|", " or ") for p in required if not _has(item.data, p)]
        gone += _nested_problems(kind, item.data)
        if gone:
            missing_required.append(f"{label}: missing {', '.join(gone)}")
        soft = [p for p in recommended if not _has(item.data, p)]
        if soft:
            missing_recommended.append(f"{label}: recommended {', '.join(soft)}")
    if missing_required:
        fix = f"Add the missing {kind} properties; without them no rich result is shown."
        return make(id, CATEGORY, title, FAIL, MEDIUM, missing_required + missing_recommended, fix)
    if missing_recommended:
        fix = f"Add the recommended {kind} properties for a fuller rich result."
        return make(id, CATEGORY, title, WARNING, MEDIUM, missing_recommended, fix)
    return make(id, CATEGORY, title, PASS, MEDIUM, [f"{len(items)} {kind} with every essential property"])
