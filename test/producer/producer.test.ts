// The producer on real Redis and Postgres: validation, workspace lookup, deduplication and the events it
// publishes when it enqueues.
import { randomUUID } from 'node:crypto';
import { Queue, Worker } from 'bullmq';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  WorkspaceJobsProducer,
  type EnqueuedCreate,
  type EnqueuedStart,
} from '../../src/producer/producer.js';
import {
  JOB_BACKOFF,
  KEEP_LOGS,
  REMOVE_ON_COMPLETE,
  REMOVE_ON_FAIL,
} from '../../src/producer/job-options.js';
import { EventPublisher, readChatEvents } from '../../src/shared/events.js';
import { QUEUE_NAME, type JobResult } from '../../src/shared/contract.js';
import { dedupeIds } from '../../src/jobs/registry.js';
import { withTransaction, type Pool } from '../../src/shared/postgres.js';
import { closeRedis, createRedis, type Redis } from '../../src/shared/redis.js';
import { ValidationError } from '../../src/shared/schemas.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { TEST_REDIS_URL, deleteKeys, testRedis, uniquePrefix } from '../helpers/redis.js';

interface Seeded {
  ownerId: string;
  templateId: string;
  /** A chat bound to each workspace, in order. */
  chats: { chatId: string; workspaceId: string }[];
  /** A chat with no workspace yet. */
  bareChatId: string;
}

/** Minimal rows: one user, one template with one version, `workspaces` workspaces each with a chat. */
async function seed(pool: Pool, workspaces = 1): Promise<Seeded> {
  return withTransaction(pool, async (c) => {
    const ownerId = randomUUID();
    const templateId = randomUUID();
    const versionId = randomUUID();
    await c.query(`INSERT INTO users (id, username, email) VALUES ($1, 'alice', 'alice@example.com')`, [
      ownerId,
    ]);
    // templates.active_version_id is a deferred foreign key: both rows exist by COMMIT.
    await c.query(`INSERT INTO templates (id, name, active_version_id) VALUES ($1, 'docker', $2)`, [
      templateId,
      versionId,
    ]);
    await c.query(`INSERT INTO template_versions (id, template_id, name) VALUES ($1, $2, 'v1')`, [
      versionId,
      templateId,
    ]);
    const chats: Seeded['chats'] = [];
    for (let i = 0; i < workspaces; i++) {
      const workspaceId = randomUUID();
      const chatId = randomUUID();
      await c.query(`INSERT INTO workspaces (id, owner_id, template_id, name) VALUES ($1, $2, $3, $4)`, [
        workspaceId,
        ownerId,
        templateId,
        `dev-${i}`,
      ]);
      await c.query(`INSERT INTO chats (id, owner_id, workspace_id) VALUES ($1, $2, $3)`, [
        chatId,
        ownerId,
        workspaceId,
      ]);
      chats.push({ chatId, workspaceId });
    }
    const bareChatId = randomUUID();
    await c.query(`INSERT INTO chats (id, owner_id) VALUES ($1, $2)`, [bareChatId, ownerId]);
    return { ownerId, templateId, chats, bareChatId };
  });
}

/** The producer as a JavaScript caller sees it: input of any shape reaches its run-time validation. */
function untyped(producer: WorkspaceJobsProducer) {
  return producer as unknown as {
    startWorkspace(input: unknown): Promise<EnqueuedStart>;
    createWorkspace(input: unknown): Promise<EnqueuedCreate>;
  };
}

describe('WorkspaceJobsProducer', () => {
  let prefix: string;
  let redis: Redis;
  let db: TestDatabase;
  let producer: WorkspaceJobsProducer;
  let queue: Queue;
  const cleanups: (() => Promise<unknown>)[] = [];

  beforeEach(async () => {
    prefix = uniquePrefix('producer');
    redis = testRedis();
    db = await createTestDatabase();
    producer = new WorkspaceJobsProducer({ connection: redis, pool: db.pool, prefix });
    queue = new Queue(QUEUE_NAME, { connection: redis, prefix });
  });

  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
    vi.restoreAllMocks();
    await producer.close();
    await queue.close();
    await deleteKeys(redis, prefix);
    await closeRedis(redis);
    await db.drop();
  });

  async function queuedJobs(): Promise<number> {
    const counts = await queue.getJobCounts();
    return Object.values(counts).reduce((a, b) => a + b, 0);
  }

  /** A tiny BullMQ worker that runs `process` for every job. */
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

  describe('payload validation', () => {
    const chatId = randomUUID();
    const ownerId = randomUUID();
    const workspaceId = randomUUID();
    const templateId = randomUUID();

    it.each([
      ['a chatId that is not a UUID', { chatId: 'chat-1', ownerId, workspaceId }, 'chatId'],
      ['a missing ownerId', { chatId, workspaceId }, 'ownerId'],
      ['a workspaceId that is not a UUID', { chatId, ownerId, workspaceId: 42 }, 'workspaceId'],
      ['an unknown key', { chatId, ownerId, workspaceId, force: true }, 'force'],
      [
        'a parameter value that is not a string',
        { chatId, ownerId, workspaceId, parameters: { region: 5 } },
        'parameters.region',
      ],
      [
        'a parameter value longer than 4096 characters',
        { chatId, ownerId, workspaceId, parameters: { region: 'x'.repeat(4097) } },
        'parameters.region',
      ],
      ['an empty requestId', { chatId, ownerId, workspaceId, requestId: '' }, 'requestId'],
    ])('startWorkspace rejects %s, naming the field, and enqueues nothing', async (_what, input, field) => {
      const error = await untyped(producer)
        .startWorkspace(input)
        .catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ValidationError);
      expect((error as Error).message).toMatch(/^invalid start-workspace payload: /);
      expect((error as Error).message).toContain(field);
      expect(await queuedJobs()).toBe(0);
      expect(await readChatEvents(redis, prefix, chatId, '0')).toEqual([]);
    });

    it.each([
      ['a templateId that is not a UUID', { chatId, ownerId, templateId: 'docker' }, 'templateId'],
      ['a name longer than 32 characters', { chatId, ownerId, templateId, name: 'a'.repeat(33) }, 'name'],
      ['a name with a space', { chatId, ownerId, templateId, name: 'my dev' }, 'name'],
      ['an unknown key', { chatId, ownerId, templateId, workspaceId }, 'workspaceId'],
      [
        'a parameter value that is not a string',
        { chatId, ownerId, templateId, parameters: { cpu: 2 } },
        'parameters.cpu',
      ],
    ])('createWorkspace rejects %s, naming the field, and enqueues nothing', async (_what, input, field) => {
      const error = await untyped(producer)
        .createWorkspace(input)
        .catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ValidationError);
      expect((error as Error).message).toMatch(/^invalid create-workspace payload: /);
      expect((error as Error).message).toContain(field);
      expect(await queuedJobs()).toBe(0);
    });

    it('rejects input that is not an object at all', async () => {
      for (const input of [null, undefined, 'start', 42, []]) {
        await expect(untyped(producer).startWorkspace(input)).rejects.toBeInstanceOf(ValidationError);
        await expect(untyped(producer).createWorkspace(input)).rejects.toBeInstanceOf(ValidationError);
      }
      expect(await queuedJobs()).toBe(0);
    });

    // JSON.parse, as a request body is parsed: `__proto__` becomes an own key, as it does for a caller's JSON.
    it.each([
      ['__proto__', JSON.parse('{"__proto__": "x"}') as object, 'parameters.__proto__: is reserved'],
      ['constructor', { constructor: 'x' }, 'parameters.constructor: is reserved'],
      ['toString', { toString: 'x' }, 'parameters.toString: is reserved'],
      ['an empty name', { '': 'x' }, 'parameters."": a parameter name must not be empty'],
      [
        'a name with a newline',
        { 'a\nb': 'x' },
        'parameters."a\\nb": a parameter name must not contain control',
      ],
      [
        'a name ending in a space',
        { 'region ': 'x' },
        'parameters."region ": a parameter name must not start or end',
      ],
      [
        'a name of 129 characters',
        { ['p'.repeat(129)]: 'x' },
        'a parameter name must be at most 128 characters',
      ],
    ])(
      'rejects a parameter named by %s, naming it, and enqueues nothing',
      async (_what, parameters, message) => {
        const start = await untyped(producer)
          .startWorkspace({ chatId, ownerId, workspaceId, parameters })
          .catch((e: unknown) => e);
        const create = await untyped(producer)
          .createWorkspace({ chatId, ownerId, templateId, parameters })
          .catch((e: unknown) => e);
        for (const error of [start, create]) {
          expect(error).toBeInstanceOf(ValidationError);
          expect((error as Error).message).toContain(message);
        }
        expect(await queuedJobs()).toBe(0);
        expect(await readChatEvents(redis, prefix, chatId, '0')).toEqual([]);
      },
    );

    it('rejects a version-0 UUID for every id, naming the field', async () => {
      const v0 = '12345678-1234-0234-8234-123456789abc';
      for (const [input, field] of [
        [{ chatId: v0, ownerId, workspaceId }, 'chatId'],
        [{ chatId, ownerId: v0, workspaceId }, 'ownerId'],
        [{ chatId, ownerId, workspaceId: v0 }, 'workspaceId'],
      ] as const) {
        await expect(producer.startWorkspace(input)).rejects.toThrow(`${field}: Invalid UUID`);
      }
      await expect(producer.createWorkspace({ chatId, ownerId, templateId: v0 })).rejects.toThrow(
        'templateId: Invalid UUID',
      );
      expect(await queuedJobs()).toBe(0);
    });

    it('accepts parameter names with spaces and punctuation, as Coder does ("AI Prompt")', async () => {
      const parameters = { 'AI Prompt': 'fix the build', instance_type: 't3.large', 'cpu-count': '4' };
      const { jobId } = await producer.startWorkspace({ chatId, ownerId, workspaceId, parameters });
      expect((await queue.getJob(jobId))?.data.parameters).toEqual(parameters);
    });
  });

  describe('workspace lookup', () => {
    it('resolves the workspace from the chat when the caller omits it', async () => {
      const { ownerId, chats } = await seed(db.pool);
      const { chatId, workspaceId } = chats[0]!;
      const result = await producer.startWorkspace({ chatId, ownerId });
      expect(result).toMatchObject({ workspaceId, deduplicated: false });
      const job = await queue.getJob(result.jobId);
      expect(job?.name).toBe('start-workspace');
      expect(job?.data).toEqual({ chatId, ownerId, workspaceId });
    });

    it('rejects an unknown chat and enqueues nothing', async () => {
      const chatId = randomUUID();
      await expect(producer.startWorkspace({ chatId, ownerId: randomUUID() })).rejects.toThrow(
        new ValidationError(`chat ${chatId} not found`),
      );
      expect(await queuedJobs()).toBe(0);
    });

    it('rejects a chat without a workspace, pointing at create_workspace', async () => {
      const { ownerId, bareChatId } = await seed(db.pool);
      await expect(producer.startWorkspace({ chatId: bareChatId, ownerId })).rejects.toThrow(
        new ValidationError(`chat ${bareChatId} has no workspace; use create_workspace first`),
      );
      expect(await queuedJobs()).toBe(0);
    });

    it('uses a given workspaceId as is, without looking at the chat (the worker checks it)', async () => {
      const chatId = randomUUID();
      const workspaceId = randomUUID();
      const result = await producer.startWorkspace({ chatId, ownerId: randomUUID(), workspaceId });
      expect(result).toMatchObject({ workspaceId, deduplicated: false });
    });
  });

  describe('job options', () => {
    it('enqueues with attempts, exponential backoff with jitter, retention and a dedup id', async () => {
      const attempts = new WorkspaceJobsProducer({ connection: redis, pool: db.pool, prefix, attempts: 3 });
      cleanups.push(() => attempts.close());
      const workspaceId = randomUUID();
      const { jobId } = await attempts.startWorkspace({
        chatId: randomUUID(),
        ownerId: randomUUID(),
        workspaceId,
        parameters: { region: 'eu' },
        requestId: 'req-1',
      });
      const job = await queue.getJob(jobId);
      expect(job?.opts).toMatchObject({
        attempts: 3,
        backoff: JOB_BACKOFF,
        removeOnComplete: REMOVE_ON_COMPLETE,
        removeOnFail: REMOVE_ON_FAIL,
        keepLogs: KEEP_LOGS,
        deduplication: { id: dedupeIds.start(workspaceId) },
      });
      expect(job?.data).toMatchObject({ parameters: { region: 'eu' }, requestId: 'req-1' });
      expect(await queue.getDeduplicationJobId(dedupeIds.start(workspaceId))).toBe(jobId);
    });

    it('retries a failed attempt after 1-2 s: 2 s exponential backoff with 50% jitter', async () => {
      const { jobId } = await producer.startWorkspace({
        chatId: randomUUID(),
        ownerId: randomUUID(),
        workspaceId: randomUUID(),
      });
      const attempts: number[] = [];
      let failedAt = 0;
      const worker = startWorker(async () => {
        attempts.push(Date.now());
        if (attempts.length === 1) throw new Error('transient');
        return { kind: 'start-workspace', ok: true, started: true, workspace_name: 'dev' };
      });
      worker.on('failed', () => (failedAt = Date.now()));
      await vi.waitFor(async () => expect(await queue.getJobState(jobId)).toBe('completed'), {
        timeout: 10_000,
        interval: 50,
      });
      const backoffMs = attempts[1]! - failedAt;
      // Attempt 1 failed: BullMQ waits a random [0.5, 1) x 2000 ms (plus up to a few ms of scheduling).
      expect(backoffMs).toBeGreaterThanOrEqual(950);
      expect(backoffMs).toBeLessThan(2_500);
    });

    it('defaults to 5 attempts', async () => {
      const { jobId } = await producer.createWorkspace({
        chatId: randomUUID(),
        ownerId: randomUUID(),
        templateId: randomUUID(),
      });
      expect((await queue.getJob(jobId))?.opts.attempts).toBe(5);
    });
  });

  describe('deduplication', () => {
    it('1,000 concurrent starts of 10 workspaces enqueue exactly 10 jobs', async () => {
      const { ownerId, chats } = await seed(db.pool, 10);
      const calls = Array.from({ length: 1000 }, (_, i) => chats[i % 10]!);
      const started = performance.now();
      const results = await Promise.all(
        calls.map(({ chatId }) => producer.startWorkspace({ chatId, ownerId })),
      );
      const elapsedMs = performance.now() - started;
      console.info(`1,000 concurrent startWorkspace calls took ${elapsedMs.toFixed(0)} ms`);

      expect(await queue.getJobCounts()).toMatchObject({ waiting: 10 });
      expect(await queuedJobs()).toBe(10);
      expect(results.filter((r) => !r.deduplicated)).toHaveLength(10);
      expect(results.filter((r) => r.deduplicated)).toHaveLength(990);
      for (const { workspaceId } of chats) {
        const forWorkspace = results.filter((r) => r.workspaceId === workspaceId);
        expect(forWorkspace).toHaveLength(100);
        const ids = new Set(forWorkspace.map((r) => r.jobId));
        expect(ids.size).toBe(1);
        expect(await queue.getDeduplicationJobId(dedupeIds.start(workspaceId))).toBe([...ids][0]);
      }
    });

    it('a start of another workspace is not deduplicated against the first', async () => {
      const ownerId = randomUUID();
      const chatId = randomUUID();
      const a = await producer.startWorkspace({ chatId, ownerId, workspaceId: randomUUID() });
      const b = await producer.startWorkspace({ chatId, ownerId, workspaceId: randomUUID() });
      expect(a.deduplicated || b.deduplicated).toBe(false);
      expect(a.jobId).not.toBe(b.jobId);
    });

    it('a create for the same chat is deduplicated while the first is queued', async () => {
      const input = { chatId: randomUUID(), ownerId: randomUUID(), templateId: randomUUID() };
      const first = await producer.createWorkspace(input);
      const second = await producer.createWorkspace({ ...input, name: 'other' });
      expect(first.deduplicated).toBe(false);
      expect(second).toEqual({ jobId: first.jobId, deduplicated: true, differs: ['name'] });
      expect(await queuedJobs()).toBe(1);
    });

    it('a deduplicated start with the same payload says that nothing differs, in its answer and its event', async () => {
      const input = { chatId: randomUUID(), ownerId: randomUUID(), workspaceId: randomUUID() };
      const first = await producer.startWorkspace({ ...input, parameters: { region: 'eu', size: 'l' } });
      // The same parameters in another order, from another request: the same start.
      const second = await producer.startWorkspace({
        ...input,
        parameters: { size: 'l', region: 'eu' },
        requestId: 'r-2',
      });
      expect(second).toEqual({ ...first, deduplicated: true, differs: [] });
      const events = await readChatEvents(redis, prefix, input.chatId, '0');
      expect(events[1]).toMatchObject({
        stage: 'deduplicated',
        job: { id: first.jobId },
        message: `A start of this workspace is already queued as job ${first.jobId}`,
        data: { request_id: 'r-2', differs: [] },
      });

      // No parameters and no overrides ({}) are the same start too.
      const other = { ...input, workspaceId: randomUUID() };
      const bare = await producer.startWorkspace(other);
      expect(await producer.startWorkspace({ ...other, parameters: {} })).toEqual({
        ...bare,
        deduplicated: true,
        differs: [],
      });
    });

    it('a deduplicated start with another chat, owner or parameters names them; the job keeps its own', async () => {
      const workspaceId = randomUUID();
      const mine = { chatId: randomUUID(), ownerId: randomUUID(), workspaceId, parameters: { region: 'eu' } };
      const first = await producer.startWorkspace(mine);
      const theirs = {
        chatId: randomUUID(),
        ownerId: randomUUID(),
        workspaceId,
        parameters: { region: 'us' },
      };

      const second = await producer.startWorkspace(theirs);

      expect(second).toEqual({
        jobId: first.jobId,
        deduplicated: true,
        differs: ['chatId', 'ownerId', 'parameters'],
        workspaceId,
      });
      expect((await queue.getJob(first.jobId))?.data).toEqual(mine);
      // Said on the chat of the call that was merged, which hears nothing else of that job.
      expect(await readChatEvents(redis, prefix, theirs.chatId, '0')).toEqual([
        expect.objectContaining({
          stage: 'deduplicated',
          job: expect.objectContaining({ id: first.jobId }),
          message:
            `A start of this workspace is already queued as job ${first.jobId}; ` +
            "it keeps its own chatId, ownerId and parameters, which differ from this request's",
          data: { differs: ['chatId', 'ownerId', 'parameters'] },
        }),
      ]);
      // One parameter more is other parameters too.
      const more = await producer.startWorkspace({ ...mine, parameters: { region: 'eu', size: 'l' } });
      expect(more).toMatchObject({ deduplicated: true, differs: ['parameters'] });
    });

    it('a deduplicated create names a differing owner, template, name and parameters', async () => {
      const create = {
        chatId: randomUUID(),
        ownerId: randomUUID(),
        templateId: randomUUID(),
        name: 'dev',
        parameters: { cpu: '2' },
      };
      const first = await producer.createWorkspace(create);
      expect(await producer.createWorkspace({ ...create, requestId: 'again' })).toEqual({
        jobId: first.jobId,
        deduplicated: true,
        differs: [],
      });
      const other = { chatId: create.chatId, ownerId: randomUUID(), templateId: randomUUID() };
      expect(await producer.createWorkspace(other)).toEqual({
        jobId: first.jobId,
        deduplicated: true,
        differs: ['ownerId', 'templateId', 'name', 'parameters'],
      });
      const events = await readChatEvents(redis, prefix, create.chatId, '0');
      expect(events.map((e) => e.data)).toEqual([
        undefined,
        { request_id: 'again', differs: [] },
        { differs: ['ownerId', 'templateId', 'name', 'parameters'] },
      ]);
      expect(events[2]?.message).toBe(
        `A creation of a workspace for this chat is already queued as job ${first.jobId}; ` +
          "it keeps its own ownerId, templateId, name and parameters, which differ from this request's",
      );
    });

    it('a start after the previous job completed creates a new job', async () => {
      const { ownerId, chats } = await seed(db.pool);
      const { chatId } = chats[0]!;
      const first = await producer.startWorkspace({ chatId, ownerId });
      const result: JobResult = { kind: 'start-workspace', ok: true, started: true, workspace_name: 'dev-0' };
      startWorker(async () => result);
      await expect(producer.waitForResult(first.jobId, { timeoutMs: 10_000 })).resolves.toEqual(result);
      // The dedup key goes when the job finishes.
      await vi.waitFor(async () => {
        expect(await queue.getJobState(first.jobId)).toBe('completed');
      });

      const second = await producer.startWorkspace({ chatId, ownerId });
      expect(second.deduplicated).toBe(false);
      expect(second.jobId).not.toBe(first.jobId);
    });

    it('a start after the previous job failed creates a new job', async () => {
      const once = new WorkspaceJobsProducer({ connection: redis, pool: db.pool, prefix, attempts: 1 });
      cleanups.push(() => once.close());
      const input = { chatId: randomUUID(), ownerId: randomUUID(), workspaceId: randomUUID() };
      const first = await once.startWorkspace(input);
      startWorker(async () => {
        throw new Error('provisioner exploded');
      });
      await vi.waitFor(async () => expect(await queue.getJobState(first.jobId)).toBe('failed'), {
        timeout: 10_000,
      });
      const second = await once.startWorkspace(input);
      expect(second.deduplicated).toBe(false);
    });
  });

  describe('events', () => {
    it('announces queued and deduplicated starts on the chat replay stream with the job id', async () => {
      const { ownerId, chats } = await seed(db.pool);
      const { chatId, workspaceId } = chats[0]!;
      const first = await producer.startWorkspace({ chatId, ownerId });
      const second = await producer.startWorkspace({ chatId, ownerId });
      const events = await readChatEvents(redis, prefix, chatId, '0');
      expect(events).toHaveLength(2);
      expect(events[0]).toMatchObject({
        v: 1,
        type: 'progress',
        stage: 'queued',
        job: { id: first.jobId, name: 'start-workspace', attempt: 0 },
        chatId,
        workspaceId,
        message: `Start of workspace ${workspaceId} queued`,
      });
      expect(events[1]).toMatchObject({
        type: 'progress',
        stage: 'deduplicated',
        job: { id: first.jobId, name: 'start-workspace', attempt: 0 },
        chatId,
        workspaceId,
        message: `A start of this workspace is already queued as job ${first.jobId}`,
      });
      expect(second.jobId).toBe(first.jobId);
    });

    it('announces queued and deduplicated creates on the chat replay stream', async () => {
      const input = { chatId: randomUUID(), ownerId: randomUUID(), templateId: randomUUID(), name: 'dev' };
      const first = await producer.createWorkspace(input);
      await producer.createWorkspace(input);
      const events = await readChatEvents(redis, prefix, input.chatId, '0');
      expect(events.map((e) => [e.stage, e.job.id, e.job.name])).toEqual([
        ['queued', first.jobId, 'create-workspace'],
        ['deduplicated', first.jobId, 'create-workspace'],
      ]);
      expect(events[0]?.workspaceId).toBeUndefined();
    });

    it('delivers the queued event live to a subscriber of the chat', async () => {
      const chatId = randomUUID();
      const received: string[] = [];
      const unsubscribe = await producer.subscribe(chatId, (e) => received.push(`${e.stage}:${e.job.id}`));
      const { jobId } = await producer.startWorkspace({
        chatId,
        ownerId: randomUUID(),
        workspaceId: randomUUID(),
      });
      await vi.waitFor(() => expect(received).toEqual([`queued:${jobId}`]));
      await unsubscribe();
    });

    it('keeps the job when its event cannot be published', async () => {
      vi.spyOn(EventPublisher.prototype, 'publish').mockRejectedValue(new Error('Redis said no'));
      const { jobId, deduplicated } = await producer.startWorkspace({
        chatId: randomUUID(),
        ownerId: randomUUID(),
        workspaceId: randomUUID(),
      });
      expect(deduplicated).toBe(false);
      expect(await queue.getJobState(jobId)).toBe('waiting');
    });
  });

  describe('subscribe', () => {
    it('rejects a chat id that is not a UUID', async () => {
      await expect(producer.subscribe('nope', () => {})).rejects.toBeInstanceOf(ValidationError);
    });
  });

  // Postgres takes a UUID in any case; Redis keys are strings. Every id is used in lower case.
  describe('ids in upper case', () => {
    const upper = <T extends Record<string, string>>(ids: T): T =>
      Object.fromEntries(Object.entries(ids).map(([k, v]) => [k, v.toUpperCase()])) as T;

    it('the same workspace or chat in upper and lower case is one job, enqueued with lower-case ids', async () => {
      const start = { chatId: randomUUID(), ownerId: randomUUID(), workspaceId: randomUUID() };
      const first = await producer.startWorkspace(upper(start));
      const second = await producer.startWorkspace(start);
      expect(first).toMatchObject({ deduplicated: false, workspaceId: start.workspaceId });
      expect(second).toEqual({ ...first, deduplicated: true, differs: [] });
      expect((await queue.getJob(first.jobId))?.data).toEqual(start);
      expect(await queue.getDeduplicationJobId(dedupeIds.start(start.workspaceId))).toBe(first.jobId);

      const create = { chatId: start.chatId, ownerId: start.ownerId, templateId: randomUUID() };
      const created = await producer.createWorkspace(create);
      expect(await producer.createWorkspace(upper(create))).toEqual({
        jobId: created.jobId,
        deduplicated: true,
        differs: [],
      });
      expect(await queuedJobs()).toBe(2);
    });

    it('resolves the workspace of a chat given in upper case', async () => {
      const { ownerId, chats } = await seed(db.pool);
      const { chatId, workspaceId } = chats[0]!;
      const { jobId, ...enqueued } = await producer.startWorkspace(upper({ chatId, ownerId }));
      expect(enqueued).toEqual({ deduplicated: false, workspaceId });
      expect((await queue.getJob(jobId))?.data).toEqual({ chatId, ownerId, workspaceId });
    });

    it("sends an upper-case chat's events to its lower-case stream, heard by subscribers in either case", async () => {
      const chatId = randomUUID();
      const heard = { lower: [] as string[], upper: [] as string[] };
      const offLower = await producer.subscribe(chatId, (e) => heard.lower.push(`${e.stage} ${e.chatId}`));
      const offUpper = await producer.subscribe(chatId.toUpperCase(), (e) =>
        heard.upper.push(`${e.stage} ${e.chatId}`),
      );

      const { jobId } = await producer.startWorkspace(
        upper({ chatId, ownerId: randomUUID(), workspaceId: randomUUID() }),
      );

      await vi.waitFor(() =>
        expect(heard).toEqual({ lower: [`queued ${chatId}`], upper: [`queued ${chatId}`] }),
      );
      // The stream's key as docs/design.md §6 names it, written out.
      expect(await redis.xlen(`${prefix}:events:chat:${chatId}:log`)).toBe(1);
      expect(await redis.exists(`${prefix}:events:chat:${chatId.toUpperCase()}:log`)).toBe(0);
      await offLower();
      await offUpper();

      const result: JobResult = { kind: 'start-workspace', ok: true, started: true, workspace_name: 'dev' };
      startWorker(async () => result);
      // The job id the producer returned, in upper case, is the same job.
      await expect(producer.waitForResult(jobId.toUpperCase(), { timeoutMs: 10_000 })).resolves.toEqual(
        result,
      );
    });
  });

  describe('lifecycle', () => {
    it('leaves a connection it was given open, and refuses calls once closed', async () => {
      await producer.subscribe(randomUUID(), () => {});
      await producer.close();
      await producer.close();
      expect(await redis.ping()).toBe('PONG');
      await expect(
        producer.startWorkspace({ chatId: randomUUID(), ownerId: randomUUID(), workspaceId: randomUUID() }),
      ).rejects.toThrow(/closed/);
    });

    it('fromConfig builds its own connections and closes them', async () => {
      const own = WorkspaceJobsProducer.fromConfig({
        redisUrl: TEST_REDIS_URL,
        lockRedisUrls: [TEST_REDIS_URL],
        databaseUrl: db.url,
        queuePrefix: prefix,
        workerConcurrency: 1,
        buildTimeoutMs: 1,
        agentConnectTimeoutMs: 1,
        startupScriptTimeoutMs: 1,
        jobAttempts: 2,
        jobLockMs: 5_000,
        stalledIntervalMs: 2_000,
        chatLockTtlMs: 6_000,
        logLevel: 'silent',
        dashboardPort: 0,
        dashboardHost: '127.0.0.1',
        dashboardReadOnly: false,
      });
      const { ownerId, chats } = await seed(db.pool);
      const { jobId } = await own.startWorkspace({ chatId: chats[0]!.chatId, ownerId });
      expect((await queue.getJob(jobId))?.opts.attempts).toBe(2);
      await own.subscribe(chats[0]!.chatId, () => {});
      await own.close();
      const internals = own as unknown as { connection: Redis; subscriberConnection: Redis; pool: Pool };
      await vi.waitFor(() => {
        expect(internals.connection.status).toBe('end');
        expect(internals.subscriberConnection.status).toBe('end');
      });
      expect(internals.pool.ended).toBe(true);
    });
  });
});
