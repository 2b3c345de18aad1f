// The chat lock on the real Redis: mutual exclusion, Redlock across three nodes, loss and expiry.
import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ChatLocks, LockLostError, LockUnavailableError, type HeldLock } from '../../src/shared/lock.js';
import { closeRedis, createRedis, type Redis } from '../../src/shared/redis.js';
import { TEST_REDIS_URL, deleteKeys, testRedis, uniquePrefix } from '../helpers/redis.js';

/** How long and how often the tests poll for what a lock's timers do. */
const POLL = { timeout: 5_000, interval: 25 };

function redisOnDb(db: number): Redis {
  const url = new URL(TEST_REDIS_URL);
  url.pathname = `/${db}`;
  return createRedis(url.toString(), { name: 'workspace-jobs-test-lock' });
}

describe('ChatLocks on the real Redis', () => {
  let prefix: string;
  const held: HeldLock[] = [];
  const clients: Redis[] = [];
  /** Databases the test wrote to, by a client that stays connected until cleanup. */
  const cleaners = new Map<number, Redis>();

  function client(db = 0): Redis {
    const redis = db === 0 ? testRedis() : redisOnDb(db);
    clients.push(redis);
    if (!cleaners.has(db)) cleaners.set(db, db === 0 ? testRedis() : redisOnDb(db));
    return redis;
  }

  function keep<T extends HeldLock | null>(lock: T): T {
    if (lock) held.push(lock);
    return lock;
  }

  afterEach(async () => {
    await Promise.all(held.splice(0).map((lock) => lock.release()));
    for (const redis of cleaners.values()) {
      await deleteKeys(redis, prefix);
      await closeRedis(redis);
    }
    cleaners.clear();
    await Promise.all(clients.splice(0).map((redis) => closeRedis(redis)));
  });

  describe('one node', () => {
    it('writes exactly the contract key, with a TTL', async () => {
      prefix = uniquePrefix('lock');
      const redis = client();
      const chatId = randomUUID();
      const lock = keep(await new ChatLocks([redis], prefix, { lockTimeoutMs: 10_000 }).tryAcquire(chatId))!;

      const keys = await redis.keys(`*${chatId}*`);
      expect(keys).toEqual([`${prefix}:lock:chat:${chatId}`]);
      const ttl = await redis.pttl(lock.resource);
      expect(ttl).toBeGreaterThan(0);
      expect(ttl).toBeLessThanOrEqual(10_000);
    });

    it('under 20 concurrent tryAcquire calls from 4 connections › exactly one wins', async () => {
      prefix = uniquePrefix('lock');
      const redis = [client(), client(), client(), client()];
      const chatId = randomUUID();
      const attempts = Array.from({ length: 20 }, (_, i) =>
        new ChatLocks([redis[i % 4]!], prefix).tryAcquire(chatId).then(keep),
      );

      const results = await Promise.all(attempts);

      expect(results.filter((lock) => lock !== null)).toHaveLength(1);
    });

    it('after the holder releases › the next one gets it', async () => {
      prefix = uniquePrefix('lock');
      const locks = new ChatLocks([client()], prefix);
      const chatId = randomUUID();
      const first = keep(await locks.tryAcquire(chatId))!;
      expect(await locks.tryAcquire(chatId)).toBeNull();

      await first.release();

      expect(keep(await locks.tryAcquire(chatId))).not.toBeNull();
    });

    it('when the key is removed externally › the holder is aborted with a LockLostError', async () => {
      prefix = uniquePrefix('lock');
      const redis = client();
      const lock = keep(
        await new ChatLocks([redis], prefix, { lockTimeoutMs: 2_000, refreshIntervalMs: 100 }).tryAcquire(
          randomUUID(),
        ),
      )!;

      await redis.del(lock.resource);

      await expect.poll(() => lock.signal.reason, POLL).toBeInstanceOf(LockLostError);
    });

    it('when the holder stops refreshing › it is aborted first, then the TTL frees the lock for another worker', async () => {
      prefix = uniquePrefix('lock');
      const holderConnection = client();
      const chatId = randomUUID();
      const options = { lockTimeoutMs: 1_000, refreshIntervalMs: 200 };
      const holder = keep(await new ChatLocks([holderConnection], prefix, options).tryAcquire(chatId))!;
      const order: string[] = [];
      holder.signal.addEventListener('abort', () => order.push('holder aborted'));

      // The holder's connection dies: its refreshes fail, and the key is left to expire.
      holderConnection.disconnect();
      const other = new ChatLocks([client()], prefix, options);
      expect(await other.tryAcquire(chatId)).toBeNull();
      const next = keep(
        await vi.waitFor(async () => {
          const lock = await other.tryAcquire(chatId);
          expect(lock, 'the lock once the key expired').not.toBeNull();
          return lock!;
        }, POLL),
      );
      order.push('other acquired');

      expect(holder.signal.reason).toBeInstanceOf(LockLostError);
      expect(order).toEqual(['holder aborted', 'other acquired']);
      await expect(holder.release()).resolves.toBeUndefined();
      expect(next.signal.aborted).toBe(false);
    });
  });

  describe('three nodes (Redlock)', () => {
    it('under 20 concurrent tryAcquire calls › at most one wins, holding the key on a quorum of nodes', async () => {
      prefix = uniquePrefix('lock');
      // Three databases stand in for three independent nodes; each ChatLocks gets connections of its own.
      const chatId = randomUUID();
      const locksOf = () => new ChatLocks([client(1), client(2), client(3)], prefix);
      const attempts = Array.from({ length: 20 }, () => locksOf().tryAcquire(chatId).then(keep));

      const winners = (await Promise.all(attempts)).filter((lock) => lock !== null);

      // Redlock may split the vote (each of three contenders first on another node): then nobody wins
      // this round, and the losers' undo must leave the lock free for the next try, not held until its TTL.
      expect(winners.length).toBeLessThanOrEqual(1);
      const nodes = [1, 2, 3].map((db) => cleaners.get(db)!);
      const resource = `${prefix}:lock:chat:${chatId}`;
      const everywhere = () => Promise.all(nodes.map((r) => r.exists(resource)));
      if (winners.length === 0) {
        await expect.poll(everywhere, POLL).toEqual([0, 0, 0]);
        winners.push(keep(await locksOf().tryAcquire(chatId))!);
        expect(winners[0]).not.toBeNull();
      }
      // A loser may have taken one node before losing the vote; the winner holds at least a majority.
      const held = (await everywhere()).reduce((a, b) => a + b, 0);
      expect(held).toBeGreaterThanOrEqual(2);

      await winners[0]!.release();

      // Released once two nodes confirmed; the third may delete just after.
      await expect.poll(everywhere, POLL).toEqual([0, 0, 0]);
    });

    it('with one node down › still acquires and keeps the lock (2 of 3)', async () => {
      prefix = uniquePrefix('lock');
      const nodes = [client(1), client(2), client(3)];
      nodes[2]!.disconnect();
      let refreshes = 0;
      const locks = new ChatLocks(nodes, prefix, {
        lockTimeoutMs: 1_000,
        refreshIntervalMs: 100,
        onOperation: (operation) => void (operation === 'refresh' && refreshes++),
      });

      const lock = keep(await locks.tryAcquire(randomUUID()));
      expect(lock).not.toBeNull();
      // 12 refreshes 100 ms apart span more than the TTL: without them the lock would be lost.
      await expect.poll(() => refreshes, POLL).toBeGreaterThanOrEqual(12);

      expect(lock!.signal.aborted).toBe(false);
    });

    it('with two nodes down › cannot acquire: a LockUnavailableError, not "busy"', async () => {
      prefix = uniquePrefix('lock');
      const nodes = [client(1), client(2), client(3)];
      nodes[1]!.disconnect();
      nodes[2]!.disconnect();

      await expect(new ChatLocks(nodes, prefix).tryAcquire(randomUUID())).rejects.toThrow(
        LockUnavailableError,
      );
    });

    it('when a majority of nodes loses the key › the holder is aborted', async () => {
      prefix = uniquePrefix('lock');
      const nodes = [client(1), client(2), client(3)];
      const locks = new ChatLocks(nodes, prefix, { lockTimeoutMs: 2_000, refreshIntervalMs: 100 });
      const lock = keep(await locks.tryAcquire(randomUUID()))!;

      await cleaners.get(1)!.del(lock.resource);
      await cleaners.get(2)!.del(lock.resource);

      await expect.poll(() => lock.signal.reason, POLL).toBeInstanceOf(LockLostError);
    });
  });
});
