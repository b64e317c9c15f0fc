// The audit of a URL scan: the overall and per-category scores, then each category's audits,
// failing first, each one expandable to its evidence and fix. All text comes from the scanned page
// or its robots.txt and goes in as text nodes (dom.js).
import { h } from "./dom.js";

const CATEGORIES = [
  ["indexability", "Indexability"],
  ["structured_data", "Structured data"],
  ["sharing", "Sharing"],
  ["content", "Content"],
  ["performance", "Performance"],
];
const RESULT_LABELS = { fail: "Fail", warning: "Warning", pass: "Pass", not_applicable: "N/A" };

function grade(score) {
  if (typeof score !== "number") return "none";
  return score >= 90 ? "good" : score >= 50 ? "fair" : "poor";
}

function scoreChip(score, big) {
  return h(`span.audit-score.score-${grade(score)}${big ? ".is-big" : ""}`, null, typeof score === "number" ? String(score) : "–");
}

function auditItem(audit) {
  const open = audit.result === "fail";
  const evidence = audit.evidence || [];
  return h(
    `li.audit.audit-${audit.result}`,
    { "data-audit": audit.id, "data-result": audit.result },
    h(
      "details",
      open ? { open: true } : null,
      h(
        "summary",
        null,
        h(`span.result.result-${audit.result}`, null, RESULT_LABELS[audit.result] || audit.result),
        h("span.audit-title", null, audit.title),
        h(`span.badge.badge-${audit.severity}`, null, audit.severity),
      ),
      evidence.length ? h("ul.evidence", null, evidence.map((line) => h("li", null, h("code", null, line)))) : null,
      audit.fix ? h("p.fix", null, h("strong", null, "Fix: "), audit.fix) : null,
      h("p.audit-id.muted", null, audit.id),
    ),
  );
}

function category(key, label, summary, audits) {
  const mine = audits.filter((a) => a.category === key);
  const open = mine.filter((a) => a.result === "fail" || a.result === "warning");
  const rest = mine.filter((a) => a.result === "pass" || a.result === "not_applicable");
  return h(
    "div.audit-category",
    { "data-category": key },
    h(
      "h4",
      null,
      scoreChip(summary ? summary.score : null),
      label,
      h("span.muted.counts", null, `${summary?.failed ?? 0} failed · ${summary?.warnings ?? 0} warnings · ${summary?.passed ?? 0} passed`),
    ),
    open.length ? h("ul.audits", null, open.map(auditItem)) : null,
    rest.length
      ? h("details.passed", null, h("summary", null, `${rest.length} passed or not applicable`), h("ul.audits", null, rest.map(auditItem)))
      : null,
  );
}

function preview(facts) {
  const p = facts.preview || {};
  return h(
    "div.share-preview",
    null,
    h("h4", null, "Shared link preview"),
    h(
      "div.share-card",
      null,
      h("span.share-site", null, p.siteName || ""),
      h("strong.share-title", null, p.title || "(no title)"),
      h("span.share-description", null, p.description || "(no description)"),
      h("code.share-image", { title: "og:image" }, p.image || "no image"),
    ),
  );
}

function crawlers(facts) {
  const list = facts.crawlers || [];
  if (!list.length) return null;
  return h(
    "div.crawlers",
    null,
    h("h4", null, "Crawlers (robots.txt)"),
    h(
      "ul",
      null,
      list.map((c) =>
        h(
          `li.crawler.crawler-${c.allowed ? "allowed" : "blocked"}`,
          { title: c.rule || (c.allowed ? "allowed" : "blocked"), "data-crawler": c.crawler },
          c.crawler,
        ),
      ),
    ),
  );
}

export function renderAudit(audit) {
  const audits = audit.audits || [];
  const summaries = Object.fromEntries((audit.categories || []).map((c) => [c.category, c]));
  const facts = audit.facts || {};
  return h(
    "div.panel.audit-panel#audit",
    null,
    h("h3", null, scoreChip(audit.score, true), "Audit"),
    h("div.audit-extras", null, preview(facts), crawlers(facts)),
    CATEGORIES.map(([key, label]) => category(key, label, summaries[key], audits)),
  );
}
