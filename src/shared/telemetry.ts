// Tracing with OpenTelemetry, off unless OTEL_EXPORTER_OTLP_ENDPOINT is set. A process calls startTracing
// once at start-up and shutdown() once at the end; code that makes spans uses `inSpan`, which
// are no-ops while nothing is registered. Spans are linked, not parented, across the queue and the
// provisioner_jobs table: a span's context travels as W3C Trace Context (traceCarrier) and the span on
// the other side starts its own trace with a link to it (linkTo), so a job retried for an hour does not
// make one hour-long trace.
import {
  ROOT_CONTEXT,
  SpanStatusCode,
  context,
  defaultTextMapGetter,
  defaultTextMapSetter,
  isSpanContextValid,
  propagation,
  trace,
  type Context,
  type Link,
  type Span,
  type SpanOptions,
  type Tracer,
} from '@opentelemetry/api';
import { W3CTraceContextPropagator, loggingErrorHandler, setGlobalErrorHandler } from '@opentelemetry/core';
import type { SpanExporter } from '@opentelemetry/sdk-trace-node';
import type { Telemetry } from 'bullmq';
import { pino } from 'pino';
import { url, value, type Env } from './config.js';
import { withTimeout } from './errors.js';
import type { Logger } from './logger.js';

/**
 * Our spans' tracer (scope `workspace-jobs`; BullMQ's own spans come from scope `bullmq`). Asked for on
 * each use: a tracer kept from before would keep a provider that has been shut down since.
 */
export function tracer(): Tracer {
  return trace.getTracer('workspace-jobs');
}

/** Attributes of our spans. */
export const ATTR = {
  jobId: 'workspace_jobs.job.id',
  jobName: 'workspace_jobs.job.name',
  attempt: 'workspace_jobs.job.attempt',
  deduplicated: 'workspace_jobs.job.deduplicated',
  /** Of an attempt: `ok`, the failure code of a final result, `delayed` (re-queued) or `error` (thrown). */
  jobOutcome: 'workspace_jobs.job.outcome',
  chatId: 'workspace_jobs.chat.id',
  workspaceId: 'workspace_jobs.workspace.id',
  buildId: 'workspace_jobs.build.id',
  buildNumber: 'workspace_jobs.build.number',
  transition: 'workspace_jobs.build.transition',
  provisionerJobId: 'workspace_jobs.provisioner_job.id',
  provisionerId: 'workspace_jobs.provisioner.id',
  /** Of a build: `succeeded`, `failed`, `canceled`, `lost` (settled elsewhere) or `aborted`. */
  buildOutcome: 'workspace_jobs.build.outcome',
} as const;

/** A span's context as W3C Trace Context fields, stored with a job (its options) or a provisioner job row. */
export interface TraceCarrier {
  traceparent: string;
  tracestate?: string;
}

export interface TracingOptions {
  /** The service name when OTEL_SERVICE_NAME is unset, e.g. `workspace-jobs-worker`. */
  serviceName: string;
  /** Where OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_SERVICE_NAME are read. Default process.env. */
  env?: Env;
  /**
   * Spans go to this exporter, one by one as they end, instead of OTLP, endpoint or not (tests pass an
   * InMemorySpanExporter). Default: OTLP over HTTP when the endpoint is set, else tracing stays off.
   */
  exporter?: SpanExporter;
  /** How long shutdown() waits for the last spans to be exported. Default 5000. */
  shutdownTimeoutMs?: number;
  log?: Logger;
}

export interface Tracing {
  /** False when nothing was registered: no provider, no exporter, no timer; every span is a no-op. */
  readonly enabled: boolean;
  /** Exports what is left (bounded by shutdownTimeoutMs) and unregisters. Never rejects; safe to call twice. */
  shutdown(): Promise<void>;
}

const DEFAULT_SHUTDOWN_TIMEOUT_MS = 5_000;
/**
 * BullMQ's periodic housekeeping, each a trace of its own every few seconds per worker (the stalled check
 * every STALLED_INTERVAL_MS, lock renewal every half JOB_LOCK_MS): not recorded, or idle workers would fill
 * the tracing backend. A stalled job is logged by the worker, and its next attempt is traced.
 */
const UNRECORDED_ROOT_SPANS = /^(moveStalledJobsToWait|extendLocks) /;
/** Export failures (a collector that is down) are logged at most this often. */
const EXPORT_ERROR_LOG_INTERVAL_MS = 60_000;

// Our own carrier format whatever propagator the host process registered (the producer runs inside the
// chat backend, which may use another one, or none).
const w3c = new W3CTraceContextPropagator();

/** BullMQ's own spans (bullmq-otel) while startTracing's tracing runs. */
let bullmq: Telemetry | undefined;

const OFF: Tracing = { enabled: false, shutdown: () => Promise.resolve() };

/**
 * Registers a tracer provider (with AsyncLocalStorage context and W3C propagation) exporting over OTLP/HTTP
 * to OTEL_EXPORTER_OTLP_ENDPOINT (`/v1/traces` appended), or to `options.exporter`. Without either it
 * registers nothing and loads no SDK. Throws ConfigError for an endpoint that is not an http(s) URL.
 */
export async function startTracing(options: TracingOptions): Promise<Tracing> {
  const env = options.env ?? process.env;
  const endpoint = otlpEndpoint(env);
  if (endpoint === undefined && options.exporter === undefined) return OFF;
  if (bullmq) throw new Error('tracing is already started in this process');
  const log = options.log ?? pino({ level: 'silent' });
  const serviceName = value(env, 'OTEL_SERVICE_NAME') ?? options.serviceName;

  // Loaded only when tracing is on: a process without an endpoint does not pay for the SDK.
  const [sdk, { resourceFromAttributes }, semconv, { BullMQOtel }] = await Promise.all([
    import('@opentelemetry/sdk-trace-node'),
    import('@opentelemetry/resources'),
    import('@opentelemetry/semantic-conventions'),
    import('bullmq-otel'),
  ]);
  const spanProcessor = options.exporter
    ? new sdk.SimpleSpanProcessor(options.exporter)
    : new sdk.BatchSpanProcessor(await otlpExporter(endpoint!));
  const provider = new sdk.NodeTracerProvider({
    resource: resourceFromAttributes({ [semconv.ATTR_SERVICE_NAME]: serviceName }),
    spanProcessors: [spanProcessor],
    sampler: new sdk.ParentBasedSampler({
      root: {
        shouldSample: (_ctx, _traceId, spanName) => ({
          decision: UNRECORDED_ROOT_SPANS.test(spanName)
            ? sdk.SamplingDecision.NOT_RECORD
            : sdk.SamplingDecision.RECORD_AND_SAMPLED,
        }),
        toString: () => 'WithoutBullMQHousekeeping',
      },
    }),
  });
  provider.register();
  bullmq = new BullMQOtel({ tracerName: 'bullmq' });

  let lastErrorLog = 0;
  setGlobalErrorHandler((error) => {
    if (Date.now() - lastErrorLog < EXPORT_ERROR_LOG_INTERVAL_MS) return;
    lastErrorLog = Date.now();
    log.warn({ err: error, endpoint }, 'could not export traces (logged at most once a minute)');
  });
  log.info({ serviceName, endpoint: endpoint ?? '(in-process exporter)' }, 'tracing on');

  let stopped: Promise<void> | undefined;
  const timeoutMs = options.shutdownTimeoutMs ?? DEFAULT_SHUTDOWN_TIMEOUT_MS;
  return {
    enabled: true,
    shutdown() {
      stopped ??= (async () => {
        try {
          await withTimeout(provider.shutdown(), timeoutMs, 'exporting the last spans');
        } catch (error) {
          log.warn({ err: error }, 'traces not exported at shutdown');
        } finally {
          bullmq = undefined;
          trace.disable();
          context.disable();
          propagation.disable();
          setGlobalErrorHandler(loggingErrorHandler());
        }
      })();
      return stopped;
    },
  };
}

/** BullMQ's own spans for a Queue or Worker (`telemetry` option) while tracing runs; else undefined. */
export function bullmqTelemetry(): Telemetry | undefined {
  return bullmq;
}

/**
 * Runs `fn` in a new active span that ends when `fn` settles. A rejection is recorded on the span as an
 * error unless `isFailure` says it is not one (a job re-queued by a DelayedError).
 */
export function inSpan<T>(
  name: string,
  options: SpanOptions,
  fn: (span: Span) => Promise<T>,
  isFailure: (error: unknown) => boolean = () => true,
): Promise<T> {
  const parent = context.active();
  const span = tracer().startSpan(name, options, parent);
  // Tracing off (no provider: a span that records nothing and carries no trace): `fn` alone, without a
  // context to make active or an async frame around it that a waiting job would hold (issue 11).
  if (!span.isRecording() && !isSpanContextValid(span.spanContext())) return fn(span);
  return context.with(trace.setSpan(parent, span), async () => {
    try {
      return await fn(span);
    } catch (error) {
      if (isFailure(error)) {
        span.recordException(error instanceof Error ? error : String(error));
        span.setStatus({
          code: SpanStatusCode.ERROR,
          message: error instanceof Error ? error.message : String(error),
        });
      }
      throw error;
    } finally {
      span.end();
    }
  });
}

/** The active span's context to carry across the queue or the database; undefined when there is none. */
export function traceCarrier(ctx: Context = context.active()): TraceCarrier | undefined {
  const spanContext = trace.getSpanContext(ctx);
  if (!spanContext || !isSpanContextValid(spanContext)) return undefined;
  const carrier: Record<string, string> = {};
  w3c.inject(ctx, carrier, defaultTextMapSetter);
  if (carrier.traceparent === undefined) return undefined;
  return {
    traceparent: carrier.traceparent,
    ...(carrier.tracestate !== undefined && { tracestate: carrier.tracestate }),
  };
}

/** A link to the span a carrier describes; none for anything else (carriers come from Redis and Postgres). */
export function linkTo(carrier: unknown): Link[] {
  if (carrier === null || typeof carrier !== 'object') return [];
  const fields = carrier as Record<string, unknown>;
  if (typeof fields.traceparent !== 'string') return [];
  const headers: Record<string, string> = { traceparent: fields.traceparent };
  if (typeof fields.tracestate === 'string') headers.tracestate = fields.tracestate;
  const spanContext = trace.getSpanContext(w3c.extract(ROOT_CONTEXT, headers, defaultTextMapGetter));
  return spanContext && isSpanContextValid(spanContext) ? [{ context: spanContext }] : [];
}

/** OTEL_EXPORTER_OTLP_ENDPOINT, checked; undefined when unset or empty (tracing off). */
function otlpEndpoint(env: Env): string | undefined {
  if (value(env, 'OTEL_EXPORTER_OTLP_ENDPOINT') === undefined) return undefined;
  return url(env, 'OTEL_EXPORTER_OTLP_ENDPOINT', '', ['http:', 'https:']);
}

async function otlpExporter(endpoint: string): Promise<SpanExporter> {
  const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-http');
  // The base endpoint gets the signal's path, as the OTLP exporter specification says.
  return new OTLPTraceExporter({ url: `${endpoint.replace(/\/+$/, '')}/v1/traces` });
}
