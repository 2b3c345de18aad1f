// The chat order's scripts on the real Redis: entries in the order Redis ran the enters, even many within one
// microsecond; the set's expiry; which head a job waits for and which heads are stale.
import { randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ChatOrder } from '../../src/shared/chat-order.js';
import { redisKeys } from '../../src/shared/keys.js';
import { closeRedis, type RedisClient } from '../../src/shared/redis.js';
import { deleteKeys, testClient, uniquePrefix } from '../helpers/redis.js';

describe('ChatOrder on the real Redis', () => {
  let prefix: string;
  let redis: RedisClient;
  let order: ChatOrder;
  const chatId = randomUUID();
  const key = () => redisKeys(prefix).chatOrder(chatId);
  const entries = () => redis.zrange(key(), 0, -1);

  beforeEach(() => {
    prefix = uniquePrefix('order');
    redis = testClient();
    order = new ChatOrder(redis, prefix, { ttlMs: 60_000 });
  });

  afterEach(async () => {
    await deleteKeys(redis, prefix);
    await closeRedis(redis);
  });

  it('orders entries as Redis ran the enters, with strictly rising scores, and refreshes the expiry', async () => {
    const ids = Array.from({ length: 50 }, () => randomUUID());
    // Sent at once on one connection: many of them run within one microsecond of Redis' clock.
    const scores = await Promise.all(ids.map((id) => order.enter(chatId, id)));

    expect(await entries()).toEqual(ids);
    for (let i = 1; i < scores.length; i++) expect(scores[i]).toBeGreaterThan(scores[i - 1]!);
    const stored = await redis.zrange(key(), 0, -1, 'WITHSCORES');
    expect(stored.filter((_, i) => i % 2 === 1).map(Number)).toEqual(scores);
    // Redis' clock in µs, not a counter from zero.
    const [seconds] = await redis.time();
    expect(Math.floor(scores[0]! / 1e6)).toBeGreaterThanOrEqual(Number(seconds) - 60);
    const ttl = await redis.pttl(key());
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(60_000);
  });

  it('keeps the place of a job entered again', async () => {
    const [first, second] = [randomUUID(), randomUUID()];
    const score = await order.enter(chatId, first);
    await order.enter(chatId, second);
    await order.enter(chatId, first);
    expect(await entries()).toEqual([first, second]);
    expect(Number(await redis.zscore(key(), first))).toBe(score);
  });

  describe('jobAhead', () => {
    const states = new Map<string, string>();
    const jobState = (jobId: string) => Promise.resolve(states.get(jobId) ?? 'unknown');

    it('is nothing for the head and for a job without an entry, the live head for any other', async () => {
      const [head, next] = [randomUUID(), randomUUID()];
      await order.enter(chatId, head);
      await order.enter(chatId, next);
      states.set(head, 'delayed');
      const graceMs = 60_000;

      expect(await order.jobAhead(chatId, head, { jobState, graceMs })).toBeUndefined();
      expect(await order.jobAhead(chatId, randomUUID(), { jobState, graceMs })).toBeUndefined();
      expect(await order.jobAhead(chatId, next, { jobState, graceMs })).toBe(head);
      // A job still in the queue that is not there yet (young, unknown) also goes first.
      states.delete(head);
      expect(await order.jobAhead(chatId, next, { jobState, graceMs })).toBe(head);
      expect(await entries()).toEqual([head, next]);
    });

    it('removes ended heads at once and missing ones past the grace, then looks at the next', async () => {
      const ids = () => [randomUUID(), randomUUID(), randomUUID(), randomUUID(), randomUUID()] as const;
      const [completed, failed, missing, live, waiting] = ids();
      for (const id of [completed, failed, missing, live, waiting]) await order.enter(chatId, id);
      states.set(completed, 'completed').set(failed, 'failed').set(live, 'waiting');

      // Within the grace a missing head holds the chat; the ended ones before it are gone.
      expect(await order.jobAhead(chatId, waiting, { jobState, graceMs: 60_000 })).toBe(missing);
      expect(await entries()).toEqual([missing, live, waiting]);
      // Past it (a grace of 0: any age), it goes too, and the live job is ahead.
      expect(await order.jobAhead(chatId, waiting, { jobState, graceMs: 0 })).toBe(live);
      expect(await entries()).toEqual([live, waiting]);
      await order.leave(chatId, live);
      expect(await order.jobAhead(chatId, waiting, { jobState, graceMs: 0 })).toBeUndefined();
    });
  });
});
