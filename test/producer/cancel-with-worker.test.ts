// producer.cancel against a real worker, Redis and Postgres: a waiting or delayed job that carries a build an
// earlier attempt created is left to a worker, which cancels that build before the one canceled result; a
// job that finished (ok, or failed) answers already_finished with its result, also when it finished between
// the cancel's read of its state and the cancel's own result.
import { randomUUID } from 'node:crypto';
import type { Job } from 'bullmq';
import { describe, expect, it, vi } from 'vitest';
import type { WorkspaceJobsProducer } from '../../src/producer/producer.js';
import { getJob } from '../provisioner/helpers.js';
import { WAIT_MS, useWorkspaceHarness } from '../helpers/worker-harness.js';

describe('cancel of a job a worker has seen', () => {
  const t = useWorkspaceHarness();

  const resultsOf = async (chatId: string, jobId: string) =>
    (await t.h.jobEvents(chatId, jobId)).filter((e) => e.type === 'result');

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
    // worker runs the job to its end. Only the producer's own read is wrapped; Redis and the worker are real.
    const queue = (h.producer as unknown as { queue: WorkspaceJobsProducer['queue'] }).queue as {
      getJob(id: string): Promise<Job | undefined>;
    };
    const getJob = queue.getJob.bind(queue);
    vi.spyOn(queue, 'getJob').mockImplementationOnce(async (id: string) => {
      const job = (await getJob(id))!;
      const getState = job.getState.bind(job);
      job.getState = async () => {
        const state = await getState();
        await h.startWorker();
        await h.waitForState(jobId, ['completed']);
        return state;
      };
      return job;
    });

    const answer = await h.producer.cancel(jobId);

    const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
    expect(result).toMatchObject({ ok: true });
    expect(answer).toEqual({ jobId, outcome: 'already_finished', result });
    expect(await h.queue.getJobState(jobId)).toBe('completed');
    const [only, ...more] = await resultsOf(ws.chatId, jobId);
    expect(more).toEqual([]);
    expect(only).toMatchObject({ stage: 'completed', data: { ok: true } });
  });
});
