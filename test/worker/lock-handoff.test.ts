// The chat lock's hand-off (docs/design.md §5), on real Redis, BullMQ and Postgres: with lock-wait re-delays
// far longer than the test may wait, a chat's jobs enqueued at once still run one after the other, each
// promoted out of its re-delay as the one before it ends, on one worker or across two.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { JobName, WorkspaceJobEvent } from '../../src/shared/contract.js';
import { redisKeys } from '../../src/shared/keys.js';
import { POLL, WAIT_MS, WorkerHarness } from '../helpers/worker-harness.js';

/** The shortest lock-wait re-delay (the jitter takes off up to a quarter): longer than WAIT_MS. */
const RETRY_MS = 24_000;
const SHORTEST_RETRY_MS = RETRY_MS * 0.75;
/** Far below any re-delay: what one hand-off may take here (a start runs its build in between). */
const HAND_OFF_BOUND_MS = 2_000;

describe('the chat lock hand-off', () => {
  let h: WorkerHarness;

  beforeEach(async () => {
    h = await WorkerHarness.create();
  });

  afterEach(async () => {
    await h.close();
  });

  const at = (event: WorkspaceJobEvent | undefined) => Date.parse(event!.at);

  it.each([
    { workers: 1, concurrency: '10' },
    { workers: 2, concurrency: '1' },
  ])(
    'three jobs of one chat enqueued at once, on $workers worker(s) › each takes the lock as the one before ends, in enqueue order, long before any re-delay',
    async ({ workers, concurrency }) => {
      const processor = { lockRetryMinMs: RETRY_MS, lockRetryMaxMs: RETRY_MS };
      for (let i = 0; i < workers; i++) {
        await h.startWorker({ processor }, { WORKER_CONCURRENCY: concurrency });
      }
      const owner = await h.seedOwner();
      const ws = await h.seedStoppedWorkspace(owner);
      const inputs = {
        'start-workspace': { chatId: ws.chatId, ownerId: ws.ownerId },
        'create-workspace': { chatId: ws.chatId, ownerId: ws.ownerId, templateId: owner.templateId },
        'stop-workspace': { chatId: ws.chatId, ownerId: ws.ownerId },
      };
      const names: JobName[] = ['start-workspace', 'create-workspace', 'stop-workspace'];
      const jobIds = await Promise.all(
        names.map(async (name) => (await h.producer.enqueue(name, inputs[name] as never)).jobId),
      );
      // Entered in the order the enqueues reached Redis: that is the order to keep.
      const order = await h.redis.zrange(redisKeys(h.prefix).chatOrder(ws.chatId), 0, -1);
      expect([...order].sort()).toEqual([...jobIds].sort());

      for (const jobId of order) {
        expect(await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS })).toMatchObject({ ok: true });
      }
      const events = await h.events(ws.chatId);
      const of = (jobId: string, stage: string) =>
        events.find((e) => e.job.id === jobId && e.stage === stage);
      // The later two found the chat busy and were re-delayed (or would have been, had the hand-off not
      // come between their turn check and their re-delay).
      const acquired = order.map((jobId) => at(of(jobId, 'lock_acquired')));
      const ended = order.map((jobId) => at(events.find((e) => e.job.id === jobId && e.type === 'result')));
      for (let i = 1; i < order.length; i++) {
        expect(acquired[i]).toBeGreaterThanOrEqual(ended[i - 1]!);
        expect(acquired[i]! - ended[i - 1]!).toBeLessThan(HAND_OFF_BOUND_MS);
      }
      expect(acquired.at(-1)! - acquired[0]!).toBeLessThan(SHORTEST_RETRY_MS);
    },
  );

  it('a job promoted while another holds the chat lock › is re-delayed again, and runs once promoted with the lock free', async () => {
    await h.startWorker({ processor: { lockRetryMinMs: RETRY_MS, lockRetryMaxMs: RETRY_MS } });
    const ws = await h.seedStoppedWorkspace();
    const holder = await h.locks().tryAcquire(ws.chatId);
    expect(holder).not.toBeNull();
    const { jobId } = await h.producer.stopWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
    await (await h.waitForState(jobId, ['delayed'])).promote();

    await expect.poll(async () => (await h.progressOf(jobId)).lockWaits, POLL).toBe(2);
    await h.waitForState(jobId, ['delayed']);
    expect((await h.jobEvents(ws.chatId, jobId)).map((e) => e.stage)).not.toContain('lock_acquired');
    await holder!.release();
    // A holder that is no job hands nothing on: the promotion stands in for the one a job's end makes.
    await (await h.waitForState(jobId, ['delayed'])).promote();
    expect(await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS })).toMatchObject({ ok: true });
  });
});
