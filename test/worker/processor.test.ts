// The worker's processor on real Redis and Postgres, driven through the producer (or queue.add where a test
// needs to bypass it): the events a job publishes, its BullMQ outcome, retries and deduplication.
import { randomUUID } from 'node:crypto';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { formatJob } from '@bull-board/api/dist/handlers/queues.js';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { insertTemplateVersion, setActiveVersion } from '../../src/cli/fixtures.js';
import {
  PROGRESS_STAGES,
  type JobFailure,
  type JobProgress,
  type ProgressEvent,
  type StartWorkspaceSuccess,
} from '../../src/shared/contract.js';
import { redisKeys } from '../../src/shared/keys.js';
import { WAIT_MS, WorkerHarness, POLL, stagesOf, type SeededWorkspace } from '../helpers/worker-harness.js';

/** Fast retries for jobs added with queue.add. */
const FAST_RETRIES = { attempts: 3, backoff: { type: 'fixed', delay: 10 } } as const;

/** A finished job as Bull Board shows it: its list, and its card (reason, stacks newest first, result). */
async function onBoard(h: WorkerHarness, jobId: string) {
  const board = new BullMQAdapter(h.queue);
  for (const list of ['completed', 'failed'] as const) {
    const job = (await board.getJobs([list])).find((j) => j.id === jobId);
    if (job) return { list, counts: await board.getJobCounts(), card: formatJob(job, board) };
  }
  throw new Error(`job ${jobId} is in neither Bull Board list`);
}

describe('start-workspace processor', () => {
  let h: WorkerHarness;

  beforeEach(async () => {
    h = await WorkerHarness.create();
  });

  afterEach(async () => {
    await h.close();
  });

  describe('a start of a stopped workspace', () => {
    it('runs end to end: progress in contract order, then exactly one result event, last on the stream', async () => {
      await h.startWorker();
      const ws = await h.seedStoppedWorkspace();

      const { jobId, deduplicated } = await h.producer.startWorkspace({
        chatId: ws.chatId,
        ownerId: ws.ownerId,
      });
      expect(deduplicated).toBe(false);
      const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });

      const job = await h.waitForState(jobId, ['completed']);
      expect(result).toEqual(job.returnvalue);
      const [build] = await h.newStartBuilds(ws.workspaceId);
      expect(build).toBeDefined();
      expect(result).toEqual({
        kind: 'start-workspace',
        ok: true,
        started: true,
        workspace_name: ws.workspaceName,
        build_id: build!.id,
      });

      const events = await h.events(ws.chatId);
      expect(events.every((e) => e.job.id === jobId)).toBe(true);
      const results = events.filter((e) => e.type === 'result');
      expect(results).toHaveLength(1);
      const last = events.at(-1)!;
      expect(last).toBe(results[0]);
      expect(last).toMatchObject({ type: 'result', stage: 'completed', chatId: ws.chatId });
      expect(last.data).toMatchObject({
        kind: 'start-workspace',
        ok: true,
        started: true,
        build_id: build!.id,
      });
      expect(last.data).toEqual(result);

      // Progress: the stages that must appear, each once, in the contract's order.
      const progress = stagesOf(events.filter((e) => e.type === 'progress'));
      for (const stage of [
        'queued',
        'lock_acquired',
        'checking',
        'build_queued',
        'build_succeeded',
        'agent_ready',
      ])
        expect(progress).toContain(stage);
      expect(new Set(progress).size).toBe(progress.length);
      const order = progress.map((stage) =>
        PROGRESS_STAGES.indexOf(stage as (typeof PROGRESS_STAGES)[number]),
      );
      expect(order.every((index) => index >= 0)).toBe(true);
      expect(order).toEqual([...order].sort((a, b) => a - b));
      expect(progress).not.toContain('retrying');
      expect(progress).not.toContain('waiting_for_lock');

      // The chat is bound to the new build, and the chat lock is free again.
      const { rows } = await h.db.pool.query<{ build_id: string }>(
        'SELECT build_id FROM chats WHERE id = $1',
        [ws.chatId],
      );
      expect(rows[0]?.build_id).toBe(build!.id);
      expect(await h.redis.exists(redisKeys(h.prefix).chatLock(ws.chatId))).toBe(0);
    });
  });

  describe('a start served by the real provisioner daemon (simulated executor)', () => {
    it('completes with the agent ready, stages in contract order and the result last', async () => {
      const daemon = await h.startProvisionerDaemon();
      await h.startWorker();
      const ws = await h.seedStoppedWorkspace();

      const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
      const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
      const [build] = await h.newStartBuilds(ws.workspaceId);
      expect(result).toEqual({
        kind: 'start-workspace',
        ok: true,
        started: true,
        workspace_name: ws.workspaceName,
        build_id: build!.id,
      });
      const { rows } = await h.db.pool.query<{ worker_id: string; job_status: string }>(
        `SELECT j.worker_id, j.job_status FROM provisioner_jobs j JOIN workspace_builds b ON b.job_id = j.id
          WHERE b.id = $1`,
        [build!.id],
      );
      expect(rows[0]).toEqual({ worker_id: daemon.id, job_status: 'succeeded' });

      const events = await h.jobEvents(ws.chatId, jobId);
      expect(events.filter((e) => e.type === 'result')).toHaveLength(1);
      expect(events.at(-1)).toMatchObject({ type: 'result', stage: 'completed', data: result });
      const stages = stagesOf(events.filter((e) => e.type === 'progress'));
      for (const stage of ['queued', 'lock_acquired', 'checking', 'build_succeeded', 'agent_ready'])
        expect(stages).toContain(stage);
      // The build's log previews come while it runs, before it succeeds; every other stage in contract order.
      expect(stages).toContain('build_log');
      expect(stages.lastIndexOf('build_log')).toBeLessThan(stages.indexOf('build_succeeded'));
      const progress = stages.filter((stage) => stage !== 'build_log' && stage !== 'queue_position');
      const order = progress.map((stage) =>
        PROGRESS_STAGES.indexOf(stage as (typeof PROGRESS_STAGES)[number]),
      );
      expect(order.every((index) => index >= 0)).toBe(true);
      expect(order).toEqual([...order].sort((a, b) => a - b));
    });
  });

  describe('a payload that does not validate (added without the producer)', () => {
    it('fails at once without retries, naming the field, with an invalid_payload result event', async () => {
      await h.startWorker();
      const chatId = randomUUID();
      const job = await h.queue.add(
        'start-workspace',
        { chatId, ownerId: 'not-a-uuid', workspaceId: randomUUID() },
        { ...FAST_RETRIES, attempts: 5 },
      );

      const failed = await h.waitForState(job.id!, ['failed']);
      expect(failed.attemptsMade).toBe(1);
      expect(failed.failedReason).toContain('ownerId');

      const events = await vi.waitFor(async () => {
        const found = await h.events(chatId);
        expect(found.filter((e) => e.type === 'result')).toHaveLength(1);
        return found;
      }, POLL);
      expect(events).toHaveLength(1);
      expect(events[0]).toMatchObject({ type: 'result', stage: 'failed', job: { id: job.id, attempt: 1 } });
      const data = events[0]!.data as unknown as JobFailure;
      expect(data.code).toBe('invalid_payload');
      expect(data.is_error).toBe(true);
      expect(data.error).toContain('ownerId');
      expect(data.error).toBe(failed.failedReason);
    });

    it('fails at once without any event when even the chat id is unusable', async () => {
      await h.startWorker();
      const chatId = 'not a chat id';
      const job = await h.queue.add(
        'start-workspace',
        { chatId, ownerId: randomUUID(), workspaceId: randomUUID() },
        FAST_RETRIES,
      );

      const failed = await h.waitForState(job.id!, ['failed']);
      expect(failed.attemptsMade).toBe(1);
      expect(failed.failedReason).toContain('chatId');
      expect(await h.events(chatId)).toEqual([]);
    });
  });

  describe('a job name the worker does not know (added without the producer)', () => {
    it.each(['delete-workspace', 'constructor'])(
      '%s › fails at once without retries, and without an event (the contract has no such job name)',
      async (name) => {
        await h.startWorker();
        const chatId = randomUUID();
        const job = await h.queue.add(
          name,
          { chatId, ownerId: randomUUID(), workspaceId: randomUUID() },
          { ...FAST_RETRIES, attempts: 5 },
        );

        const failed = await h.waitForState(job.id!, ['failed']);
        expect(failed.attemptsMade).toBe(1);
        expect(failed.failedReason).toBe(`unknown job name "${name}"`);
        expect(await h.events(chatId)).toEqual([]);
      },
    );
  });

  describe('a transient error on every attempt', () => {
    it('publishes retrying per failed attempt, then exactly one internal failure after the last', async () => {
      await h.startWorker({ processor: { store: h.brokenStore() } });
      const ws = await h.seedStoppedWorkspace();

      const job = await h.queue.add(
        'start-workspace',
        { chatId: ws.chatId, ownerId: ws.ownerId, workspaceId: ws.workspaceId },
        FAST_RETRIES,
      );
      const failed = await h.waitForState(job.id!, ['failed']);
      expect(failed.attemptsMade).toBe(3);
      expect(failed.failedReason).toContain('connection reset');
      // A real failure: in Bull Board's failed list with one stack per attempt, the last one the error's own
      // (where the chat read rejected), not the place that failed the job.
      const { list, card } = await onBoard(h, job.id!);
      expect(list).toBe('failed');
      expect(card.isFailed).toBe(true);
      expect(card.stacktrace).toHaveLength(3);
      for (const stack of card.stacktrace) expect(stack).toMatch(/^Error: connection reset[^\n]*\n\s+at /);
      expect(card.stacktrace[0]).not.toContain('conclude');

      const events = await h.jobEvents(ws.chatId, job.id!);
      const retrying = events.filter((e): e is ProgressEvent => e.stage === 'retrying');
      expect(retrying.map((e) => e.job.attempt)).toEqual([1, 2]);
      for (const e of retrying) expect(e.data?.error).toContain('connection reset');
      const results = events.filter((e) => e.type === 'result');
      expect(results).toHaveLength(1);
      expect(events.at(-1)).toBe(results[0]);
      expect(results[0]).toMatchObject({ stage: 'failed', job: { attempt: 3 } });
      expect(results[0]!.data).toMatchObject({ code: 'internal', is_error: true });
      expect((results[0]!.data as JobFailure).error).toContain('connection reset');

      // Nothing was built, and every attempt released the chat lock.
      expect(await h.newStartBuilds()).toEqual([]);
      expect(await h.redis.exists(redisKeys(h.prefix).chatLock(ws.chatId))).toBe(0);
      expect(await h.producer.waitForResult(job.id!, { timeoutMs: WAIT_MS })).toEqual(results[0]!.data);
    });
  });

  describe('an expected failure result (a chat without a workspace)', () => {
    it('completes the BullMQ job with the result as its return value: no retry, no reason, no stack', async () => {
      await h.startWorker();
      const ws = await h.seedStoppedWorkspace();
      // A second chat of the owner with no workspace; the producer is told the workspace explicitly.
      const { rows } = await h.db.pool.query<{ id: string }>(
        'INSERT INTO chats (owner_id) VALUES ($1) RETURNING id',
        [ws.ownerId],
      );
      const chatId = rows[0]!.id;

      const { jobId } = await h.producer.startWorkspace({
        chatId,
        ownerId: ws.ownerId,
        workspaceId: ws.workspaceId,
      });
      const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
      expect(result).toEqual({
        kind: 'start-workspace',
        ok: false,
        error: 'chat has no workspace; use create_workspace first',
        code: 'no_workspace',
        is_error: true,
      });

      // Before issue 8 such a job was failed, with a stack in Bull Board's failed list.
      const job = await h.waitForState(jobId, ['completed']);
      expect(job.attemptsMade).toBe(1);
      expect(job.returnvalue).toEqual(result);
      expect(job.failedReason).toBeFalsy();
      expect(job.stacktrace).toEqual([]);
      expect((job.progress as JobProgress).result).toEqual(result);
      expect((job.progress as JobProgress).stage).toBe('failed');
      const { list, counts, card } = await onBoard(h, jobId);
      expect(list).toBe('completed');
      expect(counts.failed).toBe(0);
      expect(card.isFailed).toBe(false);
      expect(card.returnValue).toEqual(result);

      const results = (await h.jobEvents(chatId, jobId)).filter((e) => e.type === 'result');
      expect(results).toHaveLength(1);
      expect(results[0]).toMatchObject({ stage: 'failed', data: result });
      expect(await h.newStartBuilds()).toEqual([]);

      // With the chat's events gone, the producer reads the same result from the completed job.
      await h.redis.del(redisKeys(h.prefix).chatLog(chatId));
      expect(await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS })).toEqual(result);
    });
  });

  describe('an expected failure result (manual update required)', () => {
    it("is in Bull Board's completed list with its code in the return value; the failed list stays empty", async () => {
      await h.startWorker();
      const owner = await h.seedOwner();
      const ws = await h.seedStoppedWorkspace(owner);
      // The template requires its active version, which has a required parameter the start does not give.
      const v2 = await insertTemplateVersion(h.db.pool, owner.templateId, {
        name: 'v2',
        parameters: [{ name: 'region', required: true }],
      });
      await setActiveVersion(h.db.pool, owner.templateId, v2);
      await h.db.pool.query('UPDATE templates SET require_active_version = true WHERE id = $1', [
        owner.templateId,
      ]);
      // Retries allowed: the result is final all the same.
      const job = await h.queue.add(
        'start-workspace',
        { chatId: ws.chatId, ownerId: ws.ownerId, workspaceId: ws.workspaceId },
        { jobId: WorkerHarness.jobId(), ...FAST_RETRIES },
      );

      const result = (await h.producer.waitForResult(job.id!, { timeoutMs: WAIT_MS })) as JobFailure;
      expect(result).toMatchObject({ code: 'manual_update_required', template_id: owner.templateId });
      const done = await h.waitForState(job.id!, ['completed']);
      expect(done.attemptsMade).toBe(1);
      expect(done.returnvalue).toEqual(result);
      expect(done.stacktrace).toEqual([]);
      const { list, counts, card } = await onBoard(h, job.id!);
      expect(list).toBe('completed');
      expect(counts).toMatchObject({ completed: 1, failed: 0 });
      expect(card.isFailed).toBe(false);
      expect(card.stacktrace).toEqual([]);
      expect(card.returnValue).toMatchObject({ code: 'manual_update_required' });

      const events = await h.jobEvents(ws.chatId, job.id!);
      expect(events.filter((e) => e.type === 'result')).toEqual([events.at(-1)]);
      expect(events.at(-1)).toMatchObject({ stage: 'failed', data: result });
      expect(stagesOf(events)).not.toContain('retrying');
      expect(await h.newStartBuilds()).toEqual([]);
    });
  });

  describe('deduplication end to end', () => {
    it('turns 1000 concurrent starts of 10 workspaces into 10 jobs, 10 builds and one result each', async () => {
      // Builds stay pending until every call has returned, so every job is still active while the calls
      // arrive and each later call must be deduplicated onto it.
      h.provisioner.pause();
      await Promise.all([h.startWorker(), h.startWorker()]);
      const owner = await h.seedOwner();
      const workspaces: SeededWorkspace[] = [];
      for (let i = 0; i < 10; i++) workspaces.push(await h.seedStoppedWorkspace(owner));

      const calls = await Promise.all(
        Array.from({ length: 1000 }, (_, i) => {
          const ws = workspaces[i % 10]!;
          // Half name the workspace, half let the producer look it up from the chat.
          return h.producer.startWorkspace({
            chatId: ws.chatId,
            ownerId: ws.ownerId,
            ...(i % 2 === 0 && { workspaceId: ws.workspaceId }),
          });
        }),
      );
      expect(calls.filter((c) => !c.deduplicated)).toHaveLength(10);
      const jobIds = new Set(calls.map((c) => c.jobId));
      expect(jobIds.size).toBe(10);
      for (const [i, call] of calls.entries()) expect(call.workspaceId).toBe(workspaces[i % 10]!.workspaceId);
      h.provisioner.resume();

      const results = await Promise.all(
        [...jobIds].map((id) => h.producer.waitForResult(id, { timeoutMs: WAIT_MS })),
      );
      for (const result of results) expect((result as StartWorkspaceSuccess).started).toBe(true);

      // The result event is published just before BullMQ moves the job to completed.
      await vi.waitFor(async () => {
        const counts = await h.queue.getJobCounts();
        expect(counts.completed).toBe(10);
        expect(Object.values(counts).reduce((a, b) => a + b, 0)).toBe(10);
      }, POLL);

      const builds = await h.newStartBuilds();
      expect(builds).toHaveLength(10);
      expect(new Set(builds.map((b) => b.workspace_id))).toEqual(
        new Set(workspaces.map((w) => w.workspaceId)),
      );

      for (const ws of workspaces) {
        const events = await h.events(ws.chatId);
        const jobsOfChat = new Set(events.map((e) => e.job.id));
        expect(jobsOfChat.size).toBe(1);
        const results = events.filter((e) => e.type === 'result');
        expect(results).toHaveLength(1);
        expect(events.at(-1)).toBe(results[0]);
        expect(results[0]!.stage).toBe('completed');
        expect(events.filter((e) => e.stage === 'queued')).toHaveLength(1);
        // The chat's 99 duplicates agree with the job: one announcement on its stream.
        expect(events.filter((e) => e.stage === 'deduplicated')).toHaveLength(1);
        expect(events[0]!.stage).toBe('queued');
      }
    });
  });
});
