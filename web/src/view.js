// Rendering of one scan (status, progress, teaser, report) and of the recent-scans list.
import { renderAudit } from "./audit.js";
import { ago, bytes, clear, h, ms } from "./dom.js";

const URL_STAGES = ["CRAWL", "PARSE", "ANALYZE", "GENERATE"];
const STAGE_LABELS = { CRAWL: "Fetch", PARSE: "Parse", ANALYZE: "Measure", GENERATE: "Analyse" };
const STATUS_LABELS = {
  QUEUED: "Queued",
  RUNNING: "Running",
  TEASER_READY: "Teaser ready",
  FULL_READY: "Done",
  FAILED: "Failed",
  CANCELLED: "Cancelled",
};
const SEVERITIES = ["high", "medium", "low", "info"];
export const TERMINAL = new Set(["FULL_READY", "FAILED", "CANCELLED"]);

export function statusPill(status) {
  return h(`span.pill.pill-${status.toLowerCase().replace("_", "-")}`, { "data-status": status }, STATUS_LABELS[status] || status);
}

/** The trace id, linked through the configured template (e.g. Grafana Explore) when there is one. */
export function traceLink(traceId, template) {
  if (!traceId) return h("span.muted", null, "no trace");
  const short = `${traceId.slice(0, 8)}…${traceId.slice(-4)}`;
  if (!template || !/^https?:\/\//.test(template)) return h("code.trace-id", { title: traceId }, short);
  const href = template.replaceAll("{trace_id}", encodeURIComponent(traceId));
  return h("a.trace-link", { href, target: "_blank", rel: "noopener", title: `Open trace ${traceId}` }, h("code", null, short));
}

function title(status, teaser) {
  if (teaser && teaser.title) return teaser.title;
  return status.url || "Text document";
}

/**
 * Everything about one scan. `scan` = {status, teaser?, report?, notice?}; `actions` = {cancel, retry}.
 */
export function renderScan(root, scan, config, actions) {
  const { status, teaser, report } = scan;
  const stages = status.url ? URL_STAGES : ["GENERATE"];
  const terminal = TERMINAL.has(status.status);
  clear(
    root,
    h(
      "div.scan-head",
      null,
      h(
        "div.scan-title",
        null,
        h("h2", { title: title(status, teaser) }, title(status, teaser)),
        status.url ? h("a.scan-url", { href: status.url, target: "_blank", rel: "noopener noreferrer" }, status.url) : null,
      ),
      statusPill(status.status),
    ),
    h(
      "div.scan-meta",
      null,
      h("span", null, "Trace ", traceLink(status.traceId, config.traceUrlTemplate)),
      h("span", { title: status.createdAt }, "Started ", new Date(status.createdAt).toLocaleTimeString()),
      status.attempts > 1 ? h("span", null, `Attempt ${status.attempts}`) : null,
      h("span.scan-id", { title: "scan id" }, status.scanId),
    ),
    progress(status, stages),
    status.error ? errorBox(status.error, actions) : null,
    scan.notice ? h("p.notice", null, scan.notice) : null,
    !terminal ? h("div.actions", null, h("button.ghost.small", { type: "button", onclick: actions.cancel }, "Cancel scan")) : null,
    status.status === "CANCELLED" ? h("p.notice", null, "This scan was cancelled.") : null,
    teaser ? renderTeaser(teaser) : null,
    report ? renderReport(report) : !terminal && teaser ? h("p.waiting", null, "Measuring and extracting keyphrases…") : null,
  );
}

function progress(status, stages) {
  const value = status.progress || 0;
  const current = status.stage;
  const failed = status.status === "FAILED" || status.status === "CANCELLED";
  const done = status.status === "FULL_READY";
  return h(
    "div.progress-block",
    null,
    h(
      "div.progress",
      { role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": value, "aria-label": "scan progress" },
      h(`div.progress-bar${failed ? ".is-failed" : ""}${done ? ".is-done" : ""}`, { style: { width: `${Math.max(value, 2)}%` } }),
    ),
    h(
      "ol.steps",
      null,
      stages.map((stage) => {
        const index = stages.indexOf(stage);
        const at = current ? stages.indexOf(current) : -1;
        let state = "todo";
        if (done || index < at) state = "done";
        else if (index === at) state = failed ? "failed" : "active";
        return h(`li.step.step-${state}`, { "data-stage": stage }, h("span.dot"), STAGE_LABELS[stage]);
      }),
      h("li.step-percent", null, `${value}%`),
    ),
  );
}

function errorBox(error, actions) {
  return h(
    "div.error-box",
    { role: "alert" },
    h("strong", null, error.type.replaceAll("_", " ")),
    h("p", null, error.message),
    h("button.small", { type: "button", onclick: actions.retry }, "Retry scan"),
  );
}

function fact(label, value, hint) {
  return h("div.fact", { title: hint || null }, h("span.fact-value", null, value), h("span.fact-label", null, label));
}

function renderTeaser(teaser) {
  const headings = (teaser.headings || []).slice(0, 8);
  return h(
    "section.teaser#teaser",
    null,
    h("h3", null, "Page facts"),
    teaser.description ? h("p.description", null, teaser.description) : null,
    h(
      "div.facts",
      null,
      fact("words", (teaser.wordCount ?? 0).toLocaleString()),
      teaser.url ? fact("links in / out", `${teaser.links.internal} / ${teaser.links.external}`) : null,
      teaser.url ? fact("images without alt", `${teaser.images.withoutAlt} / ${teaser.images.total}`) : null,
      teaser.url ? fact("H1 headings", teaser.h1Count) : null,
      teaser.language ? fact("language", teaser.language) : null,
    ),
    headings.length
      ? h("ul.headings", null, headings.map((x) => h(`li.h${x.level}`, null, h("span.level", null, `H${x.level}`), x.text)))
      : null,
    teaser.excerpt ? h("blockquote.excerpt", null, teaser.excerpt) : null,
  );
}

function renderReport(report) {
  const phrases = report.keyphrases || [];
  const top = phrases.length ? Math.max(...phrases.map((p) => p.score)) : 1;
  return h(
    "section.report#report",
    null,
    report.audit ? renderAudit(report.audit) : null,
    h(
      "div.report-grid",
      null,
      h(
        "div.panel",
        null,
        h("h3", null, "Keyphrases"),
        phrases.length
          ? h(
              "ol.keyphrases",
              null,
              phrases.map((p) =>
                h(
                  "li.keyphrase",
                  null,
                  h("span.phrase", null, p.phrase),
                  h("span.score-bar", null, h("span", { style: { width: `${Math.round((p.score / top) * 100)}%` } })),
                  h("span.score", null, p.score.toFixed(2)),
                ),
              ),
            )
          : h("p.muted", null, "Too little text for keyphrases."),
      ),
      report.performance ? performance(report.performance) : null,
    ),
    insights(report.insights || []),
  );
}

function performance(perf) {
  const psi = perf.psi && typeof perf.psi === "object" ? perf.psi : null;
  return h(
    "div.panel",
    null,
    h("h3", null, "Performance"),
    h(
      "div.facts.facts-perf",
      null,
      fact("time to first byte", ms(perf.ttfbMs)),
      fact("total fetch", ms(perf.totalMs)),
      fact("HTML size", bytes(perf.htmlBytes)),
      fact("transferred", bytes(perf.transferBytes), perf.compression ? `compressed with ${perf.compression}` : "not compressed"),
      fact("scripts / styles", `${perf.scripts} / ${perf.stylesheets}`),
      fact("render-blocking", perf.renderBlocking),
      fact("redirects", perf.redirects),
      fact("compression", perf.compression || "none"),
    ),
    psi
      ? h(
          "div.psi",
          null,
          h("h4", null, "PageSpeed Insights"),
          h(
            "div.facts",
            null,
            Object.entries(psi)
              .filter(([, v]) => typeof v === "number")
              .map(([k, v]) => fact(k, v <= 1 ? Math.round(v * 100) : Math.round(v))),
          ),
        )
      : null,
  );
}

function insights(list) {
  const groups = SEVERITIES.map((severity) => [severity, list.filter((i) => i.severity === severity)]).filter(
    ([, items]) => items.length,
  );
  return h(
    "div.panel.insights",
    null,
    h("h3", null, "Insights"),
    groups.length
      ? groups.map(([severity, items]) =>
          h(
            `div.severity.severity-${severity}`,
            { "data-severity": severity },
            h("h4", null, h(`span.badge.badge-${severity}`, null, severity), `${items.length}`),
            h(
              "ul",
              null,
              items.map((i) =>
                h("li.insight", null, h("span.category", null, i.category), i.message, i.source === "llm" ? h("span.source", null, "AI") : null),
              ),
            ),
          ),
        )
      : h("p.muted", null, "Nothing to improve that the checks could find."),
  );
}

/** The recent-scans list; `open(id)` shows one. */
export function renderRecent(root, items, config, currentId, open) {
  if (!items.length) return clear(root, h("li.empty", null, "No scans yet. Start one on the left."));
  return clear(
    root,
    items.map((s) =>
      h(
        `li.recent-item${s.scanId === currentId ? ".is-current" : ""}`,
        null,
        h(
          "button.recent-open",
          { type: "button", onclick: () => open(s.scanId), title: s.url || "text document" },
          h("span.recent-title", null, s.url ? s.url.replace(/^https?:\/\//, "") : "Text document"),
          h("span.recent-meta", null, statusPill(s.status), h("span.muted", { title: s.createdAt }, ago(s.createdAt))),
        ),
        h("span.recent-trace", null, traceLink(s.traceId, config.traceUrlTemplate)),
      ),
    ),
  );
}
