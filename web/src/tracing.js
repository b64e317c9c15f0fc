// Browser tracing: the OpenTelemetry web SDK, exporting OTLP/HTTP JSON to the API's /v1/traces,
// which forwards to the collector. The fetch instrumentation puts `traceparent` on the page's
// requests to the API, so the browser's spans and the API's, the queue's and the worker's are one
// trace.
import { SpanStatusCode, trace } from "@opentelemetry/api";
import { DocumentLoadInstrumentation } from "@opentelemetry/instrumentation-document-load";
import { FetchInstrumentation } from "@opentelemetry/instrumentation-fetch";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { registerInstrumentations } from "@opentelemetry/instrumentation";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BatchSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { WebTracerProvider } from "@opentelemetry/sdk-trace-web";

export const SERVICE_NAME = "pagelens-web";

// Telemetry about telemetry and long-lived streams would only be noise in the traces.
const UNTRACED = [/\/v1\/traces$/, /\/events(\?|$)/];

let provider = null;

/**
 * Install the tracer provider. Spans are exported only when the server collects them
 * (`config.browserTraces`); trace context is propagated either way, so the scan's trace id is the
 * one the browser started.
 * @param {{browserTraces: boolean, version: string}} config
 * @param {() => Record<string, string>} authHeaders headers the exporter must send (an API key)
 */
export function setupTracing(config, authHeaders) {
  const spanProcessors = [];
  if (config.browserTraces) {
    const exporter = new OTLPTraceExporter({
      url: new URL("/v1/traces", window.location.href).href,
      headers: async () => authHeaders(),
    });
    spanProcessors.push(new BatchSpanProcessor(exporter, { scheduledDelayMillis: 1000 }));
  }
  provider = new WebTracerProvider({
    resource: resourceFromAttributes({ "service.name": SERVICE_NAME, "service.version": config.version }),
    spanProcessors,
  });
  provider.register();
  registerInstrumentations({
    instrumentations: [
      new DocumentLoadInstrumentation(),
      new FetchInstrumentation({ ignoreUrls: UNTRACED, clearTimingResources: true }),
    ],
  });
  // A closing tab still sends what it has.
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "hidden") flush();
  });
}

export function flush() {
  return provider ? provider.forceFlush() : Promise.resolve();
}

/**
 * Run `work` inside a new active span. `work` must start its fetch before its first `await`: the
 * web SDK's context lives on the call stack, so only synchronous code sees the span as current.
 * @template T
 * @param {string} name
 * @param {Record<string, string | number | boolean>} attributes
 * @param {(span: import("@opentelemetry/api").Span) => Promise<T>} work
 * @returns {Promise<T>}
 */
export function withSpan(name, attributes, work) {
  const tracer = trace.getTracer(SERVICE_NAME);
  return tracer.startActiveSpan(name, { attributes }, async (span) => {
    try {
      return await work(span);
    } catch (error) {
      span.recordException(error);
      span.setStatus({ code: SpanStatusCode.ERROR, message: String(error.message || error) });
      throw error;
    } finally {
      span.end();
    }
  });
}
