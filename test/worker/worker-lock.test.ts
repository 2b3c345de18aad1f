// The chat lock (docs/design.md §5) as the workers use it on real Redis: a busy chat re-delays the job
// without spending an attempt, two workers never run jobs of one chat at once, and a lost lock aborts the
// attempt, which BullMQ then retries.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { StartWorkspaceSuccess } from '../../src/shared/contract.js';
import { redisKeys } from '../../src/shared/keys.js';
import { ChatLocks, type HeldLock } from '../../src/shared/lock.js';
import { WAIT_MS, WorkerHarness, POLL } from '../helpers/worker-harness.js';

describe('the chat lock', () => {
  let h: WorkerHarness;

  beforeEach(async () => {
    h = await WorkerHarness.create();
  });

  afterEach(async () => {
    await h.close();
  });

  describe('when the chat lock is held by someone else', () => {
    it('emits waiting_for_lock once, re-delays the job without spending an attempt, and runs it once free', async () => {
      await h.startWorker({ processor: { lockRetryMinMs: 100, lockRetryMaxMs: 200 } });
      const ws = await h.seedStoppedWorkspace();
      const held = await h.locks().tryAcquire(ws.chatId);
      expect(held).not.toBeNull();
      h.onClose(() => held!.release());

      const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
      // Several re-delays happen while we hold the lock.
      await expect.poll(async () => (await h.progressOf(jobId)).lockWaits, POLL).toBeGreaterThanOrEqual(3);
      const delayed = await h.waitForState(jobId, ['delayed']);
      expect(delayed.attemptsMade).toBe(0);
      expect(await h.newStartBuilds()).toEqual([]);

      await held!.release();
      const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
      expect((result as StartWorkspaceSuccess).started).toBe(true);
      const done = await h.waitForState(jobId, ['completed']);
      expect(done.attemptsMade).toBe(1);

      const events = await h.jobEvents(ws.chatId, jobId);
      const stages = events.map((e) => e.stage);
      expect(stages.filter((s) => s === 'waiting_for_lock')).toHaveLength(1);
      expect(stages.indexOf('waiting_for_lock')).toBeLessThan(stages.indexOf('lock_acquired'));
      expect(stages.filter((s) => s === 'lock_acquired')).toHaveLength(1);
      expect(events.filter((e) => e.type === 'result')).toHaveLength(1);
      expect(events.at(-1)?.type).toBe('result');
      // Re-delays are not attempts: the job ran as attempt 1.
      expect(events.at(-1)?.job.attempt).toBe(1);
    });

    it('fails the job as internal after its lock-wait bound: a real failure, in the failed list', async () => {
      const lockWaitTimeoutMs = 500;
      await h.startWorker({ processor: { lockWaitTimeoutMs, lockRetryMinMs: 100, lockRetryMaxMs: 200 } });
      const ws = await h.seedStoppedWorkspace();
      const held = await h.locks().tryAcquire(ws.chatId);
      expect(held).not.toBeNull();
      h.onClose(() => held!.release());

      const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
      const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
      const error = `timed out after ${lockWaitTimeoutMs} ms waiting for the chat lock`;
      expect(result).toEqual({ kind: 'start-workspace', ok: false, error, code: 'internal', is_error: true });

      const failed = await h.waitForState(jobId, ['failed']);
      expect(failed.failedReason).toBe(error);
      expect(failed.stacktrace).toHaveLength(1);
      expect(failed.stacktrace?.[0]).toMatch(/^UnrecoverableError: timed out after/);
      const events = await h.jobEvents(ws.chatId, jobId);
      expect(events.filter((e) => e.type === 'result')).toEqual([events.at(-1)]);
      expect(events.at(-1)).toMatchObject({ stage: 'failed', data: result });
      expect(await h.newStartBuilds()).toEqual([]);
    });

    it('never lets two workers hold one chat at once across several jobs', async () => {
      // Each lock-held interval, from the processor's onLockHeld('acquired') (after Redis granted the lock)
      // to the moment the job calls release() (before Redis frees it), ordered by one counter: the
      // intervals of two holders cannot overlap unless both held the lock at once. onLockHeld('released')
      // is recorded too, but it fires only after the key is gone, when the next holder may already be in.
      type Held = {
        seq: number;
        worker: number;
        jobId: string;
        phase: 'acquired' | 'releasing' | 'released';
      };
      const held: Held[] = [];
      let seq = 0;
      const record = (worker: number, jobId: string, phase: Held['phase']) =>
        held.push({ seq: seq++, worker, jobId, phase });

      const startObservedWorker = (worker: number) => {
        class ObservedLocks extends ChatLocks {
          override async tryAcquire(chatId: string): Promise<HeldLock | null> {
            const lock = await super.tryAcquire(chatId);
            if (!lock) return null;
            return {
              resource: lock.resource,
              signal: lock.signal,
              onLoss: (listener) => lock.onLoss(listener),
              isHeld: () => lock.isHeld(),
              release: () => {
                const jobId = [...held].reverse().find((e) => e.worker === worker && e.phase === 'acquired');
                record(worker, jobId?.jobId ?? '?', 'releasing');
                return lock.release();
              },
            };
          }
        }
        return h.startWorker(
          {
            processor: {
              locks: new ObservedLocks([h.connection()], h.prefix),
              onLockHeld: (event) => record(worker, event.jobId, event.phase),
            },
          },
          // Two slots each, so that the jobs spread over both workers.
          { WORKER_CONCURRENCY: '2' },
        );
      };
      await startObservedWorker(1);
      await startObservedWorker(2);
      const ws = await h.seedStoppedWorkspace();

      // Six jobs for one chat at once (added directly: the producer would deduplicate them).
      const jobs = await h.queue.addBulk(
        Array.from({ length: 6 }, () => ({
          name: 'start-workspace',
          data: { chatId: ws.chatId, ownerId: ws.ownerId, workspaceId: ws.workspaceId },
          opts: { jobId: WorkerHarness.jobId(), attempts: 3, backoff: { type: 'fixed', delay: 10 } },
        })),
      );
      const results = await Promise.all(
        jobs.map((job) => h.producer.waitForResult(job.id!, { timeoutMs: WAIT_MS })),
      );
      for (const result of results) expect((result as StartWorkspaceSuccess).started).toBe(true);
      await expect.poll(async () => (await h.queue.getJobCounts()).completed, POLL).toBe(6);
      await expect.poll(() => held.filter((e) => e.phase === 'released'), POLL).toHaveLength(6);

      // Held intervals strictly alternate: acquired by a job, released by the same job, and so on.
      const intervals = held.filter((e) => e.phase !== 'released');
      expect(intervals).toHaveLength(12);
      for (let i = 0; i < intervals.length; i += 2) {
        expect(intervals[i]).toMatchObject({ phase: 'acquired' });
        expect(intervals[i + 1]).toMatchObject({
          phase: 'releasing',
          jobId: intervals[i]!.jobId,
          worker: intervals[i]!.worker,
        });
      }
      expect(new Set(intervals.map((e) => e.jobId))).toEqual(new Set(jobs.map((j) => j.id)));

      // The same from Redis' own order: on the chat's stream, every job's events from lock_acquired to its
      // result (both written while it held the lock) form a block that no other job's events enter. A job's
      // `queued` (published once, at its first pickup) and `waiting_for_lock` come before it holds the lock.
      const unlocked = new Set(['queued', 'waiting_for_lock']);
      const events = (await h.events(ws.chatId)).filter((e) => !unlocked.has(e.stage));
      const blocks: string[] = [];
      for (const e of events) if (blocks.at(-1) !== e.job.id) blocks.push(e.job.id);
      expect(blocks).toHaveLength(6);
      expect(new Set(blocks).size).toBe(6);
      // The jobs did contend: some found the lock busy and were re-delayed.
      expect((await h.events(ws.chatId)).some((e) => e.stage === 'waiting_for_lock')).toBe(true);

      // The first job started the workspace; the others found it running.
      expect(await h.newStartBuilds()).toHaveLength(1);
      expect(results.filter((r) => (r as StartWorkspaceSuccess).no_build)).toHaveLength(5);
    });
  });

  describe('when the lock is lost', () => {
    it('aborts the attempt, publishes retrying, retries the job and ends with exactly one result', async () => {
      h.provisioner.pause();
      // A short lock TTL: refreshed every 500 ms, so a deleted key is noticed quickly.
      await h.startWorker({ processor: { locks: h.locks({ lockTimeoutMs: 1_500 }) } });
      const ws = await h.seedStoppedWorkspace();
      const lockKey = redisKeys(h.prefix).chatLock(ws.chatId);

      const job = await h.queue.add(
        'start-workspace',
        { chatId: ws.chatId, ownerId: ws.ownerId, workspaceId: ws.workspaceId },
        { jobId: WorkerHarness.jobId(), attempts: 3, backoff: { type: 'fixed', delay: 10 } },
      );
      const jobId = job.id!;
      // The first attempt created the build and now waits for it.
      const queued = await h.waitForEvent(ws.chatId, 'build_queued');
      const buildId = queued.data?.build_id;
      expect(await h.redis.exists(lockKey)).toBe(1);
      await h.redis.del(lockKey);

      const retrying = await h.waitForEvent(ws.chatId, 'retrying');
      expect(retrying.job).toMatchObject({ id: jobId, attempt: 1 });
      expect(String(retrying.data?.error)).toContain('lost the lock');
      // The second attempt takes the lock again and waits for the build the first one made.
      const rewait = await h.waitForEvent(
        ws.chatId,
        'waiting_for_existing_build',
        (e) => e.job.attempt === 2,
      );
      expect(rewait.data?.build_id).toBe(buildId);
      expect((await h.queue.getJob(jobId))?.attemptsMade).toBe(1);

      h.provisioner.resume();
      const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
      expect(result).toMatchObject({ kind: 'start-workspace', ok: true, started: true, build_id: buildId });
      const done = await h.waitForState(jobId, ['completed']);
      expect(done.attemptsMade).toBe(2);

      const events = await h.jobEvents(ws.chatId, jobId);
      const results = events.filter((e) => e.type === 'result');
      expect(results).toHaveLength(1);
      expect(events.at(-1)).toBe(results[0]);
      expect(results[0]).toMatchObject({ stage: 'completed', job: { attempt: 2 } });
      expect(events.filter((e) => e.stage === 'retrying')).toHaveLength(1);
      // No second build: the retry waited for the first.
      expect((await h.newStartBuilds()).map((b) => b.id)).toEqual([buildId]);
      expect(await h.redis.exists(lockKey)).toBe(0);
    });

    it('waits for the lock again on the retry, its lock-wait bound counted afresh, when someone else took it', async () => {
      h.provisioner.pause();
      const lockWaitTimeoutMs = 1_000;
      await h.startWorker({
        processor: {
          locks: h.locks({ lockTimeoutMs: 1_500 }),
          lockWaitTimeoutMs,
          lockRetryMinMs: 50,
          lockRetryMaxMs: 100,
        },
      });
      const ws = await h.seedStoppedWorkspace();
      const lockKey = redisKeys(h.prefix).chatLock(ws.chatId);
      const testLocks = h.locks();

      // The job first waits briefly for the lock, then gets it and starts the build.
      const first = await testLocks.tryAcquire(ws.chatId);
      expect(first).not.toBeNull();
      const job = await h.queue.add(
        'start-workspace',
        { chatId: ws.chatId, ownerId: ws.ownerId, workspaceId: ws.workspaceId },
        { jobId: WorkerHarness.jobId(), attempts: 3, backoff: { type: 'fixed', delay: 10 } },
      );
      const jobId = job.id!;
      const waited = await h.waitForEvent(ws.chatId, 'waiting_for_lock');
      await first!.release();
      await h.waitForEvent(ws.chatId, 'build_queued');
      // The build runs longer than the lock-wait bound: that is running, not waiting.
      await vi.waitFor(
        () => expect(Date.now() - Date.parse(waited.at)).toBeGreaterThan(lockWaitTimeoutMs + 200),
        POLL,
      );

      // The lock is lost and someone else takes it before the job notices.
      await h.redis.del(lockKey);
      const second = await testLocks.tryAcquire(ws.chatId);
      expect(second).not.toBeNull();
      h.onClose(() => second!.release());
      await h.waitForEvent(ws.chatId, 'retrying');

      // The retry finds the lock busy: it must wait (re-delayed), not fail at once on the old wait's clock.
      const retry = await vi.waitFor(async () => {
        const current = await h.queue.getJob(jobId);
        const state = await h.queue.getJobState(jobId);
        const events = state === 'failed' ? [] : await h.jobEvents(ws.chatId, jobId);
        const waitingAgain = events.some((e) => e.stage === 'waiting_for_lock' && e.job.attempt === 2);
        if (state !== 'failed' && !waitingAgain) throw new Error('the retry has not met the lock yet');
        return { state, failedReason: current?.failedReason };
      }, POLL);
      expect(retry.state, `the retry failed: ${retry.failedReason}`).not.toBe('failed');
      await second!.release();
      h.provisioner.resume();
      const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
      expect(result).toMatchObject({ kind: 'start-workspace', ok: true, started: true });
    });
  });
});
