// The pagelens web page: submit a URL or a text, follow the scan live over server-sent events,
// show the teaser as soon as it is ready and then the full report, and list recent scans.
import * as api from "./api.js";
import { $, $$, clear, h } from "./dom.js";
import { setupTracing, withSpan } from "./tracing.js";
import { TERMINAL, renderRecent, renderScan } from "./view.js";

const config = JSON.parse($("#pagelens-config").textContent || "{}");
setupTracing(config, api.authHeaders);

const RECENT_LIMIT = 12;
const RECENT_EVERY_MS = 20000;
const SCAN_HASH = /^#\/scans\/([0-9a-f-]{36})$/;

const form = $("#scan-form");
const formError = $("#form-error");
const scanRoot = $("#scan");
const recentList = $("#recent-list");
const keyDialog = $("#key-dialog");

/** The scan on screen: {status, teaser, report, notice}. */
let current = null;
let stopFollowing = () => {};
let mode = "url";

// --- errors and the API key ------------------------------------------------------------------

function describe(error) {
  if (error instanceof api.ApiError) {
    if (error.status === 0) return "Cannot reach the pagelens API. Is it running?";
    const fields = error.fieldErrors;
    return fields.length ? `${error.message}: ${fields.join("; ")}` : error.message;
  }
  return String(error.message || error);
}

function needsKey(error) {
  if (error instanceof api.ApiError && error.status === 401) {
    $("#key-button").hidden = false;
    keyDialog.showModal();
    return true;
  }
  return false;
}

function showFormError(error) {
  if (needsKey(error)) return;
  formError.textContent = describe(error);
  formError.hidden = false;
}

$("#key-form").addEventListener("submit", () => {
  api.setApiKey($("#key-input").value.trim());
  refreshRecent();
});
$("#key-button").addEventListener("click", () => {
  $("#key-input").value = api.apiKey();
  keyDialog.showModal();
});
$("#key-button").hidden = !api.apiKey();

// --- one scan ----------------------------------------------------------------------------------

function show() {
  scanRoot.hidden = false;
  renderScan(scanRoot, current, config, { cancel: cancelCurrent, retry: retryCurrent });
  $$(".recent-item").forEach((li) => li.classList.remove("is-current"));
}

async function loadResults(scan) {
  const { status } = scan;
  try {
    if (!scan.teaser && (status.status === "TEASER_READY" || status.status === "FULL_READY")) {
      scan.teaser = (await api.teaser(status.scanId)).teaser;
    }
    if (!scan.report && status.status === "FULL_READY") scan.report = await api.report(status.scanId);
  } catch (error) {
    if (!needsKey(error)) scan.notice = `Could not load the results: ${describe(error)}`;
  }
  if (scan === current) show();
}

function onStatus(scan, status) {
  if (scan !== current) return;
  scan.status = status;
  show();
  loadResults(scan);
  if (TERMINAL.has(status.status)) refreshRecent();
}

async function open(id) {
  stopFollowing();
  if (location.hash !== `#/scans/${id}`) history.replaceState(null, "", `#/scans/${id}`);
  let status;
  try {
    status = await api.status(id);
  } catch (error) {
    if (needsKey(error)) return;
    scanRoot.hidden = false;
    clear(scanRoot, h("div.error-box", { role: "alert" }, h("strong", null, "Cannot show this scan"), h("p", null, describe(error))));
    return;
  }
  const scan = { status };
  current = scan;
  onStatus(scan, status);
  if (!TERMINAL.has(status.status)) {
    stopFollowing = api.follow(
      id,
      (next) => onStatus(scan, next),
      (error) => {
        scan.notice = `Live progress stopped: ${describe(error)}. Reload to see the latest state.`;
        if (scan === current) show();
      },
    );
  }
}

async function cancelCurrent() {
  try {
    await api.cancel(current.status.scanId);
  } catch (error) {
    if (!needsKey(error)) current.notice = describe(error);
    show();
  }
}

async function retryCurrent() {
  try {
    await api.retry(current.status.scanId);
    open(current.status.scanId);
  } catch (error) {
    if (!needsKey(error)) current.notice = describe(error);
    show();
  }
}

// --- the form ----------------------------------------------------------------------------------

function setMode(next) {
  mode = next;
  for (const tab of $$("[role=tab]")) tab.setAttribute("aria-selected", String(tab.dataset.mode === mode));
  $(".mode-url").hidden = mode !== "url";
  $(".mode-text").hidden = mode !== "text";
  $("#url").required = mode === "url";
  $("#text").required = mode === "text";
  formError.hidden = true;
}

for (const tab of $$("[role=tab]")) tab.addEventListener("click", () => setMode(tab.dataset.mode));

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  formError.hidden = true;
  const options = { topN: Number($("#top-n").value) || 10 };
  const buttons = $$("button[type=submit]", form);
  buttons.forEach((b) => (b.disabled = true));
  try {
    // The span wraps the request: its fetch span, and so the API's server span, are its children.
    const created = await withSpan("user.create_scan_request", { "pagelens.scan.kind": mode }, (span) => {
      const pending =
        mode === "url"
          ? api.createUrlScan($("#url").value.trim(), options)
          : api.createDocumentScan($("#text").value, $("#title").value.trim() || null, options);
      return pending.then((accepted) => {
        span.setAttribute("pagelens.scan_id", accepted.scanId);
        return accepted;
      });
    });
    await open(created.scanId);
    refreshRecent();
  } catch (error) {
    showFormError(error);
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
});

// --- recent scans -----------------------------------------------------------------------------

async function refreshRecent() {
  try {
    const page = await api.recent(RECENT_LIMIT);
    renderRecent(recentList, page.items, config, current && current.status.scanId, open);
  } catch (error) {
    if (!needsKey(error)) clear(recentList, h("li.empty", null, describe(error)));
  }
}

$("#refresh").addEventListener("click", refreshRecent);
setInterval(() => document.visibilityState === "visible" && refreshRecent(), RECENT_EVERY_MS);
refreshRecent();

const linked = SCAN_HASH.exec(location.hash);
if (linked) open(linked[1]);
