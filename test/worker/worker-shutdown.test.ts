// Graceful shutdown of a WorkspaceWorker on real Redis and Postgres: a job still running when the grace
// period ends goes back to the queue without spending an attempt, another worker finishes it, and the
// closed worker leaves no connection behind.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { RedisClient } from '../../src/shared/redis.js';
import type { WorkspaceWorker } from '../../src/worker/worker.js';
import { WAIT_MS, WorkerHarness, POLL } from '../helpers/worker-harness.js';

/** The Redis connections a WorkspaceWorker owns (private: read here only to check they are closed). */
function redisOf(worker: WorkspaceWorker): RedisClient[] {
  return (worker as unknown as { resources: { redis: RedisClient[] } }).resources.redis;
}

/**
 * The server-side ids of the worker's connections. A subscriber connection (the cancel listener's) takes no
 * CLIENT ID; that it is closed shows in its status `end`.
 */
function idsOf(worker: WorkspaceWorker): Promise<string[]> {
  const commands = redisOf(worker).filter((r) => !('mode' in r) || r.mode !== 'subscriber');
  return Promise.all(commands.map(async (r) => String(await r.client('ID'))));
}

/** Ids of the clients connected to Redis now. */
async function clientIds(redis: RedisClient): Promise<Set<string>> {
  const list = (await redis.client('LIST')) as string;
  return new Set([...list.matchAll(/^id=(\d+) /gm)].map((m) => m[1]!));
}

describe('WorkspaceWorker.close', () => {
  let h: WorkerHarness;

  beforeEach(async () => {
    h = await WorkerHarness.create({ provisioner: { paused: true } });
  });

  afterEach(async () => {
    await h.close();
  });

  describe('with a job still running when the grace period ends', () => {
    it('hands the job back without spending an attempt, and another worker completes it', async () => {
      const first = await h.startWorker();
      const ws = await h.seedStoppedWorkspace();
      const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
      const queued = await h.waitForEvent(ws.chatId, 'build_queued');
      const buildId = queued.data?.build_id;
      expect(await h.queue.getJobState(jobId)).toBe('active');

      // What the worker is connected with, to check it is all gone afterwards.
      const redisIds = await idsOf(first);
      expect(await h.queue.getWorkers()).not.toHaveLength(0);
      const activity = () =>
        h.db.pool.query<{ application_name: string }>(
          `SELECT application_name FROM pg_stat_activity
            WHERE datname = $1 AND application_name IN ('workspace-jobs-worker', 'workspace-jobs-listener')`,
          [h.db.name],
        );
      expect((await activity()).rows.map((r) => r.application_name)).toContain('workspace-jobs-listener');

      const graceMs = 300;
      const started = performance.now();
      h.workers.delete(first);
      await first.close(graceMs);
      expect(performance.now() - started).toBeLessThan(graceMs + 5_000);

      // Handed back: not failed, no attempt spent, a retrying event and no result.
      const handedBack = await h.waitForState(jobId, ['delayed', 'waiting']);
      expect(handedBack.attemptsMade).toBe(0);
      const events = await h.jobEvents(ws.chatId, jobId);
      expect(events.at(-1)).toMatchObject({ type: 'progress', stage: 'retrying', job: { attempt: 1 } });
      expect(events.filter((e) => e.type === 'result')).toEqual([]);

      // Nothing of the closed worker stays connected.
      for (const r of redisOf(first)) expect(r.status).toBe('end');
      const connected = await clientIds(h.redis);
      for (const id of redisIds) expect(connected.has(id)).toBe(false);
      await expect.poll(() => h.queue.getWorkers(), POLL).toHaveLength(0);
      await expect.poll(async () => (await activity()).rows, POLL).toEqual([]);

      // A second worker picks it up: it waits for the build the first attempt made, and completes the job.
      await h.startWorker();
      await h.waitForEvent(ws.chatId, 'waiting_for_existing_build');
      h.provisioner.resume();
      const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
      expect(result).toMatchObject({ kind: 'start-workspace', ok: true, started: true, build_id: buildId });
      const done = await h.waitForState(jobId, ['completed']);
      expect(done.attemptsMade).toBe(1);

      const all = await h.jobEvents(ws.chatId, jobId);
      const results = all.filter((e) => e.type === 'result');
      expect(results).toHaveLength(1);
      expect(all.at(-1)).toBe(results[0]);
      expect(results[0]).toMatchObject({ stage: 'completed', job: { attempt: 1 } });
      expect((await h.newStartBuilds()).map((b) => b.id)).toEqual([buildId]);
    });
  });

  describe('with no job running', () => {
    it('closes at once and leaves no connection behind', async () => {
      const worker = await h.startWorker();
      const redisIds = await idsOf(worker);

      const started = performance.now();
      h.workers.delete(worker);
      await worker.close(10_000);
      // Idle: it does not sit out the grace period.
      expect(performance.now() - started).toBeLessThan(5_000);

      const connected = await clientIds(h.redis);
      for (const id of redisIds) expect(connected.has(id)).toBe(false);
      await expect.poll(() => h.queue.getWorkers(), POLL).toHaveLength(0);
    });

    it('when closed twice at once › both calls resolve (a signal and a finally may both close it)', async () => {
      const worker = await h.startWorker();
      h.workers.delete(worker);
      await expect(Promise.all([worker.close(10_000), worker.close(10_000)])).resolves.toEqual([
        undefined,
        undefined,
      ]);
      await expect(worker.close()).resolves.toBeUndefined();
    });
  });
});
