// The chat lock wrapper on ioredis-mock: acquire/release, busy, loss detection. Real-Redis behaviour
// (concurrency, Redlock across nodes, expiry) is in lock.redis.test.ts.
import { randomBytes, randomUUID } from 'node:crypto';
import RedisMock from 'ioredis-mock';
import type { Redis } from 'ioredis';
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  ChatLocks,
  LockLostError,
  LockUnavailableError,
  jitteredRefreshInterval,
  type HeldLock,
} from '../../src/shared/lock.js';
import { sleep } from '../../src/shared/errors.js';
import type { Logger } from '../../src/shared/logger.js';

function uniquePrefix(): string {
  return `wsjmock-lock-${randomBytes(5).toString('hex')}`;
}

/** How long and how often the tests poll for what a lock's timers do. */
const POLL = { timeout: 5_000, interval: 10 };

describe('ChatLocks on one node (ioredis-mock)', () => {
  const held: HeldLock[] = [];
  const clients: Redis[] = [];

  function client(db = 0): Redis {
    const redis = new RedisMock({ db });
    clients.push(redis);
    return redis;
  }

  async function acquire(locks: ChatLocks, chatId: string): Promise<HeldLock> {
    const lock = await locks.tryAcquire(chatId);
    expect(lock).not.toBeNull();
    held.push(lock!);
    return lock!;
  }

  afterEach(async () => {
    vi.restoreAllMocks();
    await Promise.all(held.splice(0).map((lock) => lock.release()));
    for (const redis of clients.splice(0)) {
      await redis.flushall();
      redis.disconnect();
    }
  });

  describe('tryAcquire', () => {
    it('takes a free lock under the contract key <prefix>:lock:chat:<chatId>, with the TTL set', async () => {
      const redis = client();
      const prefix = uniquePrefix();
      const chatId = randomUUID();
      const lock = await acquire(new ChatLocks([redis], prefix, { lockTimeoutMs: 5_000 }), chatId);

      expect(lock.resource).toBe(`${prefix}:lock:chat:${chatId}`);
      expect(lock.signal.aborted).toBe(false);
      expect(await redis.exists(`${prefix}:lock:chat:${chatId}`)).toBe(1);
      expect(await redis.exists(`mutex:${prefix}:lock:chat:${chatId}`)).toBe(0);
      const ttl = await redis.pttl(lock.resource);
      expect(ttl).toBeGreaterThan(0);
      expect(ttl).toBeLessThanOrEqual(5_000);
    });

    it('when someone else holds the lock › returns null', async () => {
      const redis = client();
      const locks = new ChatLocks([redis], uniquePrefix());
      const chatId = randomUUID();
      await acquire(locks, chatId);

      expect(await locks.tryAcquire(chatId)).toBeNull();
    });

    it('locks each chat separately', async () => {
      const locks = new ChatLocks([client()], uniquePrefix());
      await acquire(locks, randomUUID());
      await acquire(locks, randomUUID());
    });

    it('when Redis rejects the command › throws a LockUnavailableError naming the cause (it is not "busy")', async () => {
      const redis = client();
      vi.spyOn(redis, 'set').mockRejectedValue(new Error('Connection is closed.'));
      const attempt = new ChatLocks([redis], uniquePrefix()).tryAcquire(randomUUID());
      await expect(attempt).rejects.toThrow(LockUnavailableError);
      await expect(attempt).rejects.toThrow('the lock node is unreachable: Connection is closed.');
    });
  });

  describe('release', () => {
    it('frees the lock for the next holder', async () => {
      const redis = client();
      const locks = new ChatLocks([redis], uniquePrefix());
      const chatId = randomUUID();
      const lock = await acquire(locks, chatId);

      await lock.release();

      expect(await redis.exists(lock.resource)).toBe(0);
      await acquire(locks, chatId);
    });

    it('is idempotent and does not abort the signal', async () => {
      const locks = new ChatLocks([client()], uniquePrefix());
      const lock = await acquire(locks, randomUUID());

      await lock.release();
      await lock.release();

      expect(lock.signal.aborted).toBe(false);
    });

    it('never deletes a lock that another holder has taken over', async () => {
      const redis = client();
      const lock = await acquire(
        new ChatLocks([redis], uniquePrefix(), { lockTimeoutMs: 5_000 }),
        randomUUID(),
      );
      await redis.set(lock.resource, 'someone-else', 'PX', 5_000);

      await lock.release();

      expect(await redis.get(lock.resource)).toBe('someone-else');
    });

    it('when Redis rejects the release › resolves anyway and logs', async () => {
      const redis = client();
      const warn = vi.fn();
      const log = { warn } as unknown as Logger;
      const lock = await acquire(new ChatLocks([redis], uniquePrefix(), { log }), randomUUID());
      vi.spyOn(redis, 'evalsha').mockRejectedValue(new Error('Connection is closed.'));

      await expect(lock.release()).resolves.toBeUndefined();
      expect(warn).toHaveBeenCalledWith(
        expect.objectContaining({ resource: lock.resource }),
        expect.stringContaining('could not release'),
      );
    });

    it('stops refreshing', async () => {
      const redis = client();
      const locks = new ChatLocks([redis], uniquePrefix(), { lockTimeoutMs: 300, refreshIntervalMs: 50 });
      const lock = await acquire(locks, randomUUID());
      const scripts = vi.spyOn(redis, 'evalsha');
      await vi.waitFor(() => expect(scripts).toHaveBeenCalled(), POLL); // refreshing while held

      await lock.release();
      scripts.mockClear();
      // Nothing to wait for: time passes so that a refresh (every 50 ms) or the watchdog (at most 300 ms after
      // the last refresh) left running would show.
      await sleep(300);

      expect(scripts).not.toHaveBeenCalled();
      expect(lock.signal.aborted).toBe(false);
    });
  });

  describe('while held', () => {
    it('refreshes the TTL: the key outlives its TTL and the signal stays quiet', async () => {
      const redis = client();
      let refreshes = 0;
      const locks = new ChatLocks([redis], uniquePrefix(), {
        lockTimeoutMs: 300,
        refreshIntervalMs: 50,
        onOperation: (operation) => void (operation === 'refresh' && refreshes++),
      });
      const lock = await acquire(locks, randomUUID());

      // 18 refreshes 50 ms apart span three TTLs: without them the key would be gone.
      await expect.poll(() => refreshes, POLL).toBeGreaterThanOrEqual(18);

      expect(await redis.exists(lock.resource)).toBe(1);
      expect(lock.signal.aborted).toBe(false);
    });
  });

  describe('refresh jitter', () => {
    /**
     * How long after its acquire each lock taken in `run` was first refreshed (on a fake clock), in the
     * order taken, and the refresh commands sent meanwhile.
     */
    async function firstRefreshesOf(
      redis: Redis,
      run: () => Promise<HeldLock[]>,
    ): Promise<{ after: number[]; commands: number }> {
      vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
      try {
        const acquiredAt = Date.now();
        const sent: { at: number; keys: unknown[] }[] = [];
        const evalsha = redis.evalsha.bind(redis);
        vi.spyOn(redis, 'evalsha').mockImplementation((...args: Parameters<Redis['evalsha']>) => {
          const keyCount = Number(args[1]);
          sent.push({ at: Date.now(), keys: args.slice(2, 2 + keyCount) });
          return evalsha(...args);
        });
        const locks = await run();
        await vi.advanceTimersByTimeAsync(1_100);
        const after = locks.map(
          (lock) => sent.find(({ keys }) => keys.includes(lock.resource))!.at - acquiredAt,
        );
        return { after, commands: sent.length };
      } finally {
        vi.useRealTimers();
      }
    }

    it("shortens each lock's interval by its own draw of up to refreshJitter, never past refreshIntervalMs", async () => {
      const redis = client();
      const locks = new ChatLocks([redis], uniquePrefix(), {
        lockTimeoutMs: 3_000,
        refreshIntervalMs: 1_000,
        refreshJitter: 0.5,
      });
      const draws = [0, 0.5, 0.75];
      const random = vi.spyOn(Math, 'random');
      const { after } = await firstRefreshesOf(redis, async () => {
        const taken: HeldLock[] = [];
        for (const draw of draws) {
          random.mockReturnValue(draw);
          taken.push(await acquire(locks, randomUUID()));
        }
        return taken;
      });

      expect(after).toEqual([1_000, 750, 625]);
    });

    it('with refreshJitter 0 › every lock refreshes every refreshIntervalMs, all in one command', async () => {
      const redis = client();
      const locks = new ChatLocks([redis], uniquePrefix(), {
        lockTimeoutMs: 3_000,
        refreshIntervalMs: 1_000,
        refreshJitter: 0,
      });
      vi.spyOn(Math, 'random').mockReturnValue(0.999);
      const { after, commands } = await firstRefreshesOf(redis, () =>
        Promise.all([1, 2, 3].map(() => acquire(locks, randomUUID()))),
      );

      expect(after).toEqual([1_000, 1_000, 1_000]);
      expect(commands).toBe(1);
    });

    it('when a tick sends part of a window › the locks it left are sent when due, no later', async () => {
      vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
      try {
        // On a window's start (windows of 2.5 % of the interval, 25 ms, from epoch 0).
        const start = 1_000_000_000_000;
        vi.setSystemTime(start);
        const redis = client();
        const locks = new ChatLocks([redis], uniquePrefix(), {
          lockTimeoutMs: 3_000,
          refreshIntervalMs: 1_000,
          refreshJitter: 0,
        });
        const sent: { at: number; keys: unknown[] }[] = [];
        const evalsha = redis.evalsha.bind(redis);
        vi.spyOn(redis, 'evalsha').mockImplementation((...args: Parameters<Redis['evalsha']>) => {
          sent.push({ at: Date.now() - start, keys: args.slice(2, 2 + Number(args[1])) });
          return evalsha(...args);
        });
        // Due at 1,000 and 1,020 (one tick at 1,000 takes both: within its window) and at 1,043 (in the
        // window the tick reached into, beyond it: left for a tick of its own).
        const taken: HeldLock[] = [];
        for (const wait of [0, 20, 23]) {
          await vi.advanceTimersByTimeAsync(wait);
          taken.push(await acquire(locks, randomUUID()));
        }
        await vi.advanceTimersByTimeAsync(1_100);

        const firstRefreshes = taken.map((lock) => sent.find(({ keys }) => keys.includes(lock.resource))!.at);
        expect(firstRefreshes).toEqual([1_000, 1_000, 1_043]);
      } finally {
        vi.useRealTimers();
      }
    });

    it('stays within (interval × (1 − jitter), interval] for any draw in [0, 1)', () => {
      const draws = [0, 1e-9, 0.25, 0.5, 0.75, 1 - 1e-12, ...Array.from({ length: 1_000 }, Math.random)];
      for (const draw of draws) {
        const interval = jitteredRefreshInterval(2_000, 0.2, () => draw);
        expect(interval).toBeLessThanOrEqual(2_000);
        expect(interval).toBeGreaterThan(1_600);
      }
    });
  });

  describe('isHeld', () => {
    it('is true while the lock is confirmed, false once released', async () => {
      let refreshes = 0;
      const locks = new ChatLocks([client()], uniquePrefix(), {
        lockTimeoutMs: 1_000,
        refreshIntervalMs: 100,
        onOperation: (operation) => void (operation === 'refresh' && refreshes++),
      });
      const lock = await acquire(locks, randomUUID());

      await expect.poll(() => refreshes, POLL).toBeGreaterThanOrEqual(3); // confirmed again since the acquire
      expect(lock.isHeld()).toBe(true);
      await lock.release();
      expect(lock.isHeld()).toBe(false);
    });

    it('when the process was paused past the TTL › is false before the watchdog timer runs, and aborts the signal', async () => {
      const locks = new ChatLocks([client()], uniquePrefix(), { lockTimeoutMs: 200, refreshIntervalMs: 50 });
      const lock = await acquire(locks, randomUUID());

      // A paused process: no timer (refresh or watchdog) runs while the clock moves on.
      const until = Date.now() + 400;
      while (Date.now() < until) {
        // busy: the event loop is blocked, as under SIGSTOP
      }

      expect(lock.signal.aborted).toBe(false);
      expect(lock.isHeld()).toBe(false);
      expect(lock.signal.reason).toBeInstanceOf(LockLostError);
    });
  });

  describe('when the lock is lost', () => {
    it('after the key is deleted › aborts the signal with a LockLostError', async () => {
      const redis = client();
      const locks = new ChatLocks([redis], uniquePrefix(), { lockTimeoutMs: 1_000, refreshIntervalMs: 50 });
      const lock = await acquire(locks, randomUUID());

      await redis.del(lock.resource);

      await expect.poll(() => lock.signal.reason, POLL).toBeInstanceOf(LockLostError);
      const reason = lock.signal.reason as Error;
      expect(reason.name).toBe('LockLostError');
      expect(reason.message).toContain(lock.resource);
    });

    it('after another holder overwrites the key › aborts the signal and leaves their key alone', async () => {
      const redis = client();
      const locks = new ChatLocks([redis], uniquePrefix(), { lockTimeoutMs: 1_000, refreshIntervalMs: 50 });
      const lock = await acquire(locks, randomUUID());

      await redis.set(lock.resource, 'another-holder', 'PX', 10_000);

      await expect.poll(() => lock.signal.reason, POLL).toBeInstanceOf(LockLostError);
      await lock.release();
      expect(await redis.get(lock.resource)).toBe('another-holder');
    });

    it('when refreshes cannot reach Redis › aborts before the TTL runs out, with no unhandled rejection', async () => {
      const redis = client();
      const observer = client(); // same data, not broken
      const locks = new ChatLocks([redis], uniquePrefix(), { lockTimeoutMs: 1_000, refreshIntervalMs: 100 });
      const lock = await acquire(locks, randomUUID());
      // The refresh script goes through EVALSHA, falling back to EVAL; both fail as on a dead connection.
      vi.spyOn(redis, 'evalsha').mockRejectedValue(new Error('Connection is closed.'));
      vi.spyOn(redis, 'eval').mockRejectedValue(new Error('Connection is closed.'));

      const remaining = new Promise<number>((resolve) =>
        lock.signal.addEventListener('abort', () => resolve(observer.pttl(lock.resource)), { once: true }),
      );
      await expect.poll(() => lock.signal.reason, POLL).toBeInstanceOf(LockLostError);
      // The key (what other workers see) had not expired yet when this holder gave up.
      expect(await remaining).toBeGreaterThan(0);
    });

    it('a refresh failure that recovers in time does not lose the lock', async () => {
      const redis = client();
      const locks = new ChatLocks([redis], uniquePrefix(), { lockTimeoutMs: 1_000, refreshIntervalMs: 100 });
      const lock = await acquire(locks, randomUUID());
      const evalsha = vi.spyOn(redis, 'evalsha').mockRejectedValueOnce(new Error('Connection is closed.'));

      // 12 refreshes 100 ms apart span more than the TTL: the failed one alone would have let it expire.
      await expect.poll(() => evalsha.mock.calls.length, POLL).toBeGreaterThanOrEqual(12);

      expect(evalsha.mock.calls.length).toBeGreaterThan(1);
      expect(lock.signal.aborted).toBe(false);
      expect(await redis.exists(lock.resource)).toBe(1);
    });
  });

  describe('options', () => {
    it('refuses 0 or 2 nodes', () => {
      expect(() => new ChatLocks([], 'p')).toThrow(/at least one/);
      expect(() => new ChatLocks([client(1), client(2)], 'p')).toThrow(/not 2/);
    });

    it('refuses a refresh interval the TTL would not survive', () => {
      expect(() => new ChatLocks([client()], 'p', { lockTimeoutMs: 1_000, refreshIntervalMs: 950 })).toThrow(
        RangeError,
      );
      expect(() => new ChatLocks([client()], 'p', { lockTimeoutMs: 0 })).toThrow(RangeError);
    });

    it('refuses a refresh jitter outside [0, 1), naming it', () => {
      for (const refreshJitter of [1, -0.1, Number.NaN]) {
        expect(() => new ChatLocks([client()], 'p', { refreshJitter })).toThrow(
          /refreshJitter must be from 0/,
        );
      }
    });
  });
});

describe('ChatLocks on three nodes (Redlock, ioredis-mock)', () => {
  const clients: Redis[] = [];
  afterEach(async () => {
    for (const redis of clients.splice(0)) {
      await redis.flushall();
      redis.disconnect();
    }
  });

  function nodes(): Redis[] {
    // Separate databases of the mock do not share data: three independent nodes.
    const created = [1, 2, 3].map((db) => new RedisMock({ db }));
    clients.push(...created);
    return created;
  }

  const onEveryNode = (redis: Redis[], key: string) => () => Promise.all(redis.map((r) => r.exists(key)));

  it('writes the lock on every node and frees it on release', async () => {
    const redis = nodes();
    const lock = await new ChatLocks(redis, uniquePrefix()).tryAcquire(randomUUID());
    expect(lock).not.toBeNull();
    // The vote is decided by the first two answers; the third node's write may land just after.
    await expect.poll(onEveryNode(redis, lock!.resource), POLL).toEqual([1, 1, 1]);

    await lock!.release();

    await expect.poll(onEveryNode(redis, lock!.resource), POLL).toEqual([0, 0, 0]);
  });

  it('when a majority of nodes is held by someone else › returns null and leaves no key behind', async () => {
    const redis = nodes();
    const prefix = uniquePrefix();
    const chatId = randomUUID();
    const resource = `${prefix}:lock:chat:${chatId}`;
    await redis[0]!.set(resource, 'other', 'PX', 10_000);
    await redis[1]!.set(resource, 'other', 'PX', 10_000);

    expect(await new ChatLocks(redis, prefix).tryAcquire(chatId)).toBeNull();
    await expect.poll(() => redis[2]!.exists(resource), POLL).toBe(0);
    expect(await redis[0]!.get(resource)).toBe('other');
  });

  it('when a majority of keys is lost › aborts the signal', async () => {
    const redis = nodes();
    const locks = new ChatLocks(redis, uniquePrefix(), { lockTimeoutMs: 1_000, refreshIntervalMs: 50 });
    const lock = (await locks.tryAcquire(randomUUID()))!;
    try {
      await redis[0]!.del(lock.resource);
      await redis[1]!.del(lock.resource);

      await expect.poll(() => lock.signal.reason, POLL).toBeInstanceOf(LockLostError);
    } finally {
      await lock.release();
    }
  });

  it('when one node loses the key › keeps the lock (quorum still holds)', async () => {
    const redis = nodes();
    let refreshes = 0;
    const locks = new ChatLocks(redis, uniquePrefix(), {
      lockTimeoutMs: 1_000,
      refreshIntervalMs: 50,
      onOperation: (operation) => void (operation === 'refresh' && refreshes++),
    });
    const lock = (await locks.tryAcquire(randomUUID()))!;
    try {
      await redis[2]!.del(lock.resource);
      // The next refresh re-takes the key on the node that lost it; one more after that saw the quorum hold.
      await expect.poll(() => redis[2]!.exists(lock.resource), POLL).toBe(1);
      const retakenAfter = refreshes;
      await expect.poll(() => refreshes, POLL).toBeGreaterThan(retakenAfter + 1);
      expect(lock.signal.aborted).toBe(false);
    } finally {
      await lock.release();
    }
  });

  describe('when nodes do not answer (a hung node)', () => {
    const hang = (redis: Redis) => {
      const never = new Promise<never>(() => {});
      vi.spyOn(redis, 'set').mockReturnValue(never);
      vi.spyOn(redis, 'evalsha').mockReturnValue(never);
    };

    it('with one silent node › acquires, refreshes and releases from the other two, without waiting for it', async () => {
      const redis = nodes();
      hang(redis[2]!);
      const timings: { operation: string; ms: number }[] = [];
      const locks = new ChatLocks(redis, uniquePrefix(), {
        lockTimeoutMs: 1_000,
        refreshIntervalMs: 100,
        nodeTimeoutMs: 5_000,
        onOperation: (operation, ms) => timings.push({ operation, ms }),
      });

      const lock = (await locks.tryAcquire(randomUUID()))!;
      expect(lock).not.toBeNull();
      // 12 refreshes 100 ms apart span more than the TTL.
      await expect
        .poll(() => timings.filter((t) => t.operation === 'refresh').length, POLL)
        .toBeGreaterThanOrEqual(12);
      expect(lock.signal.aborted).toBe(false);
      await lock.release();

      const ops = new Set(timings.map((t) => t.operation));
      expect(ops).toEqual(new Set(['acquire', 'refresh', 'release']));
      // nodeTimeoutMs is 5 s: none of them waited for the silent node.
      expect(Math.max(...timings.map((t) => t.ms))).toBeLessThan(1_000);
    });

    it('with two silent nodes › tryAcquire rejects after nodeTimeoutMs: the quorum is unavailable', async () => {
      const redis = nodes();
      hang(redis[1]!);
      hang(redis[2]!);
      const locks = new ChatLocks(redis, uniquePrefix(), { nodeTimeoutMs: 100 });

      const attempt = locks.tryAcquire(randomUUID());

      await expect(attempt).rejects.toThrow(LockUnavailableError);
      await expect(attempt).rejects.toThrow(
        'lock quorum unavailable: 2 of 3 lock nodes unreachable, 2 needed',
      );
    });
  });
});
