// A real worker (real BullMQ) whose chat locks are on three redis-server nodes of the test's own
// (LOCK_REDIS_URLS): jobs that hold their lock while a node is killed all finish with no lock lost, and
// a job that finds the quorum gone waits, saying why, and runs once the nodes are back.
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { sleep } from '../../src/shared/errors.js';
import type { StartWorkspaceSuccess } from '../../src/shared/contract.js';
import { createMetrics, type Metrics } from '../../src/shared/metrics.js';
import { RedisServerProcess } from '../helpers/redis-server.js';
import { WAIT_MS, WorkerHarness, POLL } from '../helpers/worker-harness.js';

const CHAT_LOCK_TTL_MS = 1_500;
const JOBS = 6;

async function counted(metrics: Metrics, counter: 'locksLost' | 'lockBusy'): Promise<number> {
  return (await metrics[counter].get()).values.reduce((sum, v) => sum + v.value, 0);
}

describe('a worker with three lock nodes', () => {
  const nodes: RedisServerProcess[] = [];
  let h: WorkerHarness;
  let metrics: Metrics;

  beforeAll(async () => {
    nodes.push(...(await RedisServerProcess.startMany(3)));
  });

  afterAll(async () => {
    await Promise.all(nodes.map((node) => node.stop()));
  });

  beforeEach(async () => {
    h = await WorkerHarness.create({
      env: { LOCK_REDIS_URLS: nodes.map((node) => node.url).join(',') },
      provisioner: { paused: true },
    });
    metrics = createMetrics({ defaultMetrics: false });
    await h.startWorker({ chatLockTimeoutMs: CHAT_LOCK_TTL_MS, metrics });
  });

  afterEach(async () => {
    await h.close();
    for (const node of nodes) if (!node.running) await node.restart();
  });

  describe('when one node is killed while jobs hold their locks', () => {
    it('finishes every job, once, with no lock lost', async () => {
      const workspaces = await Promise.all(Array.from({ length: JOBS }, () => h.seedStoppedWorkspace()));
      const jobs = await Promise.all(
        workspaces.map((ws) => h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId })),
      );
      // Each job holds its chat lock while it waits for its build (the provisioner is paused).
      await Promise.all(workspaces.map((ws) => h.waitForEvent(ws.chatId, 'build_queued')));

      await nodes[2]!.kill();
      // The time under test, not a synchronisation: over two TTLs of refreshes with the node gone.
      await sleep(CHAT_LOCK_TTL_MS * 2);
      h.provisioner.resume();

      for (const [i, { jobId }] of jobs.entries()) {
        const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
        expect((result as StartWorkspaceSuccess).started).toBe(true);
        const events = await h.jobEvents(workspaces[i]!.chatId, jobId);
        expect(events.filter((e) => e.stage === 'retrying')).toEqual([]);
        expect(events.filter((e) => e.type === 'result')).toHaveLength(1);
      }
      expect(await counted(metrics, 'locksLost')).toBe(0);
      expect(await h.newStartBuilds()).toHaveLength(JOBS);
    });
  });

  describe('when two nodes are down', () => {
    it('keeps the job waiting, saying the lock quorum is unavailable, and runs it once a node is back', async () => {
      h.provisioner.resume();
      const ws = await h.seedStoppedWorkspace();
      await Promise.all([nodes[1]!.kill(), nodes[2]!.kill()]);

      const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
      const waiting = await h.waitForEvent(ws.chatId, 'waiting_for_lock');
      expect(waiting.message).toContain('lock quorum unavailable');
      expect(waiting.message).not.toContain('Another job');
      await expect.poll(async () => (await h.progressOf(jobId)).lockWaits, POLL).toBeGreaterThanOrEqual(3);
      // Never run without the lock: no build was made while it waited.
      expect(await h.newStartBuilds(ws.workspaceId)).toEqual([]);
      expect(await h.jobEvents(ws.chatId, jobId)).not.toContainEqual(
        expect.objectContaining({ stage: 'lock_acquired' }),
      );

      await nodes[1]!.restart();
      const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
      expect((result as StartWorkspaceSuccess).started).toBe(true);
      expect(await h.newStartBuilds(ws.workspaceId)).toHaveLength(1);
    });
  });
});
