// Tracing as an operator turns it on: `enqueue`, `worker` and `provisioner` as real processes with
// OTEL_EXPORTER_OTLP_ENDPOINT pointing at a local OTLP/HTTP receiver, on real Redis and Postgres. Their spans
// arrive under each process's service name, linked across the queue and the provisioner_jobs table.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { CliProcess, killAll, runCli } from '../helpers/cli-process.js';
import { TEST_REDIS_URL } from '../helpers/redis.js';
import { WorkerHarness, POLL } from '../helpers/worker-harness.js';

const EXIT_MS = 15_000;

interface OtlpSpan {
  service: string;
  scope: string;
  name: string;
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  links: { traceId: string; spanId: string }[];
}

/** The spans of OTLP/HTTP JSON export requests (ids in hex, as the JSON encoding has them). */
function spansOf(bodies: string[]): OtlpSpan[] {
  const spans: OtlpSpan[] = [];
  for (const body of bodies) {
    const request = JSON.parse(body) as {
      resourceSpans: {
        resource: { attributes: { key: string; value: { stringValue?: string } }[] };
        scopeSpans: { scope: { name: string }; spans: Omit<OtlpSpan, 'service' | 'scope'>[] }[];
      }[];
    };
    for (const resourceSpans of request.resourceSpans) {
      const service = resourceSpans.resource.attributes.find((a) => a.key === 'service.name')?.value
        .stringValue;
      for (const { scope, spans: scoped } of resourceSpans.scopeSpans) {
        for (const span of scoped) spans.push({ ...span, service: service ?? '', scope: scope.name });
      }
    }
  }
  return spans;
}

describe('tracing across processes', () => {
  let h: WorkerHarness;
  let receiver: Server;
  const bodies: string[] = [];

  beforeEach(async () => {
    bodies.length = 0;
    receiver = createServer((request, response) => {
      const chunks: Buffer[] = [];
      request.on('data', (chunk: Buffer) => chunks.push(chunk));
      request.on('end', () => {
        if (request.url === '/v1/traces') bodies.push(Buffer.concat(chunks).toString('utf8'));
        response.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      });
    });
    await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
    // The harness's SQL provisioner stays paused: the provisioner process runs the builds.
    h = await WorkerHarness.create({ provisioner: { paused: true } });
  });

  afterEach(async () => {
    // A test that failed half-way leaves no process behind.
    await killAll();
    await h.close();
    await new Promise((resolve) => receiver.close(resolve));
  });

  function env(): Record<string, string> {
    return {
      REDIS_URL: TEST_REDIS_URL,
      DATABASE_URL: h.db.url,
      QUEUE_PREFIX: h.prefix,
      LOG_LEVEL: 'info',
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`,
      WORKER_CONCURRENCY: '5',
      SIM_BUILD_MS: '20',
      SIM_AGENT_NAMES: 'dev',
      SIM_AGENT_CONNECT_MS: '20',
      SIM_STARTUP_MS: '20',
    };
  }

  function start(command: string, ready: string): Promise<CliProcess> {
    const cli = new CliProcess(command, [command], env());
    return cli.waitForLog(ready, (l) => l.msg === ready).then(() => cli);
  }

  it('when OTEL_EXPORTER_OTLP_ENDPOINT is set › enqueue, attempt and build spans arrive, linked, under each service', async () => {
    const [worker, provisioner] = await Promise.all([
      start('worker', 'worker started'),
      start('provisioner', 'provisioner daemon running'),
    ]);
    const ws = await h.seedStoppedWorkspace();
    const enqueue = await runCli(['enqueue', 'start', '--chat', ws.chatId, '--wait'], env());
    expect(enqueue.exit).toEqual({ code: 0, signal: null });

    // Shutdown flushes what the batch exporters still hold.
    for (const cli of [worker, provisioner]) {
      cli.signal('SIGTERM');
      expect(await cli.waitForExit(EXIT_MS)).toEqual({ code: 0, signal: null });
    }
    const spans = await vi.waitFor(() => {
      const all = spansOf(bodies);
      for (const name of ['enqueue start-workspace', 'attempt start-workspace', 'build start']) {
        if (!all.some((s) => s.name === name)) throw new Error(`no ${name} span received`);
      }
      return all;
    }, POLL);
    const one = (name: string) => spans.filter((s) => s.name === name);

    const [enqueueSpan] = one('enqueue start-workspace');
    expect(enqueueSpan!.service).toBe('workspace-jobs-producer');
    expect(one('add workspaces.start-workspace')[0]).toMatchObject({
      service: 'workspace-jobs-producer',
      scope: 'bullmq',
      parentSpanId: enqueueSpan!.spanId,
    });

    const attempts = one('attempt start-workspace');
    expect(attempts).toHaveLength(1);
    const attempt = attempts[0]!;
    expect(attempt.service).toBe('workspace-jobs-worker');
    expect(attempt.traceId).not.toBe(enqueueSpan!.traceId);
    expect(attempt.links).toEqual([
      expect.objectContaining({ traceId: enqueueSpan!.traceId, spanId: enqueueSpan!.spanId }),
    ]);
    const process = one('process workspaces').find((s) => s.spanId === attempt.parentSpanId);
    expect(process).toMatchObject({ service: 'workspace-jobs-worker', scope: 'bullmq' });

    const [build] = one('build start');
    expect(build!.service).toBe('workspace-jobs-provisioner');
    expect(build!.traceId).not.toBe(attempt.traceId);
    expect(build!.links).toEqual([
      expect.objectContaining({ traceId: attempt.traceId, spanId: attempt.spanId }),
    ]);
  });
});
