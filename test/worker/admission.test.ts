// Admission control on a real worker (real BullMQ, Redis, Postgres): with more jobs than
// WORKER_ADMITTED_JOBS, no more than that many run their start phase at once, a job waiting on its build
// gives its slot back (more jobs wait than there are slots), and a worker closed while jobs wait for a slot
// hands them back to the queue without spending an attempt.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createMetrics, type Metrics } from '../../src/shared/metrics.js';
import type { StartWorkspaceSuccess } from '../../src/shared/contract.js';
import { PgWorkspaceStore } from '../../src/worker/pg-store.js';
import type { WorkspaceStore } from '../../src/worker/ports.js';
import { POLL, WAIT_MS, WorkerHarness, type SeededWorkspace } from '../helpers/worker-harness.js';

const ADMITTED = 2;
const JOBS = 7;

/**
 * The worker's store, whose start-state read (the first read of a start's phase under its chat lock) waits
 * for `gate` and counts how many are in flight at once.
 */
function gatedStore(h: WorkerHarness, gate: () => Promise<void>) {
  const inFlight = { now: 0, most: 0 };
  const store = new Proxy(new PgWorkspaceStore(h.db.pool), {
    get(target, property, receiver) {
      const value: unknown = Reflect.get(target, property, receiver);
      if (typeof value !== 'function') return value;
      if (property !== 'getStartState') return value.bind(target);
      return async (...args: unknown[]) => {
        inFlight.most = Math.max(inFlight.most, ++inFlight.now);
        try {
          await gate();
          return await (value as (...a: unknown[]) => Promise<unknown>).apply(target, args);
        } finally {
          inFlight.now--;
        }
      };
    },
  }) as WorkspaceStore;
  return { store, inFlight };
}

async function waitingForAdmission(metrics: Metrics): Promise<number> {
  return (await metrics.admissionWaiting.get()).values[0]?.value ?? 0;
}

describe('a worker with WORKER_ADMITTED_JOBS below its concurrency', () => {
  let h: WorkerHarness;
  let workspaces: SeededWorkspace[];

  beforeEach(async () => {
    h = await WorkerHarness.create({
      env: { WORKER_ADMITTED_JOBS: String(ADMITTED) },
      provisioner: { paused: true },
    });
    const owner = await h.seedOwner();
    workspaces = [];
    for (let i = 0; i < JOBS; i++) workspaces.push(await h.seedStoppedWorkspace(owner));
  });

  afterEach(async () => {
    await h.close();
  });

  const startAll = () =>
    Promise.all(
      workspaces.map((ws) => h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId })),
    );

  describe('when more jobs than that start at once', () => {
    it('runs at most that many start phases at once, and every job waits on its build and finishes', async () => {
      // Each start phase is slow enough for the others to pile up behind it.
      const { store, inFlight } = gatedStore(h, () => new Promise((resolve) => setTimeout(resolve, 100)));
      await h.startWorker({ processor: { store } });
      const jobs = await startAll();

      // Every job waits on its build at once: a waiting job holds no slot.
      await Promise.all(workspaces.map((ws) => h.waitForEvent(ws.chatId, 'build_queued')));
      expect(inFlight.most).toBe(ADMITTED);

      h.provisioner.resume();
      for (const { jobId } of jobs) {
        const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
        expect(result).toMatchObject({ ok: true, kind: 'start-workspace' });
        expect((result as StartWorkspaceSuccess).agent_status).toBeUndefined();
      }
    });
  });

  describe('when the worker closes while jobs wait for a slot', () => {
    it('hands them back without spending an attempt, and another worker finishes every job', async () => {
      let open!: () => void;
      const opened = new Promise<void>((resolve) => (open = resolve));
      const { store } = gatedStore(h, () => opened);
      const metrics = createMetrics({ defaultMetrics: false });
      const first = await h.startWorker({ processor: { store }, metrics });
      const jobs = await startAll();
      // ADMITTED jobs are held in their start phase; the rest wait for a slot.
      await expect.poll(() => waitingForAdmission(metrics), POLL).toBe(JOBS - ADMITTED);

      const closing = h.closeWorker(first, 500);
      // Not admitted: back in the queue while the admitted ones still run.
      await expect.poll(() => waitingForAdmission(metrics), POLL).toBe(0);
      open();
      await closing;

      for (const { jobId } of jobs) {
        const job = await h.waitForState(jobId, ['delayed', 'waiting']);
        expect(job.attemptsMade).toBe(0);
      }
      for (const ws of workspaces) {
        expect((await h.events(ws.chatId)).filter((e) => e.type === 'result')).toEqual([]);
      }

      await h.startWorker();
      h.provisioner.resume();
      for (const { jobId } of jobs) {
        const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
        expect(result).toMatchObject({ ok: true, kind: 'start-workspace' });
      }
    });
  });
});
