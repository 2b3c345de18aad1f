// After a caller has seen a job's result, a new enqueue for the same workspace is a job of its own, however
// the job ended: BullMQ frees the deduplication id only when it records the outcome, and our result event can
// go out before that, so every path that ends a job frees the id before the caller can learn the result.
import { Job } from 'bullmq';
import { describe, expect, it } from 'vitest';
import { jobOptions } from '../../src/producer/job-options.js';
import { JobNotFoundError } from '../../src/producer/producer.js';
import type { JobFailure } from '../../src/shared/contract.js';
import { dedupeIds } from '../../src/jobs/registry.js';
import { WAIT_MS, WorkerHarness, useWorkspaceHarness } from '../helpers/worker-harness.js';

/** The bar: 13 of 50 tries were merged into the finished job before the fix. */
const LOOPS = 200;

describe('an enqueue after the previous job of the workspace ended and its result was seen', () => {
  const suite = useWorkspaceHarness();

  /** The workspace's next start through the producer: it must be a job of its own. */
  async function expectNewStart(previous: Set<string>, what: string): Promise<string> {
    const enqueued = await suite.h.producer.startWorkspace({
      chatId: suite.ws.chatId,
      ownerId: suite.ws.ownerId,
      workspaceId: suite.ws.workspaceId,
    });
    expect(enqueued.deduplicated, `${what}: deduplicated onto ${enqueued.jobId}`).toBe(false);
    expect(previous.has(enqueued.jobId), `${what}: an earlier job id came back`).toBe(false);
    previous.add(enqueued.jobId);
    return enqueued.jobId;
  }

  /**
   * A job added as the producer adds it (its options, its deduplication id), but with `data` as given and a
   * retry 10 ms after a failed attempt instead of seconds. Returns its id, checking it was not deduplicated.
   */
  async function addByHand(data: Record<string, unknown>, attempts: number): Promise<string> {
    const jobId = WorkerHarness.jobId();
    const options = jobOptions({ jobId, deduplicationId: dedupeIds.start(suite.ws.workspaceId), attempts });
    const job = await suite.h.queue.add('start-workspace', data, {
      ...options,
      backoff: { type: 'fixed', delay: 10 },
    });
    expect(job.id, 'added by hand, deduplicated onto an earlier job').toBe(jobId);
    return jobId;
  }

  it(`completed: ${LOOPS} start → result → start again loops, each a new job`, async () => {
    await suite.h.startWorker();
    const seen = new Set<string>();
    // After the first start the workspace is running, so each later job ends within milliseconds of its
    // pickup: the window between its result event and BullMQ's completion is as wide, relatively, as it gets.
    const started = performance.now();
    for (let i = 0; i < LOOPS; i++) {
      const jobId = await expectNewStart(seen, `loop ${i}`);
      const result = await suite.h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
      expect(result).toMatchObject({ kind: 'start-workspace', ok: true, started: true });
    }
    // About 35 ms a loop on 2 busy cores, most of it waitForResult replaying the chat's stream (capped at
    // ~1000 entries, which 200 jobs fill) before it listens.
    console.info(`${LOOPS} start → result loops took ${(performance.now() - started).toFixed(0)} ms`);
    expect(seen.size).toBe(LOOPS);
  }, 60_000);

  it('ended with a failure result (an owner who does not own the chat), 20 times', async () => {
    await suite.h.startWorker();
    const stranger = (await suite.h.seedOwner()).ownerId;
    const seen = new Set<string>();
    for (let i = 0; i < 20; i++) {
      const enqueued = await suite.h.producer.startWorkspace({
        chatId: suite.ws.chatId,
        ownerId: stranger,
        workspaceId: suite.ws.workspaceId,
      });
      expect(enqueued.deduplicated, `loop ${i}: deduplicated onto ${enqueued.jobId}`).toBe(false);
      seen.add(enqueued.jobId);
      const result = await suite.h.producer.waitForResult(enqueued.jobId, { timeoutMs: WAIT_MS });
      expect(result).toMatchObject({ code: 'forbidden', is_error: true });
    }
    expect(seen.size).toBe(20);
    await expectNewStart(seen, 'a start by the owner');
  });

  it('failed by throwing on every attempt until they were used up', async () => {
    await suite.h.startWorker({ processor: { store: suite.h.brokenStore() } });
    const payload = { chatId: suite.ws.chatId, ownerId: suite.ws.ownerId, workspaceId: suite.ws.workspaceId };
    const seen = new Set<string>();
    for (let i = 0; i < 3; i++) {
      const jobId = await addByHand(payload, 2);
      seen.add(jobId);
      const result = await suite.h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
      expect((result as JobFailure).error).toContain('connection reset');
      expect((await suite.h.waitForState(jobId, ['failed'])).attemptsMade).toBe(2);
    }
    await expectNewStart(seen, 'a start after the last failure');
  });

  it('failed by BullMQ itself (stalled too often), with the result the worker publishes for it', async () => {
    // Before any worker runs: the job is waiting when it is marked as moveStalledJobsToWait marks a job that
    // stalled more often than maxStalledCount; the next worker to pick it up fails it without running it.
    const seen = new Set<string>();
    const jobId = await expectNewStart(seen, 'the first start');
    await suite.h.redis.hset(
      `${suite.h.prefix}:workspaces:${jobId}`,
      'defa',
      'job stalled more than allowable limit',
    );
    await suite.h.startWorker();
    const result = await suite.h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
    expect(result).toMatchObject({ code: 'internal', error: 'job stalled more than allowable limit' });
    expect(await suite.h.newStartBuilds()).toEqual([]);
    await expectNewStart(seen, 'a start after the stalled job');
  });

  it('failed on an invalid payload added by hand (its chat id in upper case)', async () => {
    await suite.h.startWorker();
    const seen = new Set<string>();
    const jobId = await addByHand(
      { chatId: suite.ws.chatId.toUpperCase(), ownerId: 'nobody', workspaceId: suite.ws.workspaceId },
      3,
    );
    seen.add(jobId);
    const result = await suite.h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
    expect(result).toMatchObject({ code: 'invalid_payload' });
    // Its result went to the chat's one (lower-case) stream, where the chat's subscribers are.
    expect((await suite.h.jobEvents(suite.ws.chatId, jobId)).map((e) => e.stage)).toEqual(['failed']);
    await expectNewStart(seen, 'a start after the invalid job');
  });

  it.each([
    ['removed (job.remove, Bull Board\'s "Remove")', (job: Job) => job.remove()],
    ['cleaned from the waiting list (queue.clean)', () => suite.h.queue.clean(0, 0, 'wait')],
  ])('removed while it waited: %s', async (_how, remove) => {
    // No worker: the job waits until it is removed, and its waiter learns that it is gone.
    const seen = new Set<string>();
    const jobId = await expectNewStart(seen, 'the first start');
    const waiting = suite.h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
    await remove((await suite.h.queue.getJob(jobId))!);
    await expect(waiting).rejects.toBeInstanceOf(JobNotFoundError);
    await expectNewStart(seen, 'a start after the removal');
  });
});
