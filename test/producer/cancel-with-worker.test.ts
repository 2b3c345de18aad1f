// producer.cancel against a real worker, Redis and Postgres: a waiting or delayed job that carries a build an
// earlier attempt created is left to a worker, which cancels that build before the one canceled result; a
// job that finished (ok, or failed) answers already_finished with its result, also when it finished between
// the cancel's read of its state and the cancel's own result; a worker that picks a job up between the
// cancel's result and its removal ends it with that result. The races are made by holding only the
// producer's own read of the job (or its removal) until a real worker has finished it.
import { randomUUID } from 'node:crypto';
import type { Job } from 'bullmq';
import { describe, expect, it, vi } from 'vitest';
import { getJob } from '../provisioner/helpers.js';
import { WAIT_MS, useWorkspaceHarness } from '../helpers/worker-harness.js';

describe('cancel of a job a worker has seen', () => {
  const t = useWorkspaceHarness();

  const resultsOf = async (chatId: string, jobId: string) =>
    (await t.h.jobEvents(chatId, jobId)).filter((e) => e.type === 'result');

  /**
   * A real worker runs the job to its end within the cancel's next call of the job's `step`: after the state
   * is read (and before the cancel has it), before the removal reaches Redis. Only the producer's own read
   * of the job is wrapped; Redis, BullMQ and the worker are real.
   */
  function beforeTheCancels(step: 'getState' | 'remove', jobId: string): void {
    const { queue } = t.h.producer as unknown as { queue: { getJob(id: string): Promise<Job | undefined> } };
    const getJob = queue.getJob.bind(queue);
    vi.spyOn(queue, 'getJob').mockImplementationOnce(async (id: string) => {
      const job = (await getJob(id))!;
      const original = job[step].bind(job) as (...args: unknown[]) => Promise<unknown>;
      Object.assign(job, {
        [step]: async (...args: unknown[]) => {
          const read = step === 'getState' ? await original(...args) : undefined;
          await t.h.startWorker();
          await t.h.waitForState(jobId, ['completed']);
          return step === 'getState' ? read : original(...args);
        },
      });
      return job;
    });
  }

  it('when a delayed job carries an earlier attempt’s build › a worker cancels that build and ends it with one canceled result', async () => {
    const { h, ws } = t;
    h.provisioner.pause();
    const worker = await h.startWorker();
    const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
    const queued = await h.waitForEvent(ws.chatId, 'build_queued', (e) => e.job.id === jobId);
    const { rows } = await h.db.pool.query<{ job_id: string }>(
      'SELECT job_id FROM workspace_builds WHERE id = $1',
      [String(queued.data?.build_id)],
    );
    const provisionerJobId = rows[0]!.job_id;
    // A short grace: the worker hands the job back (delayed), its build still pending.
    await h.closeWorker(worker, 200);
    await h.waitForState(jobId, ['delayed', 'waiting']);
    expect((await h.progressOf(jobId)).buildId).toBe(queued.data?.build_id);

    const answer = await h.producer.cancel(jobId, { reason: 'user pressed stop' });

    // Not removed (that would leave the build to start the workspace anyway): promoted, for a worker.
    expect(answer).toEqual({ jobId, outcome: 'cancel_requested' });
    expect(await h.queue.getJobState(jobId)).toBe('waiting');
    expect(await resultsOf(ws.chatId, jobId)).toEqual([]);
    await h.startWorker();
    expect(await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS })).toMatchObject({
      ok: false,
      code: 'canceled',
      error: 'canceled: user pressed stop',
    });
    const build = await getJob(h.db.pool, provisionerJobId);
    expect(build).toMatchObject({ job_status: 'canceled' });
    expect(build.canceled_at).not.toBeNull();
    expect(await h.activeBuilds(ws.workspaceId)).toEqual([]);
    const [result, ...more] = await resultsOf(ws.chatId, jobId);
    expect(more).toEqual([]);
    expect(result).toMatchObject({ stage: 'failed', data: { code: 'canceled' } });
  });

  it('when the job completed ok › answers already_finished with its result, and publishes nothing', async () => {
    const { h, ws } = t;
    await h.startWorker();
    const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
    const done = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
    expect(done).toMatchObject({ ok: true });
    await h.waitForState(jobId, ['completed']);

    expect(await h.producer.cancel(jobId)).toEqual({ jobId, outcome: 'already_finished', result: done });

    expect(await h.queue.getJobState(jobId)).toBe('completed');
    expect(await resultsOf(ws.chatId, jobId)).toHaveLength(1);
  });

  it('when the job failed › answers already_finished with its failure, and publishes nothing', async () => {
    const { h, ws } = t;
    await h.startWorker();
    // A chat the database does not know: a real failure, the job fails in BullMQ.
    const chatId = randomUUID();
    const { jobId } = await h.producer.startWorkspace({
      chatId,
      ownerId: ws.ownerId,
      workspaceId: randomUUID(),
    });
    await h.waitForState(jobId, ['failed']);
    const failed = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
    expect(failed).toMatchObject({ ok: false, code: 'invalid_payload' });

    expect(await h.producer.cancel(jobId)).toEqual({ jobId, outcome: 'already_finished', result: failed });

    expect(await h.queue.getJobState(jobId)).toBe('failed');
    expect(await resultsOf(chatId, jobId)).toHaveLength(1);
  });

  it('when a worker completes the job between the cancel’s state read and its result › answers already_finished with the ok result, and keeps the job', async () => {
    const { h, ws } = t;
    const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
    // The producer reads the job as waiting (no worker runs yet); before that answer reaches the cancel, a
    // worker runs the job to its end.
    beforeTheCancels('getState', jobId);

    const answer = await h.producer.cancel(jobId);

    const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
    expect(result).toMatchObject({ ok: true });
    expect(answer).toEqual({ jobId, outcome: 'already_finished', result });
    expect(await h.queue.getJobState(jobId)).toBe('completed');
    const [only, ...more] = await resultsOf(ws.chatId, jobId);
    expect(more).toEqual([]);
    expect(only).toMatchObject({ stage: 'completed', data: { ok: true } });
  });

  it('when a worker picks the job up between the cancel’s result and its removal › the worker ends it with that canceled result and makes no build', async () => {
    const { h, ws } = t;
    const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
    // The cancel's result is out; before its removal reaches Redis, a worker runs the job to its end.
    beforeTheCancels('remove', jobId);

    const answer = await h.producer.cancel(jobId, { reason: 'user pressed stop' });

    expect(answer).toMatchObject({ jobId, outcome: 'canceled', was: 'waiting' });
    expect(await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS })).toMatchObject({
      code: 'canceled',
      error: 'canceled: user pressed stop',
    });
    const [only, ...more] = await resultsOf(ws.chatId, jobId);
    expect(more).toEqual([]);
    expect(only).toMatchObject({
      stage: 'failed',
      data: { code: 'canceled', error: 'canceled: user pressed stop' },
    });
    expect(await h.newStartBuilds(ws.workspaceId)).toEqual([]);
  });
});
