// waitForResult on real Redis: from the job's final state, from its `result` event, and its time limit.
import { randomUUID } from 'node:crypto';
import { Queue, UnrecoverableError, Worker } from 'bullmq';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { JobNotFoundError, ProducerClosedError, WorkspaceJobsProducer } from '../../src/producer/producer.js';
import { WaitTimeoutError } from '../../src/shared/errors.js';
import { EventPublisher } from '../../src/shared/events.js';
import { QUEUE_NAME, type JobFailure, type JobProgress, type JobResult } from '../../src/shared/contract.js';
import { redisKeys } from '../../src/shared/keys.js';
import { closeRedis, createRedis, type Redis } from '../../src/shared/redis.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { TEST_REDIS_URL, deleteKeys, testRedis, uniquePrefix } from '../helpers/redis.js';

/** How long and how often a test polls for a wait to be under way (subscribing takes milliseconds). */
const POLL = { timeout: 2_000, interval: 20 };

describe('WorkspaceJobsProducer.waitForResult', () => {
  let prefix: string;
  let redis: Redis;
  let db: TestDatabase;
  let producer: WorkspaceJobsProducer;
  let queue: Queue;
  const cleanups: (() => Promise<unknown>)[] = [];

  beforeEach(async () => {
    prefix = uniquePrefix('wait');
    redis = testRedis();
    db = await createTestDatabase();
    producer = new WorkspaceJobsProducer({
      connection: redis,
      pool: db.pool,
      prefix,
      attempts: 1,
      resultRecheckMs: 100,
    });
    queue = new Queue(QUEUE_NAME, { connection: redis, prefix });
  });

  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
    await producer.close();
    await queue.close();
    await deleteKeys(redis, prefix);
    await closeRedis(redis);
    await db.drop();
  });

  function startWorker(process: ConstructorParameters<typeof Worker>[1]): Worker {
    const connection = createRedis(TEST_REDIS_URL, { blocking: true });
    const worker = new Worker(QUEUE_NAME, process, { connection, prefix });
    worker.on('error', () => {});
    cleanups.push(async () => {
      await worker.close();
      await closeRedis(connection);
    });
    return worker;
  }

  async function enqueue() {
    const input = { chatId: randomUUID(), ownerId: randomUUID(), workspaceId: randomUUID() };
    const { jobId } = await producer.startWorkspace(input);
    return { ...input, jobId };
  }

  async function finished(jobId: string, state: 'completed' | 'failed') {
    await vi.waitFor(async () => expect(await queue.getJobState(jobId)).toBe(state), { timeout: 10_000 });
  }

  /** Subscriber connections listening on the chat's channel: 1 once a wait is under way. */
  async function listeners(chatId: string): Promise<number> {
    const [, n] = (await redis.pubsub('NUMSUB', redisKeys(prefix).chatChannel(chatId))) as [string, number];
    return Number(n);
  }

  const success: JobResult = {
    kind: 'start-workspace',
    ok: true,
    started: true,
    workspace_name: 'dev',
    build_id: randomUUID(),
  };
  const failure: JobFailure = {
    kind: 'start-workspace',
    ok: false,
    error: 'Workspace build failed: terraform apply exited with 1',
    code: 'build_failed',
    is_error: false,
    build_id: randomUUID(),
  };

  it('returns the return value of a job that has already completed', async () => {
    const { jobId } = await enqueue();
    startWorker(async () => success);
    await finished(jobId, 'completed');
    await expect(producer.waitForResult(jobId, { timeoutMs: 5_000 })).resolves.toEqual(success);
  });

  it('returns the return value of a job that completes while it waits', async () => {
    const { jobId, chatId } = await enqueue();
    const waiting = producer.waitForResult(jobId, { timeoutMs: 10_000 });
    await expect.poll(() => listeners(chatId), POLL).toBe(1);
    startWorker(async () => success);
    await expect(waiting).resolves.toEqual(success);
  });

  it('returns the failure result a failed job keeps in its progress', async () => {
    const { jobId } = await enqueue();
    startWorker(async (job) => {
      const progress: JobProgress = {
        stage: 'failed',
        message: failure.error,
        at: new Date().toISOString(),
        result: failure,
      };
      await job.updateProgress(progress as unknown as object);
      throw new UnrecoverableError(failure.error);
    });
    await finished(jobId, 'failed');
    await expect(producer.waitForResult(jobId, { timeoutMs: 5_000 })).resolves.toEqual(failure);
  });

  it('reports a job that failed without a result as an internal failure with its reason', async () => {
    const { jobId } = await enqueue();
    startWorker(async () => {
      throw new Error('connection to Postgres lost');
    });
    await finished(jobId, 'failed');
    await expect(producer.waitForResult(jobId, { timeoutMs: 5_000 })).resolves.toEqual({
      kind: 'start-workspace',
      ok: false,
      error: 'connection to Postgres lost',
      code: 'internal',
      is_error: true,
    });
  });

  it("returns the data of the job's result event, published before or while it waits", async () => {
    const publisher = new EventPublisher(redis, prefix);
    for (const when of ['before', 'while'] as const) {
      const { jobId, chatId, workspaceId } = await enqueue();
      const publish = () =>
        publisher.publish({
          type: 'result',
          stage: 'failed',
          job: { id: jobId, name: 'start-workspace', attempt: 1 },
          chatId,
          workspaceId,
          message: failure.error,
          data: { ...failure },
        });
      if (when === 'before') await publish();
      const waiting = producer.waitForResult(jobId, { timeoutMs: 5_000 });
      if (when === 'while') {
        await expect.poll(() => listeners(chatId), POLL).toBe(1);
        await publish();
      }
      await expect(waiting, when).resolves.toEqual(failure);
      // The job itself is still waiting: the answer came from the stream.
      expect(await queue.getJobState(jobId)).toBe('waiting');
    }
  });

  it("ignores other jobs' result events on the same chat", async () => {
    const publisher = new EventPublisher(redis, prefix);
    const { jobId, chatId } = await enqueue();
    await publisher.publish({
      type: 'result',
      stage: 'completed',
      job: { id: randomUUID(), name: 'create-workspace', attempt: 1 },
      chatId,
      message: 'Workspace created',
      data: { kind: 'create-workspace', ok: true, created: true, workspace_name: 'alice/dev' },
    });
    await expect(producer.waitForResult(jobId, { timeoutMs: 300 })).rejects.toBeInstanceOf(WaitTimeoutError);
  });

  it('times out with WaitTimeoutError and leaves no subscription behind', async () => {
    const { jobId, chatId } = await enqueue();
    const started = Date.now();
    const error = await producer.waitForResult(jobId, { timeoutMs: 300 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(WaitTimeoutError);
    expect(error).toMatchObject({ timeoutMs: 300 });
    expect((error as Error).message).toContain(jobId);
    expect(Date.now() - started).toBeGreaterThanOrEqual(290);
    expect(Date.now() - started).toBeLessThan(3_000);
    await vi.waitFor(async () => expect(await listeners(chatId)).toBe(0));
  });

  it('leaves no subscription behind once it has the result', async () => {
    const { jobId, chatId } = await enqueue();
    startWorker(async () => success);
    await producer.waitForResult(jobId, { timeoutMs: 10_000 });
    await vi.waitFor(async () => expect(await listeners(chatId)).toBe(0));
  });

  it('still follows a job added without a valid chat (the producer bypassed), by its state', async () => {
    const job = await queue.add('start-workspace', { chatId: 'not-a-chat' }, { jobId: randomUUID() });
    const waiting = producer.waitForResult(job.id!, { timeoutMs: 10_000 });
    startWorker(async () => success);
    await expect(waiting).resolves.toEqual(success);
  });

  it('rejects a timeout that is not a positive number', async () => {
    const { jobId } = await enqueue();
    for (const timeoutMs of [0, -1, Number.NaN]) {
      await expect(producer.waitForResult(jobId, { timeoutMs })).rejects.toBeInstanceOf(RangeError);
    }
  });

  it('rejects a job that does not exist', async () => {
    const jobId = randomUUID();
    await expect(producer.waitForResult(jobId, { timeoutMs: 1_000 })).rejects.toThrow(
      new JobNotFoundError(jobId),
    );
    await expect(producer.waitForResult(jobId, { timeoutMs: 1_000 })).rejects.toThrow(
      `job ${jobId} not found`,
    );
  });

  it('when the job is removed while it waits › rejects with JobNotFoundError, not at its timeout', async () => {
    const { jobId } = await enqueue();
    const waiting = producer.waitForResult(jobId, { timeoutMs: 60_000 }).catch((e: unknown) => e);
    await (await queue.getJob(jobId))!.remove();
    // The wait's own timeout (60 s) is beyond the test's: only the early rejection lets this pass.
    expect(await waiting).toBeInstanceOf(JobNotFoundError);
  });

  it('rejects pending waits when the producer closes', async () => {
    const { jobId, chatId } = await enqueue();
    const waiting = expect(producer.waitForResult(jobId, { timeoutMs: 10_000 })).rejects.toBeInstanceOf(
      ProducerClosedError,
    );
    await expect.poll(() => listeners(chatId), POLL).toBe(1);
    await producer.close();
    await waiting;
    await expect(producer.waitForResult(jobId, { timeoutMs: 1_000 })).rejects.toBeInstanceOf(
      ProducerClosedError,
    );
  });

  it('many waits on one chat share the subscriber and each gets its own result', async () => {
    const chatId = randomUUID();
    const ownerId = randomUUID();
    const jobs = await Promise.all(
      Array.from({ length: 20 }, () =>
        producer.startWorkspace({ chatId, ownerId, workspaceId: randomUUID() }),
      ),
    );
    startWorker(async (job) => ({
      kind: 'start-workspace',
      ok: true,
      started: true,
      workspace_name: job.id,
    }));
    const results = await Promise.all(
      jobs.map((j) => producer.waitForResult(j.jobId, { timeoutMs: 10_000 })),
    );
    expect(results).toEqual(
      jobs.map((j) => ({ kind: 'start-workspace', ok: true, started: true, workspace_name: j.jobId })),
    );
  });
});
