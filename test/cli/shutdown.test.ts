// Graceful shutdown of the three long-running commands as real processes (`node --import tsx
// src/cli/main.ts worker|provisioner|dashboard`) on real Redis and Postgres: SIGTERM makes each exit 0
// with nothing left open; a worker lets an active job finish within SHUTDOWN_GRACE_MS, or hands it back to
// the queue without spending an attempt when the grace period ends first; a second signal exits at once
// with code 1.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { StartWorkspaceSuccess } from '../../src/shared/contract.js';
import { CliProcess } from '../helpers/cli-process.js';
import { WAIT_MS, WorkerHarness } from '../helpers/worker-harness.js';

/** How long a process may take to exit after its grace period. */
const EXIT_MS = 10_000;
/** What main.ts prints when a command returned but a handle kept the process alive. */
const LEFT_OPEN = 'a connection was still open';

describe('graceful shutdown of the long-running commands', () => {
  let h: WorkerHarness;
  const processes: CliProcess[] = [];

  beforeEach(async () => {
    h = await WorkerHarness.create({ provisioner: { paused: true } });
  });

  afterEach(async () => {
    // A test that failed half-way leaves no process behind.
    for (const cli of processes.splice(0)) {
      cli.kill();
      await cli.waitForExit(EXIT_MS).catch(() => {});
    }
    await h.close();
  });

  function run(command: string, env: Record<string, string> = {}): CliProcess {
    const cli = h.cliProcess(command, { WORKER_CONCURRENCY: '5', ...env });
    processes.push(cli);
    return cli;
  }

  /** A worker process with its metrics server on an ephemeral loopback port, once it takes jobs. */
  async function startWorker(graceMs: number): Promise<CliProcess> {
    const worker = run('worker', {
      SHUTDOWN_GRACE_MS: String(graceMs),
      METRICS_PORT: '0',
      METRICS_HOST: '127.0.0.1',
    });
    await worker.waitForLog('worker started', (l) => l.msg === 'worker started');
    return worker;
  }

  /** A start job of a stopped workspace, active in the worker and waiting for its build (held pending). */
  async function activeJob() {
    const ws = await h.seedStoppedWorkspace();
    const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
    const queued = await h.waitForEvent(ws.chatId, 'build_queued');
    expect(await h.queue.getJobState(jobId)).toBe('active');
    return { ws, jobId, buildId: queued.data?.build_id as string };
  }

  function expectCleanExit(cli: CliProcess): void {
    expect(cli.stderr.join('\n')).not.toContain(LEFT_OPEN);
  }

  describe('idle, on SIGTERM', () => {
    it('worker: serves /healthz while running, then exits 0 with nothing left open', async () => {
      const worker = await startWorker(30_000);
      const serving = await worker.waitForLog(
        'metrics url',
        (l) => l.msg === 'serving /metrics and /healthz',
      );
      const health = await fetch(`${String(serving.url)}/healthz`, { signal: AbortSignal.timeout(5_000) });
      expect(health.status).toBe(200);

      worker.signal('SIGTERM');
      expect(await worker.waitForExit(EXIT_MS)).toEqual({ code: 0, signal: null });
      expectCleanExit(worker);
      expect(worker.logs().map((l) => l.msg)).toContain('worker stopped');
      expect(await h.queue.getWorkers()).toEqual([]);
    });

    it('provisioner: exits 0 with nothing left open', async () => {
      const provisioner = run('provisioner', { SHUTDOWN_GRACE_MS: '30000' });
      await provisioner.waitForLog('provisioner running', (l) => l.msg === 'provisioner daemon running');
      provisioner.signal('SIGTERM');
      expect(await provisioner.waitForExit(EXIT_MS)).toEqual({ code: 0, signal: null });
      expectCleanExit(provisioner);
    });

    it('dashboard: exits 0 with nothing left open', async () => {
      const dashboard = run('dashboard', { DASHBOARD_PORT: '0', DASHBOARD_HOST: '127.0.0.1' });
      await dashboard.waitForLog('dashboard listening', (l) => l.msg.startsWith('dashboard listening'));
      dashboard.signal('SIGTERM');
      expect(await dashboard.waitForExit(EXIT_MS)).toEqual({ code: 0, signal: null });
      expectCleanExit(dashboard);
    });
  });

  describe('a worker with an active job, on SIGTERM', () => {
    it('lets a job that finishes within the grace period complete, then exits 0', async () => {
      const worker = await startWorker(WAIT_MS * 2);
      const { jobId, buildId } = await activeJob();

      worker.signal('SIGTERM');
      await worker.waitForLog('stopping', (l) => l.msg === 'stopping');
      // The build finishes while the worker is shutting down: the job completes on this worker.
      h.provisioner.resume();
      expect(await worker.waitForExit(WAIT_MS + EXIT_MS)).toEqual({ code: 0, signal: null });
      expectCleanExit(worker);

      const done = await h.waitForState(jobId, ['completed']);
      expect(done.attemptsMade).toBe(1);
      expect(done.returnvalue).toMatchObject({
        kind: 'start-workspace',
        ok: true,
        started: true,
        build_id: buildId,
      });
      expect(worker.logs().map((l) => l.msg)).not.toContain(
        'grace period over; handing active jobs back to the queue',
      );
    });

    it('hands a job still running when the grace period ends back to the queue, exits 0, and another worker completes it', async () => {
      const graceMs = 500;
      const worker = await startWorker(graceMs);
      const { ws, jobId, buildId } = await activeJob();

      worker.signal('SIGTERM');
      expect(await worker.waitForExit(graceMs + EXIT_MS)).toEqual({ code: 0, signal: null });
      expectCleanExit(worker);
      expect(worker.logs().map((l) => l.msg)).toContain(
        'grace period over; handing active jobs back to the queue',
      );

      // Back in the queue, no attempt spent, no result published.
      const handedBack = await h.waitForState(jobId, ['delayed', 'waiting']);
      expect(handedBack.attemptsMade).toBe(0);
      const events = await h.jobEvents(ws.chatId, jobId);
      expect(events.at(-1)).toMatchObject({ stage: 'retrying' });
      expect(events.filter((e) => e.type === 'result')).toEqual([]);

      // Another worker takes it over, waits for the build the first one made, and completes it.
      await h.startWorker();
      await h.waitForEvent(ws.chatId, 'waiting_for_existing_build');
      h.provisioner.resume();
      const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
      expect((result as StartWorkspaceSuccess).build_id).toBe(buildId);
      const done = await h.waitForState(jobId, ['completed']);
      expect(done.attemptsMade).toBe(1);
      expect((await h.newStartBuilds()).map((b) => b.id)).toEqual([buildId]);
    });

    it('exits at once with code 1 on a second signal during the grace period', async () => {
      const worker = await startWorker(120_000);
      await activeJob();

      worker.signal('SIGTERM');
      await worker.waitForLog('stopping', (l) => l.msg === 'stopping');
      worker.signal('SIGINT');
      // Far sooner than the 2-minute grace period.
      expect(await worker.waitForExit(EXIT_MS)).toEqual({ code: 1, signal: null });
      expect(worker.logs().map((l) => l.msg)).toContain('second signal; exiting now');
    });
  });
});
