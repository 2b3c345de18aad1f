import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { SpanKind, SpanStatusCode, propagation, trace } from '@opentelemetry/api';
import { InMemorySpanExporter, type ReadableSpan } from '@opentelemetry/sdk-trace-node';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { loadProvisionerConfig, startProvisioner } from '../../src/provisioner/index.js';
import type { WorkspaceJobOptions } from '../../src/producer/job-options.js';
import { ConfigError } from '../../src/shared/config.js';
import {
  ATTR,
  bullmqTelemetry,
  inSpan,
  startTracing,
  tracer,
  type Tracing,
} from '../../src/shared/telemetry.js';
import { WorkerHarness, bounded, POLL } from '../helpers/worker-harness.js';

/** Fast simulated builds whose agent is `dev`, as the seeded workspaces' agents are. */
const SIM_ENV = {
  SIM_BUILD_MS: '20',
  SIM_AGENT_NAMES: 'dev',
  SIM_AGENT_CONNECT_MS: '20',
  SIM_STARTUP_MS: '20',
};

function spanNamed(spans: ReadableSpan[], name: string, filter: (s: ReadableSpan) => boolean = () => true) {
  const found = spans.filter((s) => s.name === name && filter(s));
  if (found.length === 0) throw new Error(`no span ${name} yet; have ${spans.map((s) => s.name).join(', ')}`);
  return found;
}

describe('tracing', () => {
  let tracing: Tracing | undefined;

  afterEach(async () => {
    await tracing?.shutdown();
    tracing = undefined;
  });

  describe('when OTEL_EXPORTER_OTLP_ENDPOINT is unset or empty', () => {
    it('registers nothing: spans are no-ops and BullMQ gets no telemetry', async () => {
      for (const env of [{}, { OTEL_EXPORTER_OTLP_ENDPOINT: '  ' }]) {
        tracing = await startTracing({ serviceName: 'workspace-jobs-test', env });
        expect(tracing.enabled).toBe(false);
        expect(bullmqTelemetry()).toBeUndefined();
        const span = tracer().startSpan('probe');
        expect(span.isRecording()).toBe(false);
        expect(trace.isSpanContextValid(span.spanContext())).toBe(false);
        span.end();
        // No propagator was registered either.
        expect(propagation.fields()).toEqual([]);
        await tracing.shutdown();
      }
    });
  });

  it('when the endpoint is not an http(s) URL › refuses to start, naming the variable', async () => {
    await expect(
      startTracing({ serviceName: 'x', env: { OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318' } }),
    ).rejects.toThrow(ConfigError);
    await expect(
      startTracing({ serviceName: 'x', env: { OTEL_EXPORTER_OTLP_ENDPOINT: 'not a url' } }),
    ).rejects.toThrow(/OTEL_EXPORTER_OTLP_ENDPOINT/);
    expect(bullmqTelemetry()).toBeUndefined();
  });

  it("does not record BullMQ's periodic housekeeping traces, only what a job does", async () => {
    const exporter = new InMemorySpanExporter();
    tracing = await startTracing({ serviceName: 'workspace-jobs-test', exporter });
    for (const name of ['moveStalledJobsToWait workspaces', 'extendLocks workspaces']) {
      expect(tracer().startSpan(name).isRecording()).toBe(false);
    }
    for (const name of ['process workspaces', 'startStalledCheckTimer workspaces']) {
      expect(tracer().startSpan(name).isRecording()).toBe(true);
    }
    // Only roots are judged by name; inside a recorded trace everything is recorded.
    await inSpan('attempt start-workspace', {}, async () => {
      expect(tracer().startSpan('extendLocks workspaces').isRecording()).toBe(true);
    });
  });

  describe('when OTEL_EXPORTER_OTLP_ENDPOINT is set', () => {
    let server: Server;
    const received: { url: string; contentType: string; body: string }[] = [];

    beforeEach(async () => {
      received.length = 0;
      server = createServer((request: IncomingMessage, response) => {
        const chunks: Buffer[] = [];
        request.on('data', (chunk: Buffer) => chunks.push(chunk));
        request.on('end', () => {
          received.push({
            url: request.url ?? '',
            contentType: request.headers['content-type'] ?? '',
            body: Buffer.concat(chunks).toString('utf8'),
          });
          response.writeHead(200, { 'content-type': 'application/json' }).end('{}');
        });
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    });

    afterEach(async () => {
      await new Promise((resolve) => server.close(resolve));
    });

    it('exports spans over OTLP/HTTP to <endpoint>/v1/traces under OTEL_SERVICE_NAME, flushed by shutdown', async () => {
      const { port } = server.address() as AddressInfo;
      tracing = await startTracing({
        serviceName: 'workspace-jobs-test',
        env: { OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}/`, OTEL_SERVICE_NAME: 'otlp-probe' },
      });
      expect(tracing.enabled).toBe(true);
      expect(bullmqTelemetry()).toBeDefined();
      await inSpan('probe-span', {}, async (span) => expect(span.isRecording()).toBe(true));

      await tracing.shutdown();
      expect(received).toHaveLength(1);
      expect(received[0]!.url).toBe('/v1/traces');
      expect(received[0]!.body).toContain('probe-span');
      expect(received[0]!.body).toContain('otlp-probe');
      // Unregistered again: the process is as it was before startTracing.
      expect(tracer().startSpan('after').isRecording()).toBe(false);
      expect(bullmqTelemetry()).toBeUndefined();
    });

    it('when the collector does not answer › shutdown still returns within its bound', async () => {
      // A port nothing listens on after close: the export fails; shutdown must not hang on it.
      const { port } = server.address() as AddressInfo;
      await new Promise((resolve) => server.close(resolve));
      server = createServer().listen(0, '127.0.0.1');
      tracing = await startTracing({
        serviceName: 'workspace-jobs-test',
        env: { OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}` },
        shutdownTimeoutMs: 1_000,
      });
      await inSpan('lost-span', {}, async () => {});
      await bounded(tracing.shutdown(), 4_000, 'tracing.shutdown');
      expect(tracer().startSpan('after').isRecording()).toBe(false);
    });
  });

  describe('from the enqueue through the worker to the provisioner', () => {
    let exporter: InMemorySpanExporter;
    let harness: WorkerHarness;

    beforeEach(async () => {
      // A new one each time: shutting tracing down shuts its exporter down for good.
      exporter = new InMemorySpanExporter();
      // Before the harness: its producer picks BullMQ's telemetry up from the running tracing.
      tracing = await startTracing({ serviceName: 'workspace-jobs-test', exporter });
      // The harness's SQL provisioner stays paused: the real daemon below runs the builds.
      harness = await WorkerHarness.create({ provisioner: { paused: true } });
      const daemon = await startProvisioner(harness.config(), loadProvisionerConfig(SIM_ENV), harness.log);
      harness.onClose(() => daemon.stop(1_000));
      await harness.startWorker();
    });

    afterEach(async () => {
      await harness.close();
    });

    it('links the attempt to the enqueue span and the build to the attempt, each in a trace of its own', async () => {
      const ws = await harness.seedStoppedWorkspace();
      const { jobId } = await harness.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
      const result = await harness.producer.waitForResult(jobId, { timeoutMs: 20_000 });
      expect(result).toMatchObject({ kind: 'start-workspace', ok: true, started: true });

      const spans = await vi.waitFor(() => {
        const finished = exporter.getFinishedSpans();
        spanNamed(finished, 'process workspaces');
        spanNamed(finished, 'build start');
        return finished;
      }, POLL);
      const [enqueue] = spanNamed(spans, 'enqueue start-workspace');
      const [add] = spanNamed(spans, 'add workspaces.start-workspace');
      const [process] = spanNamed(spans, 'process workspaces');
      const [attempt] = spanNamed(spans, 'attempt start-workspace');
      const [build] = spanNamed(spans, 'build start');

      expect(enqueue!.kind).toBe(SpanKind.PRODUCER);
      expect(enqueue!.attributes).toMatchObject({
        [ATTR.jobId]: jobId,
        [ATTR.jobName]: 'start-workspace',
        [ATTR.chatId]: ws.chatId,
        [ATTR.workspaceId]: ws.workspaceId,
        [ATTR.deduplicated]: false,
      });
      // BullMQ's own spans: its add inside our enqueue; its process span starts the attempt's trace.
      expect(add!.instrumentationScope.name).toBe('bullmq');
      expect(add!.parentSpanContext?.spanId).toBe(enqueue!.spanContext().spanId);
      expect(process!.instrumentationScope.name).toBe('bullmq');
      expect(process!.kind).toBe(SpanKind.CONSUMER);
      expect(process!.parentSpanContext).toBeUndefined();

      expect(attempt!.attributes).toMatchObject({
        [ATTR.jobId]: jobId,
        [ATTR.jobName]: 'start-workspace',
        [ATTR.attempt]: 1,
        [ATTR.chatId]: ws.chatId,
        [ATTR.jobOutcome]: 'ok',
      });
      expect(attempt!.parentSpanContext?.spanId).toBe(process!.spanContext().spanId);
      expect(attempt!.spanContext().traceId).not.toBe(enqueue!.spanContext().traceId);
      expect(attempt!.links.map((l) => l.context)).toEqual([
        expect.objectContaining({
          traceId: enqueue!.spanContext().traceId,
          spanId: enqueue!.spanContext().spanId,
        }),
      ]);

      const { rows } = await harness.db.pool.query<{ job_id: string; build_id: string }>(
        `SELECT b.job_id, b.id AS build_id FROM workspace_builds b
          WHERE b.workspace_id = $1 AND b.build_number = 3`,
        [ws.workspaceId],
      );
      expect(build!.parentSpanContext).toBeUndefined();
      expect(build!.spanContext().traceId).not.toBe(attempt!.spanContext().traceId);
      expect(build!.attributes).toMatchObject({
        [ATTR.provisionerJobId]: rows[0]!.job_id,
        [ATTR.buildId]: rows[0]!.build_id,
        [ATTR.transition]: 'start',
        [ATTR.buildOutcome]: 'succeeded',
      });
      expect(build!.links.map((l) => l.context)).toEqual([
        expect.objectContaining({
          traceId: attempt!.spanContext().traceId,
          spanId: attempt!.spanContext().spanId,
        }),
      ]);
    });

    it('when a job was added without the producer, or with a bad trace context › its attempt is traced without a link', async () => {
      const chatId = randomUUID();
      const payload = { chatId, ownerId: 'not-a-uuid', workspaceId: randomUUID() };
      const plain = await harness.queue.add('start-workspace', payload, { attempts: 1 });
      const garbled = await harness.queue.add('start-workspace', payload, {
        attempts: 1,
        traceContext: { traceparent: '00-not-a-trace-id-01' },
      } as WorkspaceJobOptions);
      await harness.waitForState(plain.id!, ['failed']);
      await harness.waitForState(garbled.id!, ['failed']);

      const attempts = await vi.waitFor(() => {
        const found = spanNamed(exporter.getFinishedSpans(), 'attempt start-workspace');
        if (found.length < 2) throw new Error('not both attempts yet');
        return found;
      }, POLL);
      expect(attempts.map((a) => a.attributes[ATTR.jobId]).sort()).toEqual([plain.id, garbled.id].sort());
      for (const attempt of attempts) {
        expect(attempt.links).toEqual([]);
        // A final failure carries the result's code, and the span is an error.
        expect(attempt.attributes[ATTR.jobOutcome]).toBe('invalid_payload');
        expect(attempt.status.code).toBe(SpanStatusCode.ERROR);
      }
    });

    it('when a job ends with an expected failure result › its attempt carries the code and is not an error', async () => {
      const owner = await harness.seedOwner();
      const { rows } = await harness.db.pool.query<{ id: string }>(
        'INSERT INTO chats (owner_id) VALUES ($1) RETURNING id',
        [owner.ownerId],
      );
      const job = await harness.queue.add(
        'start-workspace',
        { chatId: rows[0]!.id, ownerId: owner.ownerId, workspaceId: randomUUID() },
        { attempts: 1 },
      );
      await harness.waitForState(job.id!, ['completed']);

      const [attempt] = await vi.waitFor(
        () => spanNamed(exporter.getFinishedSpans(), 'attempt start-workspace'),
        POLL,
      );
      expect(attempt!.attributes[ATTR.jobOutcome]).toBe('no_workspace');
      expect(attempt!.status.code).not.toBe(SpanStatusCode.ERROR);
    });

    it('when an attempt is re-queued because the chat lock is busy › each attempt links to the same enqueue span', async () => {
      const ws = await harness.seedStoppedWorkspace();
      const held = await harness.locks().tryAcquire(ws.chatId);
      expect(held).toBeDefined();
      const { jobId } = await harness.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
      await harness.waitForEvent(ws.chatId, 'waiting_for_lock', (e) => e.job.id === jobId);
      await held!.release();
      await expect(harness.producer.waitForResult(jobId, { timeoutMs: 20_000 })).resolves.toMatchObject({
        kind: 'start-workspace',
        ok: true,
        started: true,
      });

      const [enqueue] = spanNamed(exporter.getFinishedSpans(), 'enqueue start-workspace');
      const attempts = await vi.waitFor(() => {
        const found = spanNamed(exporter.getFinishedSpans(), 'attempt start-workspace');
        if (found.at(-1)!.attributes[ATTR.jobOutcome] !== 'ok') throw new Error('no successful attempt yet');
        return found;
      }, POLL);
      expect(attempts.length).toBeGreaterThanOrEqual(2);
      expect(attempts[0]!.attributes[ATTR.jobOutcome]).toBe('delayed');
      // A re-queue on purpose is not an error.
      expect(attempts[0]!.status.code).not.toBe(SpanStatusCode.ERROR);
      for (const attempt of attempts) {
        expect(attempt.links[0]?.context.spanId).toBe(enqueue!.spanContext().spanId);
      }
      expect(new Set(attempts.map((a) => a.spanContext().traceId)).size).toBe(attempts.length);
    });
  });
});
