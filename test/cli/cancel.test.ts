// `workspace-jobs cancel` as a real process on real Redis, no worker running (but one that finishes two
// jobs): a waiting job is canceled (one line saying so, exit 0) and its one canceled result is on the chat's
// stream; a second cancel, or one of a job a worker finished, is already finished; --chat cancels every live
// job (--json: the producer's answers); an unknown job is exit 1; bad flags exit 2 with one line naming the
// problem, before anything is canceled.
import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { seed } from '../../src/cli/seed.js';
import { WorkspaceJobsProducer, type CancelAnswer } from '../../src/producer/producer.js';
import { loadConfig } from '../../src/shared/config.js';
import { QUEUE_NAME } from '../../src/shared/contract.js';
import { readChatEvents } from '../../src/shared/events.js';
import { closeRedis, type Redis } from '../../src/shared/redis.js';
import { killAll, runCli } from '../helpers/cli-process.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { finishedJobs } from '../helpers/finished-jobs.js';
import { TEST_REDIS_URL, deleteKeys, testRedis, uniquePrefix } from '../helpers/redis.js';

const RUN_MS = 30_000;

describe('workspace-jobs cancel', () => {
  let db: TestDatabase;
  let redis: Redis;
  let prefix: string;
  let producer: WorkspaceJobsProducer;
  let queue: Queue;
  const env = (): Record<string, string> => ({
    REDIS_URL: TEST_REDIS_URL,
    DATABASE_URL: db.url,
    QUEUE_PREFIX: prefix,
    LOG_LEVEL: 'warn',
  });

  beforeAll(async () => {
    db = await createTestDatabase();
    redis = testRedis();
    prefix = uniquePrefix('cancel-cli');
    producer = new WorkspaceJobsProducer({ connection: redis, pool: db.pool, prefix });
    queue = new Queue(QUEUE_NAME, { connection: redis, prefix });
  });
  afterEach(killAll);
  afterAll(async () => {
    await producer?.close();
    await queue?.close();
    if (redis) {
      await deleteKeys(redis, prefix);
      await closeRedis(redis);
    }
    await db?.drop();
  });

  /** A start of a fresh workspace, left waiting: no worker runs. */
  async function waitingJob(chatId = randomUUID()): Promise<{ chatId: string; jobId: string }> {
    const { jobId } = await producer.startWorkspace({
      chatId,
      ownerId: randomUUID(),
      workspaceId: randomUUID(),
    });
    return { chatId, jobId };
  }

  const resultsOf = async (chatId: string) =>
    (await readChatEvents(redis, prefix, chatId, '0')).filter((event) => event.type === 'result');

  it('when the job is waiting › cancels it, says so in one line, and its one canceled result is in the chat stream', async () => {
    const { chatId, jobId } = await waitingJob();

    const run = await runCli(['cancel', '--job', jobId.toUpperCase(), '--reason', 'by ops'], env(), RUN_MS);

    expect(run.exit, JSON.stringify(run)).toEqual({ code: 0, signal: null });
    expect(run.stdout).toEqual([`job ${jobId}: canceled (was waiting)`]);
    expect(await queue.getJob(jobId)).toBeUndefined();
    const results = await resultsOf(chatId);
    expect(results).toHaveLength(1);
    expect(results[0]).toMatchObject({
      job: { id: jobId },
      data: { ok: false, code: 'canceled', error: 'canceled: by ops' },
    });

    const again = await runCli(['cancel', '--job', jobId], env(), RUN_MS);
    expect(again.exit).toEqual({ code: 0, signal: null });
    expect(again.stdout).toEqual([`job ${jobId}: already finished (canceled)`]);
    expect(await resultsOf(chatId)).toHaveLength(1);
  });

  it("when given --chat › cancels every live job of the chat, oldest first; --json prints the producer's answers", async () => {
    const chatId = randomUUID();
    const first = await waitingJob(chatId);
    const second = await waitingJob(chatId);

    const run = await runCli(['cancel', '--chat', chatId, '--json'], env(), RUN_MS);

    expect(run.exit, JSON.stringify(run)).toEqual({ code: 0, signal: null });
    const answers = run.stdout.map((line) => JSON.parse(line) as CancelAnswer);
    expect(answers).toEqual(
      [first, second].map(({ jobId }) => ({
        jobId,
        outcome: 'canceled',
        was: 'waiting',
        result: expect.objectContaining({ code: 'canceled', error: 'canceled: cancel requested' }),
      })),
    );
    expect(await resultsOf(chatId)).toHaveLength(2);

    const none = await runCli(['cancel', '--chat', chatId], env(), RUN_MS);
    expect(none.exit).toEqual({ code: 0, signal: null });
    expect(none.stdout).toEqual([`chat ${chatId}: no job waiting, delayed or running`]);
  });

  it('when a worker finished the job, ok or failed › says already finished with its outcome, and exits 0', async () => {
    const seeded = await seed(db.pool);
    const { succeeded, failed } = await finishedJobs(producer, queue, loadConfig(env()), seeded);

    const runs = await Promise.all(
      [succeeded, failed].map(({ jobId }) => runCli(['cancel', '--job', jobId], env(), RUN_MS)),
    );

    expect(runs.map((run) => [run.exit.code, run.stdout])).toEqual([
      [0, [`job ${succeeded.jobId}: already finished (succeeded)`]],
      [0, [`job ${failed.jobId}: already finished (invalid_payload)`]],
    ]);
    expect(await resultsOf(succeeded.chatId)).toHaveLength(1);
    expect(await resultsOf(failed.chatId)).toHaveLength(1);
  });

  it('when there is no such job › says not found and exits 1', async () => {
    const jobId = randomUUID();
    const run = await runCli(['cancel', '--job', jobId], env(), RUN_MS);
    expect(run.exit).toEqual({ code: 1, signal: null });
    expect(run.stdout).toEqual([`job ${jobId}: not found`]);
    const json = await runCli(['cancel', '--job', jobId, '--json'], env(), RUN_MS);
    expect(json.exit).toEqual({ code: 1, signal: null });
    expect(json.stdout.map((line) => JSON.parse(line) as unknown)).toEqual([{ jobId, outcome: 'not_found' }]);
  });

  it('when the flags are wrong › exits 2 with one line naming the problem, and cancels nothing', async () => {
    const { jobId } = await waitingJob();
    const chatId = randomUUID();
    const cases: [string[], string][] = [
      [[], 'give --job ID or --chat ID: what to cancel'],
      [
        ['--job', jobId, '--chat', chatId],
        '--job and --chat cannot be given together: cancel one job or a whole chat',
      ],
      [['--job', 'job-1'], '--job must be a UUID (version 1-8), got "job-1"'],
      [['--chat', chatId, '--reason', ''], 'invalid reason: a reason must not be empty'],
      [
        ['--job', jobId, '--reason', 'x'.repeat(201)],
        'invalid reason: a reason must be at most 200 characters',
      ],
      [['--job', jobId, '--force'], "Unknown option '--force'"],
    ];
    const runs = await Promise.all(cases.map(([args]) => runCli(['cancel', ...args], env(), RUN_MS)));
    for (const [i, [args, message]] of cases.entries()) {
      const run = runs[i]!;
      expect(run.exit, args.join(' ')).toEqual({ code: 2, signal: null });
      expect(
        run.stderr.filter((line) => line.trim()),
        args.join(' '),
      ).toEqual([expect.stringContaining(`workspace-jobs: ${message}`)]);
      expect(run.stdout, args.join(' ')).toEqual([]);
    }
    expect(await queue.getJobState(jobId)).toBe('waiting');
  });

  it('when asked for help › prints the usage and exits 0', async () => {
    const run = await runCli(['cancel', '--help'], env(), RUN_MS);
    expect(run.exit).toEqual({ code: 0, signal: null });
    expect(run.stdout[0]).toBe('Usage: workspace-jobs cancel --job ID [--reason TEXT] [--json]');
  });
});
