// Cancel of an active job (issue 10 §3) on real Redis and Postgres: the producer's broadcast reaches the
// worker running the job, which aborts it, cancels the build it created (Coder's semantics: a pending one
// completes canceled at once, a running one is aborted by its daemon, whose command's process group is
// killed) and ends it with one canceled result; the chat lock is free for the chat's next job. A job delayed
// while its chat lock is busy is removed by the producer instead, with the same one result. One whose build
// succeeded, waiting for its agent, ends started: the cancel only ends that wait.
import { describe, expect, it, vi } from 'vitest';
import { insertBuild, type BuildStatus } from '../../src/cli/fixtures.js';
import { WorkspaceJobsProducer } from '../../src/producer/producer.js';
import { PgWorkspaceStore } from '../../src/worker/pg-store.js';
import type { JobResult } from '../../src/shared/contract.js';
import type { CancelRequest } from '../../src/shared/cancel-requests.js';
import type { ChatLocks } from '../../src/shared/lock.js';
import { JobCancelRequestedError } from '../../src/worker/cancel-requested.js';
import { getJob, getLogs, isAlive } from '../provisioner/helpers.js';
import {
  POLL,
  WAIT_MS,
  bounded,
  useWorkspaceHarness,
  type SeededWorkspace,
} from '../helpers/worker-harness.js';

describe('cancel of a delayed or an active job', () => {
  const t = useWorkspaceHarness();

  /** Starts the chat's workspace and waits until its job reports `stage`; returns the job and its build. */
  async function startAndWaitFor(ws: SeededWorkspace, stage: 'build_queued' | 'build_running') {
    const { jobId } = await t.h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
    const event = await t.h.waitForEvent(ws.chatId, stage, (e) => e.job.id === jobId);
    const buildId = String(event.data?.build_id);
    const { rows } = await t.h.db.pool.query<{ job_id: string }>(
      'SELECT job_id FROM workspace_builds WHERE id = $1',
      [buildId],
    );
    return { jobId, provisionerJobId: rows[0]!.job_id };
  }

  /** Cancels the job, which is running: the answer says so, and the job's result follows. */
  async function cancelRunning(jobId: string, producer = t.h.producer): Promise<JobResult> {
    const answer = await producer.cancel(jobId, { reason: 'user pressed stop' });
    expect(answer).toEqual({ jobId, outcome: 'cancel_requested' });
    return t.h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
  }

  /**
   * The job ended with one canceled result (exactly one result event on the chat stream, no hand-back) and
   * the chat's next job takes the chat lock.
   */
  async function expectCanceledOnce(ws: SeededWorkspace, jobId: string, result: JobResult) {
    expect(result).toMatchObject({ ok: false, code: 'canceled', error: 'canceled: user pressed stop' });
    const events = await t.h.jobEvents(ws.chatId, jobId);
    const results = events.filter((e) => e.type === 'result');
    expect(results).toHaveLength(1);
    expect(results[0]).toMatchObject({ stage: 'failed', data: { code: 'canceled' } });
    expect(events.map((e) => e.stage)).not.toContain('retrying');
    expect((await t.h.waitForState(jobId, ['completed'])).attemptsMade).toBe(1);
    const next = await t.h.producer.stopWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
    expect(next.jobId).not.toBe(jobId);
    await t.h.waitForEvent(ws.chatId, 'lock_acquired', (e) => e.job.id === next.jobId);
  }

  it('when it waits for its chat lock (delayed) › it is removed with one canceled result and makes no build', async () => {
    const { h, ws } = t;
    // A long re-delay, so that the job sits in delayed when the cancel comes.
    await h.startWorker({ processor: { lockRetryMinMs: 10_000, lockRetryMaxMs: 10_000 } });
    const held = await h.locks().tryAcquire(ws.chatId);
    expect(held).not.toBeNull();
    try {
      const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
      await h.waitForEvent(ws.chatId, 'waiting_for_lock', (e) => e.job.id === jobId);
      await h.waitForState(jobId, ['delayed']);

      const answer = await h.producer.cancel(jobId, { reason: 'user pressed stop' });

      expect(answer).toMatchObject({ jobId, outcome: 'canceled', was: 'delayed' });
      expect(await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS })).toMatchObject({
        ok: false,
        code: 'canceled',
        error: 'canceled: user pressed stop',
      });
      const events = await h.jobEvents(ws.chatId, jobId);
      expect(events.map((e) => e.stage)).toEqual(['queued', 'waiting_for_lock', 'failed']);
      expect(await h.queue.getJob(jobId)).toBeUndefined();
      const { rows } = await h.db.pool.query<{ id: string }>(
        'SELECT id FROM workspace_builds WHERE workspace_id = $1 ORDER BY build_number DESC LIMIT 1',
        [ws.workspaceId],
      );
      expect(rows[0]?.id).toBe(ws.stopBuildId);
    } finally {
      await held?.release();
    }
  });

  describe('when the cancel comes while the job takes its chat lock', () => {
    /**
     * A worker whose jobs' cancel watches are aborted from inside the chat lock's tryAcquire, as a broadcast
     * arriving then would; tryAcquire then takes the lock (`taken`) or finds it busy. `busy`: the first try
     * finds it busy without a cancel (the job re-delays and its lock wait starts), the cancel comes at the next.
     */
    async function workerCanceledAtLock(lock: 'taken' | 'busy', lockWaitTimeoutMs?: number) {
      const { h } = t;
      const watches: { cancel: () => void }[] = [];
      let tries = 0;
      const real = h.locks();
      const request = { at: new Date().toISOString(), reason: 'user pressed stop' };
      await h.startWorker({
        processor: {
          cancels: {
            // As CancelListener's: the request kept, the attempt's controller aborted with it.
            watch: async (_jobId, controller = new AbortController()) => {
              const watch = {
                signal: controller.signal,
                request: undefined as CancelRequest | undefined,
                done: () => {},
                cancel: () => {
                  watch.request ??= request;
                  controller.abort(new JobCancelRequestedError('the job', request));
                },
              };
              watches.push(watch);
              return watch;
            },
          },
          locks: {
            tryAcquire: async (chatId: string) => {
              tries++;
              if (lock === 'taken' || tries > 1) for (const w of watches) w.cancel();
              return lock === 'taken' ? real.tryAcquire(chatId) : null;
            },
          } as unknown as ChatLocks,
          ...(lockWaitTimeoutMs !== undefined && { lockWaitTimeoutMs }),
        },
      });
    }

    it('ends canceled even when its kind needs no wait (a stop of a stopped workspace)', async () => {
      const { h, ws } = t;
      await workerCanceledAtLock('taken');
      const { jobId } = await h.producer.stopWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
      const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
      expect(result).toMatchObject({ ok: false, code: 'canceled', error: 'canceled: user pressed stop' });
      const events = await h.jobEvents(ws.chatId, jobId);
      expect(events.map((e) => e.stage)).toEqual(['queued', 'failed']);
    });

    it('ends canceled, not as an internal lock-wait timeout, when the lock is busy and the wait is over', async () => {
      const { h, ws } = t;
      // Re-delayed for 50-200 ms: over the 10 ms bound when the cancel comes.
      await workerCanceledAtLock('busy', 10);
      const { jobId } = await h.producer.stopWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
      const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
      expect(result).toMatchObject({ ok: false, code: 'canceled' });
      const events = await h.jobEvents(ws.chatId, jobId);
      expect(events.map((e) => e.stage)).toEqual(['queued', 'waiting_for_lock', 'failed']);
      expect((await h.waitForState(jobId, ['completed'])).attemptsMade).toBe(1);
    });
  });

  it('when its build is pending › the build completes canceled at once, and the job ends canceled', async () => {
    const { h, ws } = t;
    h.provisioner.pause();
    await h.startWorker();
    const { jobId, provisionerJobId } = await startAndWaitFor(ws, 'build_queued');

    const result = await cancelRunning(jobId);

    const build = await getJob(h.db.pool, provisionerJobId);
    expect(build).toMatchObject({ job_status: 'canceled', started_at: null, error: null });
    expect(build.canceled_at).not.toBeNull();
    const logs = await getLogs(h.db.pool, provisionerJobId);
    expect(logs.map((l) => l.output)).toEqual(['Job canceled before it started']);
    expect(await h.activeBuilds(ws.workspaceId)).toEqual([]);
    await expectCanceledOnce(ws, jobId, result);
  });

  it('when its build runs on the simulator › the daemon aborts it before the result goes out', async () => {
    const { h, ws } = t;
    await h.startProvisionerDaemon({ SIM_BUILD_MS: '60000' });
    await h.startWorker();
    const { jobId, provisionerJobId } = await startAndWaitFor(ws, 'build_running');

    const result = await cancelRunning(jobId);

    // Waited for: the build had ended when the result went out.
    const build = await getJob(h.db.pool, provisionerJobId);
    expect(build).toMatchObject({ job_status: 'canceled', error: null });
    expect(build.started_at).not.toBeNull();
    expect(await h.activeBuilds(ws.workspaceId)).toEqual([]);
    await expectCanceledOnce(ws, jobId, result);
  });

  it("when its build runs a command › the command's process group is killed and the build canceled", async () => {
    const { h, ws } = t;
    await h.startProvisionerDaemon({
      PROVISIONER_EXECUTOR: 'command',
      // A child of the script as well: the kill must reach the whole group, not only the shell.
      PROVISIONER_COMMAND: 'sleep 60 & echo "pids=$$,$!"; wait',
    });
    await h.startWorker();
    const { jobId, provisionerJobId } = await startAndWaitFor(ws, 'build_running');
    const pids = await vi.waitFor(async () => {
      const line = (await getLogs(h.db.pool, provisionerJobId)).find((l) => l.output.startsWith('pids='));
      expect(line, 'the command to start').toBeDefined();
      return line!.output.slice('pids='.length).split(',').map(Number);
    }, POLL);
    expect(pids).toHaveLength(2);
    expect(pids.map(isAlive)).toEqual([true, true]);

    const result = await cancelRunning(jobId);

    expect(await getJob(h.db.pool, provisionerJobId)).toMatchObject({ job_status: 'canceled', error: null });
    await expect.poll(() => pids.map(isAlive), { ...POLL, timeout: 5_000 }).toEqual([false, false]);
    expect(await h.activeBuilds(ws.workspaceId)).toEqual([]);
    await expectCanceledOnce(ws, jobId, result);
  });

  it('when two workers run › the one running the job ends it, canceled through another producer', async () => {
    const { h, ws } = t;
    h.provisioner.pause();
    const held: Record<string, string[]> = { a: [], b: [] };
    for (const name of ['a', 'b'] as const) {
      await h.startWorker({
        processor: { onLockHeld: ({ jobId, phase }) => held[name]!.push(`${phase} ${jobId}`) },
      });
    }
    const { jobId, provisionerJobId } = await startAndWaitFor(ws, 'build_queued');
    const producer = new WorkspaceJobsProducer({
      connection: h.connection('workspace-jobs-test-producer'),
      pool: h.db.pool,
      prefix: h.prefix,
    });
    h.onClose(() => producer.close());

    const result = await cancelRunning(jobId, producer);

    // One worker held the job's lock and released it (just after the result); the other never ran it.
    const runs = () => Object.values(held).map((phases) => phases.filter((p) => p.endsWith(jobId)));
    await vi.waitFor(() => {
      expect(runs().sort((x, y) => y.length - x.length)).toEqual([
        [`acquired ${jobId}`, `released ${jobId}`],
        [],
      ]);
    }, POLL);
    expect(await getJob(h.db.pool, provisionerJobId)).toMatchObject({ job_status: 'canceled' });
    expect(await h.activeBuilds(ws.workspaceId)).toEqual([]);
    await expectCanceledOnce(ws, jobId, result);
  });

  it('when it waits for a build another job started › that build is left to run', async () => {
    const { h } = t;
    h.provisioner.pause();
    const owner = await h.seedOwner();
    const ws = await h.seedStoppedWorkspace(owner);
    const inFlight = await insertBuild(h.db.pool, {
      workspaceId: ws.workspaceId,
      templateVersionId: owner.versionId,
      transition: 'start',
      status: 'pending',
      initiatorId: owner.ownerId,
    });
    await h.startWorker();
    const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
    await h.waitForEvent(ws.chatId, 'waiting_for_existing_build', (e) => e.job.id === jobId);

    const result = await cancelRunning(jobId);

    expect(result).toMatchObject({ code: 'canceled' });
    expect(await getJob(h.db.pool, inFlight.jobId)).toMatchObject({
      job_status: 'pending',
      canceled_at: null,
    });
  });

  // D19: too late to stop the start, the cancel ends the wait for the agent, and the job reports the start.
  it.each([
    [
      'agent_connecting',
      { SIM_AGENT_CONNECT_MS: '60000' },
      {
        agent_status: 'not_ready',
        agent_error: 'canceled while waiting for agent "main" to connect: user pressed stop',
      },
    ],
    // The agent is connected: as in Coder, its startup scripts' outcome is unknown, the agent not "not ready".
    ['agent_starting', { SIM_STARTUP_MS: '60000' }, { startup_scripts: 'startup_scripts_unknown' }],
  ] as const)(
    'when its build succeeded and it waits for the agent (%s) › it ends started, with the wait left unfinished',
    async (stage, env, readiness) => {
      const { h, ws } = t;
      await h.startProvisionerDaemon(env);
      await h.startWorker();
      const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
      const succeeded = await h.waitForEvent(ws.chatId, 'build_succeeded', (e) => e.job.id === jobId);
      await h.waitForEvent(ws.chatId, stage, (e) => e.job.id === jobId);

      const answer = await h.producer.cancel(jobId, { reason: 'user pressed stop' });

      expect(answer).toEqual({ jobId, outcome: 'cancel_requested' });
      const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
      expect(result).toEqual({
        kind: 'start-workspace',
        ok: true,
        started: true,
        workspace_name: ws.workspaceName,
        build_id: succeeded.data?.build_id,
        ...readiness,
      });
      const events = await h.jobEvents(ws.chatId, jobId);
      expect(events.filter((e) => e.type === 'result')).toMatchObject([{ stage: 'completed' }]);
      expect(await h.activeBuilds(ws.workspaceId)).toEqual([]);
    },
  );

  describe('while its worker shuts down', () => {
    it('a cancel in the grace period ends the job canceled instead of handing it back', async () => {
      const { h, ws } = t;
      h.provisioner.pause();
      const worker = await h.startWorker();
      const { jobId, provisionerJobId } = await startAndWaitFor(ws, 'build_queued');
      h.workers.delete(worker);
      const closing = worker.close(20_000);

      const result = await cancelRunning(jobId);

      // The worker is done once its job is: well within the grace period.
      await bounded(closing, 10_000, 'closing the worker once its job is canceled');
      expect(await getJob(h.db.pool, provisionerJobId)).toMatchObject({ job_status: 'canceled' });
      await h.startWorker();
      await expectCanceledOnce(ws, jobId, result);
    });

    it('the hand-back at the end of the grace period cancels nothing', async () => {
      const { h, ws } = t;
      h.provisioner.pause();
      const worker = await h.startWorker();
      const { jobId, provisionerJobId } = await startAndWaitFor(ws, 'build_queued');

      await h.closeWorker(worker, 200);

      expect((await h.waitForState(jobId, ['delayed', 'waiting'])).attemptsMade).toBe(0);
      const events = await h.jobEvents(ws.chatId, jobId);
      expect(events.filter((e) => e.type === 'result')).toEqual([]);
      expect(events.at(-1)).toMatchObject({ stage: 'retrying' });
      expect(await getJob(h.db.pool, provisionerJobId)).toMatchObject({
        job_status: 'pending',
        canceled_at: null,
      });
    });
  });

  describe("the store's cancelProvisionerJob", () => {
    /** A build of the seeded workspace whose provisioner job is in `status`. */
    async function buildIn(status: BuildStatus) {
      const owner = await t.h.seedOwner();
      const ws = await t.h.seedStoppedWorkspace(owner);
      const common = { workspaceId: ws.workspaceId, templateVersionId: owner.versionId };
      return insertBuild(t.h.db.pool, { ...common, transition: 'start', status, initiatorId: owner.ownerId });
    }

    it('completes a pending job as canceled, leaves a running one to its daemon, and touches no completed one', async () => {
      const store = new PgWorkspaceStore(t.h.db.pool);
      t.h.provisioner.pause();
      const [pending, running, succeeded] = await Promise.all(
        (['pending', 'running', 'succeeded'] as const).map(buildIn),
      );

      expect(await store.cancelProvisionerJob(pending!.jobId)).toBe('completed');
      expect(await store.cancelProvisionerJob(running!.jobId)).toBe('canceling');
      expect(await store.cancelProvisionerJob(succeeded!.jobId)).toBe('untouched');

      expect(await getJob(t.h.db.pool, pending!.jobId)).toMatchObject({ job_status: 'canceled' });
      const canceling = await getJob(t.h.db.pool, running!.jobId);
      expect(canceling).toMatchObject({ job_status: 'canceling', completed_at: null });
      expect(await getJob(t.h.db.pool, succeeded!.jobId)).toMatchObject({
        job_status: 'succeeded',
        canceled_at: null,
      });
      expect(await getLogs(t.h.db.pool, running!.jobId)).toEqual([]);
      // Asked again: the first request's time stands, and nothing more is written.
      expect(await store.cancelProvisionerJob(running!.jobId)).toBe('canceling');
      expect((await getJob(t.h.db.pool, running!.jobId)).canceled_at).toEqual(canceling.canceled_at);
      expect(await store.cancelProvisionerJob(pending!.jobId)).toBe('untouched');
      expect(await getLogs(t.h.db.pool, pending!.jobId)).toHaveLength(1);
    });
  });
});
