// Cancel on real Redis, with no worker running: a waiting job is removed and answers canceled once; a
// finished job and an unknown one are no-op answers; cancelChat reaches every live job of the chat, also one
// of another chat it was deduplicated onto.
import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { WorkspaceJobsProducer } from '../../src/producer/producer.js';
import { QUEUE_NAME, type WorkspaceJobEvent } from '../../src/shared/contract.js';
import { redisKeys } from '../../src/shared/keys.js';
import { ChatOrder } from '../../src/shared/chat-order.js';
import { readChatEvents } from '../../src/shared/events.js';
import { ValidationError } from '../../src/shared/schemas.js';
import { closeRedis, type Redis } from '../../src/shared/redis.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { deleteKeys, testRedis, uniquePrefix } from '../helpers/redis.js';

describe('WorkspaceJobsProducer.cancel', () => {
  let prefix: string;
  let redis: Redis;
  let db: TestDatabase;
  let producer: WorkspaceJobsProducer;
  let queue: Queue;

  beforeEach(async () => {
    prefix = uniquePrefix('cancel');
    redis = testRedis();
    db = await createTestDatabase();
    producer = new WorkspaceJobsProducer({ connection: redis, pool: db.pool, prefix, resultRecheckMs: 100 });
    queue = new Queue(QUEUE_NAME, { connection: redis, prefix });
  });

  afterEach(async () => {
    await producer.close();
    await queue.close();
    await deleteKeys(redis, prefix);
    await closeRedis(redis);
    await db.drop();
  });

  const enqueue = async (chatId = randomUUID()) => {
    const input = { chatId, ownerId: randomUUID(), workspaceId: randomUUID() };
    return { ...input, ...(await producer.startWorkspace(input)) };
  };

  async function results(chatId: string): Promise<WorkspaceJobEvent[]> {
    const events = await readChatEvents(redis, prefix, chatId, '0');
    return events.filter((event) => event.type === 'result');
  }

  it('removes a waiting job, publishes its one canceled result, and frees its chat order and deduplication', async () => {
    const { jobId, chatId, ownerId, workspaceId } = await enqueue();
    const waiting = producer.waitForResult(jobId, { timeoutMs: 5_000 });

    const answer = await producer.cancel(jobId, { reason: 'user pressed stop' });

    expect(answer).toMatchObject({ jobId, outcome: 'canceled', result: { code: 'canceled', ok: false } });
    expect(await waiting).toMatchObject({ code: 'canceled', error: 'canceled: user pressed stop' });
    expect(await queue.getJob(jobId)).toBeUndefined();
    expect(await redis.zrange(redisKeys(prefix).chatOrder(chatId), 0, -1)).toEqual([]);
    const [result, ...more] = await results(chatId);
    expect(more).toEqual([]);
    expect(result).toMatchObject({ job: { id: jobId }, data: { code: 'canceled' } });
    // A late waiter still learns the result, and a new enqueue is a new job.
    expect(await producer.waitForResult(jobId, { timeoutMs: 1_000 })).toMatchObject({ code: 'canceled' });
    const again = await producer.startWorkspace({ chatId, ownerId, workspaceId });
    expect(again).toMatchObject({ deduplicated: false });
    expect(again.jobId).not.toBe(jobId);
  });

  it('answers a second cancel of a canceled job, and an unknown job, without acting', async () => {
    const { jobId, chatId } = await enqueue();
    await producer.cancel(jobId);

    expect(await producer.cancel(jobId)).toMatchObject({
      jobId,
      outcome: 'already_finished',
      result: { code: 'canceled' },
    });
    expect(await producer.cancel(randomUUID())).toMatchObject({ outcome: 'not_found' });
    expect(await results(chatId)).toHaveLength(1);
  });

  it('when another chat was deduplicated onto the job › gives each chat its one canceled result', async () => {
    const first = await enqueue();
    const { ownerId, workspaceId } = first;
    const chatB = randomUUID();
    const second = await producer.startWorkspace({ ownerId, workspaceId, chatId: chatB });
    expect(second).toMatchObject({ deduplicated: true, jobId: first.jobId });
    const waiting = producer.waitForResult(first.jobId, { timeoutMs: 5_000 });
    // Chat B's caller learns it from its own stream, as a chat UI does.
    let seenByB!: (event: WorkspaceJobEvent) => void;
    const resultOnB = new Promise<WorkspaceJobEvent>((resolve) => (seenByB = resolve));
    await producer.subscribe(chatB, (event) => event.type === 'result' && seenByB(event));

    await producer.cancel(first.jobId);

    expect(await waiting).toMatchObject({ code: 'canceled' });
    expect(await resultOnB).toMatchObject({
      chatId: chatB,
      job: { id: first.jobId },
      data: { code: 'canceled' },
    });
    for (const chatId of [first.chatId, chatB]) {
      const [result, ...more] = await results(chatId);
      expect(more).toEqual([]);
      expect(result).toMatchObject({ job: { id: first.jobId }, data: { code: 'canceled' } });
    }
  });

  it('when the reason is not one short line › throws a ValidationError naming it, and cancels nothing', async () => {
    const { jobId, chatId } = await enqueue();
    for (const reason of ['', 'a\nb', 'x'.repeat(201)]) {
      await expect(producer.cancel(jobId, { reason })).rejects.toThrow(ValidationError);
      await expect(producer.cancelChat(chatId, { reason })).rejects.toThrow(/^invalid reason: /);
    }
    expect(await queue.getJobState(jobId)).toBe('waiting');
    expect(await producer.cancel(jobId, { reason: '  by ops  ' })).toMatchObject({
      was: 'waiting',
      result: { error: 'canceled: by ops' },
    });
  });

  describe("when the canceled job was its chat's turn and the next one sleeps out a lock-wait re-delay", () => {
    /** A job as a worker leaves it when the chat's turn is not its own: last in the order, delayed a minute. */
    async function addReDelayed(chatId: string): Promise<string> {
      const jobId = randomUUID();
      await new ChatOrder(redis, prefix).enter(chatId, jobId);
      const data = { chatId, ownerId: randomUUID(), workspaceId: randomUUID() };
      await queue.add('start-workspace', data, { jobId, delay: 60_000 });
      return jobId;
    }

    it('promotes the next job to take its turn now', async () => {
      const chatId = randomUUID();
      const first = await enqueue(chatId);
      const nextId = await addReDelayed(chatId);

      expect(await producer.cancel(first.jobId)).toMatchObject({ outcome: 'canceled' });

      expect(await queue.getJobState(nextId)).toBe('waiting');
    });

    it('leaves a later job delayed when the canceled one was not the turn', async () => {
      const chatId = randomUUID();
      const first = await enqueue(chatId);
      const second = await enqueue(chatId);
      const laterId = await addReDelayed(chatId);

      expect(await producer.cancel(second.jobId)).toMatchObject({ outcome: 'canceled' });

      expect(await queue.getJobState(first.jobId)).toBe('waiting');
      expect(await queue.getJobState(laterId)).toBe('delayed');
    });
  });

  it('cancels every live job of a chat', async () => {
    const chatId = randomUUID();
    const a = await enqueue(chatId);
    const b = await enqueue(chatId);

    const answers = await producer.cancelChat(chatId);

    expect(answers.map((answer) => [answer.jobId, answer.outcome])).toEqual([
      [a.jobId, 'canceled'],
      [b.jobId, 'canceled'],
    ]);
    expect(await results(chatId)).toHaveLength(2);
  });

  it('cancels the job of another chat it was deduplicated onto, which both chats are told, and only while it is live', async () => {
    const own = await enqueue();
    const chatId = randomUUID();
    // Another chat of the same workspace: its start is deduplicated onto the first chat's job.
    const joined = await producer.startWorkspace({
      chatId,
      ownerId: own.ownerId,
      workspaceId: own.workspaceId,
    });
    expect(joined).toMatchObject({ jobId: own.jobId, deduplicated: true });

    const answers = await producer.cancelChat(chatId, { reason: 'second chat pressed stop' });

    expect(answers).toEqual([
      expect.objectContaining({ jobId: own.jobId, outcome: 'canceled', was: 'waiting' }),
    ]);
    for (const chat of [own.chatId, chatId]) {
      expect(await results(chat)).toMatchObject([
        { job: { id: own.jobId }, data: { error: 'canceled: second chat pressed stop' } },
      ]);
    }
    // Its result is out: nothing of the chat is live any more.
    expect(await producer.cancelChat(chatId)).toEqual([]);
  });

  it('lists a job deduplicated onto within the chat once', async () => {
    const first = await enqueue();
    const again = await producer.startWorkspace({
      chatId: first.chatId,
      ownerId: first.ownerId,
      workspaceId: first.workspaceId,
    });
    expect(again).toMatchObject({ jobId: first.jobId, deduplicated: true });

    const answers = await producer.cancelChat(first.chatId);

    expect(answers.map((answer) => [answer.jobId, answer.outcome])).toEqual([[first.jobId, 'canceled']]);
  });
});
