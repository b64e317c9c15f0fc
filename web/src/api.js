// The pagelens HTTP API as the page uses it: JSON in and out, problem+json errors, an optional
// API key (kept for the tab's life in sessionStorage), and the event stream read with fetch so it
// can carry that key (EventSource cannot send headers).

const KEY_STORAGE = "pagelens.apiKey";
const SCANS = "/api/v1/scan-jobs";

export class ApiError extends Error {
  /** @param {number} status @param {any} problem */
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }

  /** Field errors of a 422, as "field: message" lines. */
  get fieldErrors() {
    return (this.problem.errors || []).map((e) => `${e.field}: ${e.message}`);
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

export function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function parse(response) {
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json().catch(() => null) : null;
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

/**
 * One request. `fetch` is called synchronously, before anything is awaited, so a span active at
 * the call becomes the parent of the fetch span (and of the traceparent it sends).
 */
function request(method, path, body) {
  const headers = { Accept: "application/json", ...authHeaders() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const pending = fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  return pending.then(parse, (error) => {
    throw new ApiError(0, { detail: `cannot reach the API (${error.message})` });
  });
}

export const createUrlScan = (url, options) => request("POST", SCANS, { url, options });
export const createDocumentScan = (text, title, options) =>
  request("POST", "/api/v1/documents", title ? { text, title, options } : { text, options });
export const status = (id) => request("GET", `${SCANS}/${id}/status`);
export const teaser = (id) => request("GET", `${SCANS}/${id}/teaser`);
export const report = (id) => request("GET", `${SCANS}/${id}/full`);
export const cancel = (id) => request("DELETE", `${SCANS}/${id}`);
export const retry = (id) => request("POST", `${SCANS}/${id}/retry`);
export const recent = (limit) => request("GET", `${SCANS}?limit=${limit}`);

const TERMINAL = new Set(["FULL_READY", "FAILED", "CANCELLED"]);

/**
 * Follow a scan's server-sent events until a terminal state, reconnecting with Last-Event-ID
 * after a drop or when the server rotates the stream. Returns a function that stops following.
 * @param {string} id
 * @param {(status: any) => void} onStatus called with each status document, in order
 * @param {(error: Error) => void} onError called when following is given up (after a refusal)
 */
export function follow(id, onStatus, onError) {
  const controller = new AbortController();
  let lastId = "";
  let retryMs = 2000;

  const run = async () => {
    for (let attempt = 0; !controller.signal.aborted; attempt++) {
      try {
        const headers = { Accept: "text/event-stream", ...authHeaders() };
        if (lastId) headers["Last-Event-ID"] = lastId;
        const response = await fetch(`${SCANS}/${id}/events`, { headers, signal: controller.signal });
        if (response.status === 204) return; // seen to the end
        if (!response.ok) {
          const error = await parse(response).catch((e) => e);
          if (response.status < 500 && response.status !== 429) return onError(error);
          throw error;
        }
        attempt = 0;
        const ended = await readEvents(response.body, (event) => {
          if (event.retry) retryMs = event.retry;
          if (event.id) lastId = event.id;
          if (event.data) {
            const data = JSON.parse(event.data);
            onStatus(data);
            if (TERMINAL.has(data.status)) controller.abort();
          }
        });
        if (ended === "aborted") return;
      } catch (error) {
        if (controller.signal.aborted) return;
        if (attempt > 30) return onError(error);
      }
      await new Promise((resolve) => setTimeout(resolve, Math.min(retryMs * 2 ** Math.min(attempt, 3), 15000)));
    }
  };
  run();
  return () => controller.abort();
}

/** Parse a text/event-stream body; resolves when it ends ("ended") or is aborted ("aborted"). */
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = {};
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return "ended";
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (event.data !== undefined || event.retry) onEvent(event);
          event = {};
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "data") event.data = event.data === undefined ? text : `${event.data}\n${text}`;
          else if (field === "id") event.id = text;
          else if (field === "event") event.event = text;
          else if (field === "retry" && /^\d+$/.test(text)) event.retry = Number(text);
        }
      }
    }
  } catch (error) {
    if (error.name === "AbortError") return "aborted";
    throw error;
  }
}
