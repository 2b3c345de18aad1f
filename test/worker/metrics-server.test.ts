// The worker's metrics and health server (METRICS_PORT) on real Redis and Postgres: what /metrics says
// after real jobs ran through a WorkspaceWorker, what /healthz says when everything answers and when
// Postgres does not, and the server on its own (404, 405, a check that hangs).
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { insertChat, insertTemplateVersion, setActiveVersion } from '../../src/cli/fixtures.js';
import { redisKeys } from '../../src/shared/keys.js';
import { createLogger } from '../../src/shared/logger.js';
import { HealthStateError } from '../../src/shared/health.js';
import { startMetricsServer, type MetricsServer } from '../../src/worker/metrics-server.js';
import type { WorkspaceWorker } from '../../src/worker/worker.js';
import { adminUrl } from '../helpers/database.js';
import { WAIT_MS, WorkerHarness, bounded, POLL } from '../helpers/worker-harness.js';

/** The worker serves on an ephemeral loopback port. */
const METRICS_ENV = { METRICS_PORT: '0', METRICS_HOST: '127.0.0.1' };
/** Fast retries for jobs added with queue.add. */
const FAST_RETRIES = { attempts: 2, backoff: { type: 'fixed', delay: 10 } } as const;

async function get(url: string): Promise<{ status: number; type: string | null; body: string }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(10_000) });
  return { status: res.status, type: res.headers.get('content-type'), body: await res.text() };
}

async function scrape(worker: WorkspaceWorker): Promise<string> {
  const res = await get(`${worker.metricsUrl}/metrics`);
  expect(res.status).toBe(200);
  return res.body;
}

/** The value of one sample of the Prometheus text: `name` with exactly these labels; undefined when absent. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const found: Record<string, string> = {};
    for (const [, key, value] of (match[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g))
      found[key!] = value!;
    if (JSON.stringify(Object.entries(found).sort()) === JSON.stringify(Object.entries(labels).sort())) {
      return Number(match[3]);
    }
  }
  return undefined;
}

describe('the worker on METRICS_PORT', () => {
  let h: WorkerHarness;

  beforeEach(async () => {
    h = await WorkerHarness.create();
  });

  afterEach(async () => {
    await h.close();
  });

  describe('/metrics', () => {
    it('counts a job that started a workspace: outcome, duration, build, queue counts, process metrics', async () => {
      const worker = await h.startWorker({}, METRICS_ENV);
      expect(worker.metricsUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      const ws = await h.seedStoppedWorkspace();
      const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
      expect(await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS })).toMatchObject({
        kind: 'start-workspace',
        ok: true,
        started: true,
      });
      await h.waitForState(jobId, ['completed']);

      const ok = { name: 'start-workspace', outcome: 'ok', kind: 'ok' };
      const text = await vi.waitFor(async () => {
        const t = await scrape(worker);
        expect(sample(t, 'wsjobs_jobs_finished_total', ok)).toBe(1);
        expect(sample(t, 'wsjobs_queue_jobs', { state: 'completed' })).toBe(1);
        return t;
      }, POLL);
      expect(sample(text, 'wsjobs_job_duration_seconds_count', ok)).toBe(1);
      expect(sample(text, 'wsjobs_job_duration_seconds_sum', ok)).toBeGreaterThan(0);
      expect(sample(text, 'wsjobs_builds_started_total', { transition: 'start' })).toBe(1);
      for (const state of ['waiting', 'active', 'delayed', 'failed', 'prioritized', 'waiting-children']) {
        expect(sample(text, 'wsjobs_queue_jobs', { state }), state).toBe(0);
      }
      // Nothing else happened.
      expect(text).not.toMatch(/^wsjobs_auto_updates_total\{/m);
      expect(sample(text, 'wsjobs_lock_busy_total')).toBe(0);
      expect(sample(text, 'wsjobs_lock_wait_seconds_count')).toBe(0);
      expect(sample(text, 'wsjobs_locks_lost_total')).toBe(0);
      expect(text).not.toMatch(/^wsjobs_job_retries_total\{/m);
      expect(text).not.toMatch(/^wsjobs_event_publish_failures_total\{/m);
      // Node's process metrics, under the same prefix.
      expect(sample(text, 'wsjobs_process_cpu_user_seconds_total')).toBeGreaterThan(0);
      expect(sample(text, 'wsjobs_process_resident_memory_bytes')).toBeGreaterThan(0);
      expect(text).toMatch(/^# TYPE wsjobs_nodejs_eventloop_lag_seconds gauge$/m);
      // The job's progress keeps when a worker first picked it up: the duration counts from there.
      const job = await h.queue.getJob(jobId);
      expect((await h.progressOf(jobId)).startedAt).toBe(new Date(job!.processedOn!).toISOString());
    });

    it('serves the Prometheus text format', async () => {
      const worker = await h.startWorker({}, METRICS_ENV);
      const res = await get(`${worker.metricsUrl}/metrics`);
      expect(res.status).toBe(200);
      expect(res.type).toBe(new Registry().contentType);
      expect(res.body).toMatch(/^# HELP wsjobs_jobs_finished_total /m);
      expect(res.body).toMatch(/^# TYPE wsjobs_job_duration_seconds histogram$/m);
    });

    it('counts an expected failure result by its code and kind, and a create by its name', async () => {
      const worker = await h.startWorker({}, METRICS_ENV);
      const owner = await h.seedOwner();
      // A chat without a workspace: a start gets no_workspace (the producer would refuse; the queue does not).
      const { chatId } = await insertChat(h.db.pool, { ownerId: owner.ownerId });
      const start = await h.queue.add(
        'start-workspace',
        { chatId, ownerId: owner.ownerId, workspaceId: randomUUID() },
        { jobId: WorkerHarness.jobId(), ...FAST_RETRIES },
      );
      await h.waitForState(start.id!, ['completed']);
      // A create for the same chat then makes a workspace and its first build.
      const { jobId } = await h.producer.createWorkspace({
        chatId,
        ownerId: owner.ownerId,
        templateId: owner.templateId,
      });
      await h.waitForState(jobId, ['completed']);

      const text = await vi.waitFor(async () => {
        const t = await scrape(worker);
        expect(
          sample(t, 'wsjobs_jobs_finished_total', { name: 'create-workspace', outcome: 'ok', kind: 'ok' }),
        ).toBe(1);
        return t;
      }, POLL);
      const noWorkspace = { name: 'start-workspace', outcome: 'no_workspace', kind: 'expected' };
      expect(sample(text, 'wsjobs_jobs_finished_total', noWorkspace)).toBe(1);
      expect(sample(text, 'wsjobs_job_duration_seconds_count', noWorkspace)).toBe(1);
      expect(
        sample(text, 'wsjobs_jobs_finished_total', { name: 'start-workspace', outcome: 'ok', kind: 'ok' }),
      ).toBe(undefined);
      expect(sample(text, 'wsjobs_builds_started_total', { transition: 'start' })).toBe(1);
      // A failure result is final: no retry. An expected one completes the job (before issue 8 it failed it).
      expect(text).not.toMatch(/^wsjobs_job_retries_total\{/m);
      expect(sample(text, 'wsjobs_queue_jobs', { state: 'failed' })).toBe(0);
      expect(sample(text, 'wsjobs_queue_jobs', { state: 'completed' })).toBe(2);
      expect(text).not.toMatch(/^wsjobs_jobs_finished_total\{.*kind="failure"/m);
    });

    it("counts an auto-update to the template's active version by its reason", async () => {
      const worker = await h.startWorker({}, METRICS_ENV);
      const owner = await h.seedOwner();
      const ws = await h.seedStoppedWorkspace(owner);
      const v2 = await insertTemplateVersion(h.db.pool, owner.templateId, { name: 'v2' });
      await setActiveVersion(h.db.pool, owner.templateId, v2);
      await h.db.pool.query('UPDATE templates SET require_active_version = true WHERE id = $1', [
        owner.templateId,
      ]);
      const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
      expect(await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS })).toMatchObject({
        updated_to_active_version: true,
      });

      const text = await vi.waitFor(async () => {
        const t = await scrape(worker);
        expect(
          sample(t, 'wsjobs_jobs_finished_total', { name: 'start-workspace', outcome: 'ok', kind: 'ok' }),
        ).toBe(1);
        return t;
      }, POLL);
      expect(sample(text, 'wsjobs_auto_updates_total', { reason: 'require_active_version' })).toBe(1);
      expect(sample(text, 'wsjobs_builds_started_total', { transition: 'start' })).toBe(1);
    });

    it('counts a busy chat lock and observes how long the job waited for it', async () => {
      const worker = await h.startWorker(
        { processor: { lockRetryMinMs: 50, lockRetryMaxMs: 100 } },
        METRICS_ENV,
      );
      const ws = await h.seedStoppedWorkspace();
      const held = await h.locks().tryAcquire(ws.chatId);
      expect(held).not.toBeNull();
      h.onClose(() => held!.release());

      const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
      await expect.poll(async () => (await h.progressOf(jobId)).lockWaits, POLL).toBeGreaterThanOrEqual(2);
      await held!.release();
      await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });

      const text = await vi.waitFor(async () => {
        const t = await scrape(worker);
        expect(
          sample(t, 'wsjobs_jobs_finished_total', { name: 'start-workspace', outcome: 'ok', kind: 'ok' }),
        ).toBe(1);
        return t;
      }, POLL);
      expect(sample(text, 'wsjobs_lock_busy_total')).toBeGreaterThanOrEqual(2);
      expect(sample(text, 'wsjobs_lock_wait_seconds_count')).toBe(1);
      expect(sample(text, 'wsjobs_lock_wait_seconds_sum')).toBeGreaterThan(0);
      // Lock waits are re-delays, not failed attempts.
      expect(text).not.toMatch(/^wsjobs_job_retries_total\{/m);
    });

    it('counts a lost chat lock and the retry it causes; the duration counts from the first attempt', async () => {
      h.provisioner.pause();
      const worker = await h.startWorker(
        { processor: { locks: h.locks({ lockTimeoutMs: 1_500 }) } },
        METRICS_ENV,
      );
      const ws = await h.seedStoppedWorkspace();
      const job = await h.queue.add(
        'start-workspace',
        { chatId: ws.chatId, ownerId: ws.ownerId, workspaceId: ws.workspaceId },
        { jobId: WorkerHarness.jobId(), attempts: 3, backoff: { type: 'fixed', delay: 10 } },
      );
      await h.waitForEvent(ws.chatId, 'build_queued');
      const firstAttemptStart = (await h.queue.getJob(job.id!))!.processedOn!;
      await h.redis.del(redisKeys(h.prefix).chatLock(ws.chatId));
      await h.waitForEvent(ws.chatId, 'waiting_for_existing_build', (e) => e.job.attempt === 2);
      h.provisioner.resume();
      await h.producer.waitForResult(job.id!, { timeoutMs: WAIT_MS });

      const text = await vi.waitFor(async () => {
        const t = await scrape(worker);
        expect(
          sample(t, 'wsjobs_jobs_finished_total', { name: 'start-workspace', outcome: 'ok', kind: 'ok' }),
        ).toBe(1);
        return t;
      }, POLL);
      expect(sample(text, 'wsjobs_locks_lost_total')).toBe(1);
      expect(sample(text, 'wsjobs_job_retries_total', { name: 'start-workspace' })).toBe(1);
      expect(sample(text, 'wsjobs_builds_started_total', { transition: 'start' })).toBe(1);
      const done = await h.waitForState(job.id!, ['completed']);
      expect(done.processedOn).toBeGreaterThan(firstAttemptStart);
      expect((await h.progressOf(job.id!)).startedAt).toBe(new Date(firstAttemptStart).toISOString());
    });

    it('counts events that could not be published, and a job BullMQ failed after its last attempt', async () => {
      const worker = await h.startWorker({}, METRICS_ENV);
      const ws = await h.seedStoppedWorkspace();
      // The chat's replay stream key holds a string: every XADD of the chat's events fails (WRONGTYPE).
      await h.redis.set(redisKeys(h.prefix).chatLog(ws.chatId), 'not a stream');
      const job = await h.queue.add(
        'start-workspace',
        { chatId: ws.chatId, ownerId: ws.ownerId, workspaceId: ws.workspaceId },
        { jobId: WorkerHarness.jobId(), ...FAST_RETRIES },
      );
      // Each attempt runs to its result, which cannot be published: the attempt throws and is retried;
      // after the last one BullMQ fails the job itself, and its safety-net result cannot be published either.
      await h.waitForState(job.id!, ['failed']);

      const text = await vi.waitFor(async () => {
        const t = await scrape(worker);
        expect(sample(t, 'wsjobs_event_publish_failures_total', { type: 'result' })).toBe(3);
        return t;
      }, POLL);
      expect(sample(text, 'wsjobs_event_publish_failures_total', { type: 'progress' })).toBeGreaterThan(2);
      expect(sample(text, 'wsjobs_job_retries_total', { name: 'start-workspace' })).toBe(1);
      expect(
        sample(text, 'wsjobs_jobs_finished_total', {
          name: 'start-workspace',
          outcome: 'internal',
          kind: 'failure',
        }),
      ).toBe(1);
      expect(sample(text, 'wsjobs_queue_jobs', { state: 'failed' })).toBe(1);
      expect(
        sample(text, 'wsjobs_jobs_finished_total', { name: 'start-workspace', outcome: 'ok', kind: 'ok' }),
      ).toBe(undefined);
    });
  });

  describe('/healthz', () => {
    it('answers 200 when Redis, Postgres and the worker are fine, and 404 for other paths', async () => {
      const worker = await h.startWorker({}, METRICS_ENV);
      const res = await get(`${worker.metricsUrl}/healthz`);
      expect(res.status).toBe(200);
      expect(res.type).toBe('application/json');
      expect(JSON.parse(res.body)).toEqual({ status: 'ok', redis: 'ok', postgres: 'ok', worker: 'running' });
      expect((await get(`${worker.metricsUrl}/`)).status).toBe(404);
      expect((await get(`${worker.metricsUrl}/admin/queues`)).status).toBe(404);
      expect((await get(`${worker.metricsUrl}/healthz/x`)).status).toBe(404);
      // A query string does not matter.
      expect((await get(`${worker.metricsUrl}/healthz?verbose=1`)).status).toBe(200);
    });

    it('answers 503 naming postgres while the database refuses connections, and 200 again after', async () => {
      const worker = await h.startWorker({}, METRICS_ENV);
      expect((await get(`${worker.metricsUrl}/healthz`)).status).toBe(200);

      const admin = new pg.Client({ connectionString: adminUrl() });
      await admin.connect();
      const allow = (on: boolean) =>
        admin.query(`ALTER DATABASE ${pg.escapeIdentifier(h.db.name)} ALLOW_CONNECTIONS ${on}`);
      try {
        await allow(false);
        // The worker's pool must open a new connection, which the database now refuses.
        await admin.query(
          `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
            WHERE datname = $1 AND application_name = 'workspace-jobs-worker'`,
          [h.db.name],
        );
        const down = await vi.waitFor(async () => {
          const res = await get(`${worker.metricsUrl}/healthz`);
          expect(res.status).toBe(503);
          return res;
        }, POLL);
        expect(JSON.parse(down.body)).toEqual({
          status: 'unavailable',
          redis: 'ok',
          postgres: 'error',
          worker: 'running',
        });
      } finally {
        await allow(true);
        await admin.end();
      }
      await expect.poll(async () => (await get(`${worker.metricsUrl}/healthz`)).status, POLL).toBe(200);
    });

    it('answers 503 with worker closing during the grace period; the server is gone once closed', async () => {
      h.provisioner.pause();
      const worker = await h.startWorker({}, METRICS_ENV);
      const url = worker.metricsUrl!;
      const ws = await h.seedStoppedWorkspace();
      const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
      await h.waitForEvent(ws.chatId, 'build_queued');

      h.workers.delete(worker);
      const closing = worker.close(WAIT_MS);
      try {
        const res = await get(`${url}/healthz`);
        expect(res.status).toBe(503);
        expect(JSON.parse(res.body)).toMatchObject({ status: 'unavailable', worker: 'closing' });
        // Still scraped while the job finishes.
        expect((await get(`${url}/metrics`)).status).toBe(200);
      } finally {
        h.provisioner.resume();
        await bounded(closing, WAIT_MS + 5_000, 'WorkspaceWorker.close');
      }
      expect(await h.queue.getJobState(jobId)).toBe('completed');
      await expect(fetch(`${url}/healthz`, { signal: AbortSignal.timeout(5_000) })).rejects.toThrow();
    });
  });
});

describe('startMetricsServer', () => {
  const log = createLogger('silent');
  let server: MetricsServer | undefined;

  afterEach(async () => {
    await server?.close();
    server = undefined;
  });

  it('bounds every check: one that hangs is a timeout, and the others still answer', async () => {
    server = await startMetricsServer({
      port: 0,
      host: '127.0.0.1',
      registry: new Registry(),
      log,
      checkTimeoutMs: 200,
      checks: {
        fast: async () => {},
        hangs: () => new Promise(() => {}),
        fails: async () => {
          throw new Error('secret detail');
        },
        state: async () => {
          throw new HealthStateError('closing');
        },
      },
    });
    const res = await get(`${server.url}/healthz`);
    expect(res.status).toBe(503);
    // Reasons stay in the log: the body carries only the states.
    expect(JSON.parse(res.body)).toEqual({
      status: 'unavailable',
      fast: 'ok',
      hangs: 'timeout',
      fails: 'error',
      state: 'closing',
    });
  });

  it('answers only GET and HEAD on its two paths', async () => {
    const registry = new Registry();
    server = await startMetricsServer({ port: 0, host: '127.0.0.1', registry, log, checks: {} });
    const post = await fetch(`${server.url}/metrics`, { method: 'POST', signal: AbortSignal.timeout(5_000) });
    expect(post.status).toBe(405);
    expect(post.headers.get('allow')).toBe('GET, HEAD');
    const head = await fetch(`${server.url}/healthz`, { method: 'HEAD', signal: AbortSignal.timeout(5_000) });
    expect(head.status).toBe(200);
    expect(await head.text()).toBe('');
    expect((await get(`${server.url}/nope`)).status).toBe(404);
  });

  it('refuses to start on a port that is taken', async () => {
    server = await startMetricsServer({
      port: 0,
      host: '127.0.0.1',
      registry: new Registry(),
      log,
      checks: {},
    });
    await expect(
      startMetricsServer({ port: server.port, host: '127.0.0.1', registry: new Registry(), log, checks: {} }),
    ).rejects.toThrow(/EADDRINUSE/);
  });
});
