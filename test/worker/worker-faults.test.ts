// Workers that die or freeze under a job, as real processes (`node --import tsx src/cli/main.ts worker`) on
// real Redis and Postgres: another worker takes the job over and finishes it; a worker paused past its locks
// and woken writes nothing more to the job; the one result event and BullMQ's outcome always agree, even
// when a worker dies between the two; a re-run that finds the build its own earlier attempt made reports it.
import { randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { insertChat } from '../../src/cli/fixtures.js';
import type { JobResult, WorkspaceJobEvent } from '../../src/shared/contract.js';
import { bullStateOf } from '../../src/worker/processor.js';
import { CliProcess } from '../helpers/cli-process.js';
import { TEST_REDIS_URL } from '../helpers/redis.js';
import { WAIT_MS, WorkerHarness, POLL } from '../helpers/worker-harness.js';

/** Short locks, so that a takeover takes a few seconds: BullMQ's job lock, its stalled check, the chat lock. */
const FAST_RECOVERY = { JOB_LOCK_MS: '3000', STALLED_INTERVAL_MS: '500', CHAT_LOCK_TTL_MS: '3000' };
/** A takeover: the job lock expires, a stalled check notices, the chat lock expires, the lock re-delay. */
const TAKEOVER_MS = 25_000;
const EXIT_MS = 15_000;

describe('when a worker dies or freezes under a job', () => {
  let h: WorkerHarness;
  const processes: CliProcess[] = [];

  beforeEach(async () => {
    h = await WorkerHarness.create({ provisioner: { paused: true } });
  });

  afterEach(async () => {
    for (const cli of processes.splice(0)) {
      cli.signal('SIGCONT');
      cli.kill();
      await cli.waitForExit(EXIT_MS).catch(() => {});
    }
    await h.close();
  });

  /** A worker process on the harness's database and prefix, once it takes jobs. */
  async function startWorker(label: string, script?: string): Promise<CliProcess> {
    const env = {
      REDIS_URL: TEST_REDIS_URL,
      DATABASE_URL: h.db.url,
      QUEUE_PREFIX: h.prefix,
      LOG_LEVEL: 'debug',
      WORKER_CONCURRENCY: '2',
      BUILD_TIMEOUT_MS: '90000',
      AGENT_CONNECT_TIMEOUT_MS: '20000',
      STARTUP_SCRIPT_TIMEOUT_MS: '20000',
      SHUTDOWN_GRACE_MS: '2000',
      ...FAST_RECOVERY,
    };
    const worker = new CliProcess(label, ['worker'], env, script);
    processes.push(worker);
    await worker.waitForLog('worker started', (l) => l.msg === 'worker started');
    return worker;
  }

  /** Resolves once `worker` holds the job's chat lock (its attempt runs). */
  function holds(worker: CliProcess, jobId: string, timeoutMs = TAKEOVER_MS) {
    return worker.waitForLog(
      `the chat lock of job ${jobId}`,
      (l) => l.msg === 'chat lock acquired' && l.jobId === jobId,
      timeoutMs,
    );
  }

  async function buildStatus(buildId: string): Promise<string | undefined> {
    const { rows } = await h.db.pool.query<{ job_status: string }>(
      `SELECT j.job_status FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id WHERE b.id = $1`,
      [buildId],
    );
    return rows[0]?.job_status;
  }

  async function startJob() {
    const ws = await h.seedStoppedWorkspace();
    const { jobId } = await h.producer.startWorkspace({
      chatId: ws.chatId,
      ownerId: ws.ownerId,
      workspaceId: ws.workspaceId,
    });
    return { ws, jobId };
  }

  /** The job's one result event and its BullMQ outcome, asserted to agree. */
  async function expectOneAgreeingResult(chatId: string, jobId: string): Promise<WorkspaceJobEvent> {
    const job = await h.waitForState(jobId, ['completed', 'failed']);
    const results = (await h.jobEvents(chatId, jobId)).filter((e) => e.type === 'result');
    expect(results).toHaveLength(1);
    const [result] = results as [WorkspaceJobEvent];
    // A success or an expected failure result completes the job; only a real failure fails it.
    if (bullStateOf(result.data as JobResult) === 'completed') {
      expect(await h.queue.getJobState(jobId)).toBe('completed');
      expect(job.returnvalue).toEqual(result.data);
    } else {
      expect(await h.queue.getJobState(jobId)).toBe('failed');
      expect(job.failedReason).toBe((result.data as { error: string }).error);
    }
    expect((job.progress as { result?: JobResult }).result).toEqual(result.data);
    return result;
  }

  it('when paused past its locks while the build runs › another worker finishes the job, and the woken one writes nothing to it', async () => {
    const first = await startWorker('worker 1');
    const { ws, jobId } = await startJob();
    await holds(first, jobId);
    const queued = await h.waitForEvent(ws.chatId, 'build_queued', (e) => e.job.id === jobId);
    const buildId = queued.data?.build_id;

    first.signal('SIGSTOP');
    const second = await startWorker('worker 2');
    await holds(second, jobId);
    // The second worker waits for the build the first one made, then it completes.
    await h.waitForEvent(
      ws.chatId,
      'waiting_for_existing_build',
      (e) => e.job.id === jobId && e.data?.build_id === buildId,
    );
    h.provisioner.resume();
    await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
    const result = await expectOneAgreeingResult(ws.chatId, jobId);
    expect(result).toMatchObject({
      stage: 'completed',
      data: { kind: 'start-workspace', ok: true, started: true, build_id: buildId },
    });
    const eventsBefore = await h.jobEvents(ws.chatId, jobId);
    const progressBefore = await h.progressOf(jobId);

    // Woken: its build wait sees the build finish (the NOTIFY is waiting in its socket) before any timer runs.
    first.signal('SIGCONT');
    await first.waitForLog(
      'the attempt to stop',
      (l) => l.msg.startsWith('this attempt lost its chat lock or its job') && l.jobId === jobId,
      TAKEOVER_MS,
    );
    // Once it has exited, whatever it would still do is done.
    expect((await first.stop('SIGTERM', EXIT_MS)).code).toBe(0);

    expect(await h.jobEvents(ws.chatId, jobId)).toEqual(eventsBefore);
    expect(await h.progressOf(jobId)).toEqual(progressBefore);
    await expectOneAgreeingResult(ws.chatId, jobId);
    expect((await h.newStartBuilds()).map((b) => b.id)).toEqual([buildId]);
  }, 90_000);

  /**
   * Runs the job `enqueue` adds on a worker held after its result event, kills it in that window and starts
   * another worker: the re-run ends the job with the result already out.
   */
  async function killedBetweenResultAndRecord(enqueue: () => Promise<{ chatId: string; jobId: string }>) {
    const held = await startWorker(
      'worker held after its result',
      'test/helpers/worker-held-after-result.ts',
    );
    const { chatId, jobId } = await enqueue();
    await held.waitForLog(
      'its result event',
      (l) => l.msg === 'result published; holding before BullMQ records it' && l.jobId === jobId,
      WAIT_MS,
    );
    const [published] = (await h.jobEvents(chatId, jobId)).filter((e) => e.type === 'result');
    expect(await h.queue.getJobState(jobId)).toBe('active');

    held.kill();
    await held.waitForExit(EXIT_MS);
    const next = await startWorker('worker 2');
    await next.waitForLog(
      'the re-run',
      (l) =>
        l.msg === 'the result of an earlier attempt is already out; the job ends with it' &&
        l.jobId === jobId,
      TAKEOVER_MS,
    );
    const result = await expectOneAgreeingResult(chatId, jobId);
    expect(result).toEqual(published);
    return result;
  }

  it('when killed between publishing the result and BullMQ recording it › the re-run ends the job with that same result', async () => {
    h.provisioner.resume();
    const result = await killedBetweenResultAndRecord(async () => {
      const { ws, jobId } = await startJob();
      return { chatId: ws.chatId, jobId };
    });

    expect(result).toMatchObject({
      stage: 'completed',
      data: { kind: 'start-workspace', ok: true, started: true },
    });
    expect(result.data).not.toHaveProperty('no_build');
    expect(await h.newStartBuilds()).toHaveLength(1);
  }, 90_000);

  it('when killed between publishing an expected failure result and BullMQ recording it › the re-run completes the job with it', async () => {
    const result = await killedBetweenResultAndRecord(async () => {
      const owner = await h.seedOwner();
      // A chat without a workspace, the workspace named explicitly: the start's result is no_workspace.
      const { chatId } = await insertChat(h.db.pool, { ownerId: owner.ownerId });
      const { jobId } = await h.producer.startWorkspace({
        chatId,
        ownerId: owner.ownerId,
        workspaceId: randomUUID(),
      });
      return { chatId, jobId };
    });

    expect(result).toMatchObject({ stage: 'failed', data: { code: 'no_workspace' } });
    // expectOneAgreeingResult checked the job completed with it; a failed job would also show a stack.
    expect((await h.queue.getJob(result.job.id))!.stacktrace).toEqual([]);
  }, 90_000);

  /**
   * Kills `first` once the job's build is queued, lets the build finish while no worker runs the job, then
   * starts another worker: the job's one result, agreeing with BullMQ, and the build its first attempt made.
   */
  async function rerunAfterItsBuildFinished(first: CliProcess, chatId: string, jobId: string) {
    const queued = await h.waitForEvent(chatId, 'build_queued', (e) => e.job.id === jobId);
    const buildId = queued.data?.build_id as string;
    first.kill();
    await first.waitForExit(EXIT_MS);
    h.provisioner.resume();
    await expect.poll(() => buildStatus(buildId), POLL).toBe('succeeded');
    await startWorker('worker 2');

    await h.producer.waitForResult(jobId, { timeoutMs: TAKEOVER_MS });
    return { result: await expectOneAgreeingResult(chatId, jobId), buildId };
  }

  it('when killed after creating the build, which finishes meanwhile › the re-run reports that build, not "no build"', async () => {
    const first = await startWorker('worker 1');
    const { ws, jobId } = await startJob();

    const { result, buildId } = await rerunAfterItsBuildFinished(first, ws.chatId, jobId);

    expect(result.data).toMatchObject({
      kind: 'start-workspace',
      ok: true,
      started: true,
      build_id: buildId,
    });
    expect(result.data).not.toHaveProperty('no_build');
    expect((await h.newStartBuilds()).map((b) => b.id)).toEqual([buildId]);
  }, 90_000);

  it('when a create job is killed after creating the workspace, whose build finishes meanwhile › the re-run reports it created, not "already exists"', async () => {
    const first = await startWorker('worker 1');
    const owner = await h.seedOwner();
    const { chatId } = await insertChat(h.db.pool, { ownerId: owner.ownerId });
    const { jobId } = await h.producer.createWorkspace({
      chatId,
      ownerId: owner.ownerId,
      templateId: owner.templateId,
    });

    const { result, buildId } = await rerunAfterItsBuildFinished(first, chatId, jobId);

    expect(result.data).toMatchObject({
      kind: 'create-workspace',
      ok: true,
      created: true,
      build_id: buildId,
    });
    const { rows } = await h.db.pool.query('SELECT id FROM workspaces WHERE owner_id = $1', [owner.ownerId]);
    expect(rows).toHaveLength(1);
  }, 90_000);

  it('when its worker is killed twice › the job resumes on another worker each time and completes', async () => {
    const workers = await Promise.all(
      ['worker 1', 'worker 2', 'worker 3'].map((label) => startWorker(label)),
    );
    const { ws, jobId } = await startJob();
    const queued = await h.waitForEvent(ws.chatId, 'build_queued', (e) => e.job.id === jobId);

    const killed: CliProcess[] = [];
    for (let death = 1; death <= 2; death++) {
      const alive = workers.filter((w) => !killed.includes(w));
      const holder = await Promise.any(alive.map((w) => holds(w, jobId).then(() => w)));
      holder.kill();
      await holder.waitForExit(EXIT_MS);
      killed.push(holder);
    }
    const [survivor] = workers.filter((w) => !killed.includes(w));
    await holds(survivor!, jobId);
    h.provisioner.resume();

    await h.producer.waitForResult(jobId, { timeoutMs: TAKEOVER_MS });
    const result = await expectOneAgreeingResult(ws.chatId, jobId);
    expect(result).toMatchObject({
      stage: 'completed',
      data: { kind: 'start-workspace', ok: true, started: true, build_id: queued.data?.build_id },
    });
    expect((await h.newStartBuilds()).map((b) => b.id)).toEqual([queued.data?.build_id]);
  }, 120_000);
});
