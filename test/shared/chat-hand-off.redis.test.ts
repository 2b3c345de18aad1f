// The hand-off of a chat's turn on the real Redis and BullMQ: which job it promotes, and what it reads for it.
import { randomUUID } from 'node:crypto';
import { Job, Queue, Worker } from 'bullmq';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { handOffChat, promoteThrough } from '../../src/shared/chat-hand-off.js';
import { ChatOrder } from '../../src/shared/chat-order.js';
import { QUEUE_NAME } from '../../src/shared/contract.js';
import { closeRedis, createRedis, type Redis } from '../../src/shared/redis.js';
import { TEST_REDIS_URL, deleteKeys, testRedis, uniquePrefix } from '../helpers/redis.js';

describe('handOffChat through a BullMQ queue', () => {
  let prefix: string;
  let redis: Redis;
  let queue: Queue;
  let order: ChatOrder;
  const chatId = randomUUID();
  const [ended, next] = [randomUUID(), randomUUID()];

  beforeEach(async () => {
    prefix = uniquePrefix('handoff');
    redis = testRedis();
    queue = new Queue(QUEUE_NAME, { connection: redis, prefix });
    order = new ChatOrder(redis, prefix);
    // The ended job has left the order: the next one is its head.
    await order.enter(chatId, next);
  });

  afterEach(async () => {
    vi.restoreAllMocks();
    await queue.close();
    await deleteKeys(redis, prefix);
    await closeRedis(redis);
  });

  it('when the next job sleeps out its re-delay › promotes it, fetching it once', async () => {
    await queue.add('start_workspace', {}, { jobId: next, delay: 60_000 });
    const fetches = vi.spyOn(Job, 'fromId');

    await handOffChat(order, promoteThrough(queue), chatId, ended);

    expect(await queue.getJobState(next)).toBe('waiting');
    expect(fetches).toHaveBeenCalledTimes(1);
  });

  it('when the next job is active (between its turn check and its re-delay) › tries it again, fetched once', async () => {
    await queue.add('start_workspace', {}, { jobId: next });
    const connection = createRedis(TEST_REDIS_URL, { blocking: true });
    const worker = new Worker(QUEUE_NAME, null, { connection, prefix });
    worker.on('error', () => {});
    try {
      expect((await worker.getNextJob('test-token', { block: false }))?.id).toBe(next);
      const fetches = vi.spyOn(Job, 'fromId');
      const promotions = vi.spyOn(Job.prototype, 'promote');

      await handOffChat(order, promoteThrough(queue), chatId, ended);

      // Every try found it active: the hand-off's five tries, on the one job it fetched.
      expect(promotions).toHaveBeenCalledTimes(5);
      expect(fetches).toHaveBeenCalledTimes(1);
      expect(await queue.getJobState(next)).toBe('active');
    } finally {
      await worker.close(true);
      await closeRedis(connection);
    }
  });

  it('when the next job is gone › does nothing more than look', async () => {
    const promotions = vi.spyOn(Job.prototype, 'promote');

    await handOffChat(order, promoteThrough(queue), chatId, ended);

    expect(promotions).not.toHaveBeenCalled();
  });
});
