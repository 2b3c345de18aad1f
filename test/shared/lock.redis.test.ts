// The chat lock on the real Redis: mutual exclusion, Redlock across three nodes, loss and expiry.
import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ChatLocks, LockLostError, LockUnavailableError, type HeldLock } from '../../src/shared/lock.js';
import { closeRedis, createRedis, type Redis } from '../../src/shared/redis.js';
import { TEST_REDIS_URL, deleteKeys, testRedis, uniquePrefix } from '../helpers/redis.js';

/** How long and how often the tests poll for what a lock's timers do. */
const POLL = { timeout: 5_000, interval: 25 };

/** A script command (EVALSHA or EVAL) a client sent, with its keys. */
interface ScriptCommand {
  node: number;
  keys: string[];
}

/**
 * Every EVALSHA and EVAL that `nodes` send from now on (a command-counting wrapper around each client),
 * until `stop`. The refresh and release scripts go through these two commands.
 */
function watchScripts(nodes: Redis[]): { seen: ScriptCommand[]; stop: () => void } {
  const seen: ScriptCommand[] = [];
  const spies = nodes.flatMap((redis, node) =>
    (['evalsha', 'eval'] as const).map((command) => {
      const send = redis[command].bind(redis) as (...args: unknown[]) => Promise<unknown>;
      return vi.spyOn(redis, command).mockImplementation(((...args: unknown[]) => {
        seen.push({ node, keys: args.slice(2, 2 + Number(args[1])) as string[] });
        return send(...args);
      }) as never);
    }),
  );
  return { seen, stop: () => spies.forEach((spy) => spy.mockRestore()) };
}

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

    it('when the key is removed externally › the holder is aborted with a LockLostError, its loss listener told it too', async () => {
      prefix = uniquePrefix('lock');
      const redis = client();
      const lock = keep(
        await new ChatLocks([redis], prefix, { lockTimeoutMs: 2_000, refreshIntervalMs: 100 }).tryAcquire(
          randomUUID(),
        ),
      )!;
      const told: LockLostError[] = [];
      lock.onLoss({ lockLost: (reason) => told.push(reason) });

      await redis.del(lock.resource);

      await expect.poll(() => lock.signal.reason, POLL).toBeInstanceOf(LockLostError);
      expect(told).toEqual([lock.signal.reason]);
      // One that listens after the loss is told at once.
      const late: LockLostError[] = [];
      lock.onLoss({ lockLost: (reason) => late.push(reason) });
      expect(late).toEqual(told);
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

  /**
   * `n` fresh chats locked at once, each kept for the cleanup; every one must be taken. In one instant: each
   * acquire is sent, and its refresh phase set, by the clock as it is called; on a loaded machine the calls
   * span more than a batch window (5 ms here) and the locks refresh in two or three groups for good.
   */
  async function acquireMany(locks: ChatLocks, n: number): Promise<HeldLock[]> {
    vi.useFakeTimers({ toFake: ['Date'] });
    let acquiring: Promise<HeldLock | null>[];
    try {
      acquiring = Array.from({ length: n }, () => locks.tryAcquire(randomUUID()));
    } finally {
      vi.useRealTimers();
    }
    const taken = await Promise.all(acquiring);
    expect(taken.filter((lock) => lock === null)).toEqual([]);
    return taken.map((lock) => keep(lock)!);
  }

  describe('many locks held by one ChatLocks (batched refresh)', () => {
    const LOCKS = 50;
    /** No jitter: locks taken together stay due together, so every tick refreshes all of them. */
    const options = { lockTimeoutMs: 1_000, refreshIntervalMs: 200, refreshJitter: 0 };

    /** ChatLocks on `nodes` with the options above, counting its lock refreshes. */
    function countingLocks(nodes: Redis[]): { locks: ChatLocks; refreshes: () => number } {
      let refreshes = 0;
      const locks = new ChatLocks(nodes, prefix, {
        ...options,
        onOperation: (operation) => void (operation === 'refresh' && refreshes++),
      });
      return { locks, refreshes: () => refreshes };
    }

    /**
     * While `run`, the script commands `nodes` sent and the lock refreshes made, from the second round of
     * refreshes on (a lock whose acquire answered late, on a loaded machine, is refreshed on its own until it
     * is next due with the rest).
     */
    async function refreshedWhile(
      nodes: Redis[],
      refreshes: () => number,
      locks: number,
      run: () => Promise<void>,
    ): Promise<{ commands: ScriptCommand[]; rounds: number }> {
      await expect.poll(refreshes, POLL).toBeGreaterThanOrEqual(locks * 2);
      const before = refreshes();
      const scripts = watchScripts(nodes);
      try {
        await run();
      } finally {
        scripts.stop();
      }
      return { commands: scripts.seen, rounds: (refreshes() - before) / locks };
    }

    /** About one command per node and round for all `locks`: at most two, and each lock in 5 or more. */
    function expectBatched(commands: ScriptCommand[], rounds: number, locks: HeldLock[]): void {
      expect(commands.length).toBeLessThanOrEqual(2 * Math.ceil(rounds));
      for (const lock of locks) {
        const refreshing = commands.filter((command) => command.keys.includes(lock.resource));
        expect(refreshing.length, `commands refreshing ${lock.resource}`).toBeGreaterThanOrEqual(5);
      }
    }

    /** None of `locks` aborted, and each key still on `redis`: kept past its TTL. */
    async function expectHeld(locks: HeldLock[], redis: Redis): Promise<void> {
      expect(locks.filter((lock) => lock.signal.aborted)).toEqual([]);
      const ttls = await Promise.all(locks.map((lock) => redis.pttl(lock.resource)));
      expect(ttls.every((ttl) => ttl > 0)).toBe(true);
    }

    it('refreshes all of them by one command per tick, and keeps every key past its TTL', async () => {
      prefix = uniquePrefix('lock');
      const redis = client();
      const { locks, refreshes } = countingLocks([redis]);
      const many = await acquireMany(locks, LOCKS);
      // 6 rounds of refreshes, 200 ms apart, span more than the TTL.
      const { commands, rounds } = await refreshedWhile([redis], refreshes, LOCKS, () =>
        expect.poll(refreshes, POLL).toBeGreaterThanOrEqual(LOCKS * 8),
      );

      expectBatched(commands, rounds, many);
      await expectHeld(many, redis);
    });

    it('when another holder takes one lock of the batch › only that one is lost, the others stay held', async () => {
      prefix = uniquePrefix('lock');
      const redis = client();
      const { locks, refreshes } = countingLocks([redis]);
      const [taken, ...others] = await acquireMany(locks, 10);

      await redis.set(taken!.resource, 'another-holder', 'PX', 10_000);

      await expect.poll(() => taken!.signal.reason, POLL).toBeInstanceOf(LockLostError);
      // The others go on being refreshed together, past their TTL.
      const lostAfter = refreshes();
      await expect.poll(refreshes, POLL).toBeGreaterThanOrEqual(lostAfter + others.length * 6);
      expect(others.every((lock) => lock.isHeld())).toBe(true);
      await expectHeld(others, redis);
      await taken!.release();
      expect(await redis.get(taken!.resource)).toBe('another-holder');
    });

    it('on three nodes with one down › refreshes by quorum: one command per live node per tick, none lost', async () => {
      prefix = uniquePrefix('lock');
      const nodes = [client(1), client(2), client(3)];
      nodes[2]!.disconnect();
      const { locks, refreshes } = countingLocks(nodes);
      // The live nodes' fresh connections, before the votes' 500 ms bound counts them as unreachable.
      expect(await locks.whenReachable(POLL.timeout)).toBe(true);
      const many = await acquireMany(locks, 20);
      const { commands, rounds } = await refreshedWhile(nodes, refreshes, many.length, () =>
        expect.poll(refreshes, POLL).toBeGreaterThanOrEqual(many.length * 8),
      );

      await expectHeld(many, nodes[0]!);
      // Each live node got about one command per round, for all the locks.
      for (const node of [0, 1]) {
        expectBatched(
          commands.filter((command) => command.node === node),
          rounds,
          many,
        );
      }
    });
  });

  describe('many locks released in one turn of the event loop (batched release)', () => {
    it('deletes them by one command per node, each only where it is still ours', async () => {
      prefix = uniquePrefix('lock');
      const redis = client();
      const [taken, ...ours] = await acquireMany(new ChatLocks([redis], prefix), 30);
      await redis.set(taken!.resource, 'another-holder', 'PX', 10_000);

      const scripts = watchScripts([redis]);
      try {
        await Promise.all([taken!, ...ours].map((lock) => lock.release()));
      } finally {
        scripts.stop();
      }

      expect(scripts.seen).toHaveLength(1);
      expect(scripts.seen[0]!.keys).toHaveLength(30);
      expect(await Promise.all(ours.map((lock) => redis.exists(lock.resource)))).toEqual(ours.map(() => 0));
      expect(await redis.get(taken!.resource)).toBe('another-holder');
    });

    it('on three nodes with one down › released by quorum, one command per live node', async () => {
      prefix = uniquePrefix('lock');
      const warn = vi.fn();
      const nodes = [client(1), client(2), client(3)];
      const locks = new ChatLocks(nodes, prefix, { log: { warn } as never });
      expect(await locks.whenReachable(POLL.timeout)).toBe(true);
      const many = await acquireMany(locks, 20);
      nodes[2]!.disconnect();

      const scripts = watchScripts(nodes);
      try {
        await Promise.all(many.map((lock) => lock.release()));
      } finally {
        scripts.stop();
      }

      for (const node of [0, 1]) expect(scripts.seen.filter((c) => c.node === node)).toHaveLength(1);
      for (const node of nodes.slice(0, 2)) {
        expect(await Promise.all(many.map((lock) => node.exists(lock.resource)))).toEqual(many.map(() => 0));
      }
      expect(warn).not.toHaveBeenCalled();
    });
  });

  describe('three nodes (Redlock)', () => {
    it('under 20 concurrent tryAcquire calls › at most one wins, holding the key on a quorum of nodes', async () => {
      prefix = uniquePrefix('lock');
      // Three databases stand in for three independent nodes; each ChatLocks gets connections of its own.
      const chatId = randomUUID();
      const locksOf = async () => {
        const locks = new ChatLocks([client(1), client(2), client(3)], prefix);
        // Its fresh connections, before the votes' 500 ms bound counts them as unreachable (a loaded machine).
        expect(await locks.whenReachable(POLL.timeout)).toBe(true);
        return locks;
      };
      const contenders = await Promise.all(Array.from({ length: 20 }, locksOf));
      const attempts = contenders.map((locks) => locks.tryAcquire(chatId).then(keep));

      const winners = (await Promise.all(attempts)).filter((lock) => lock !== null);

      // Redlock may split the vote (each of three contenders first on another node): then nobody wins
      // this round, and the losers' undo must leave the lock free for the next try, not held until its TTL.
      expect(winners.length).toBeLessThanOrEqual(1);
      const nodes = [1, 2, 3].map((db) => cleaners.get(db)!);
      const resource = `${prefix}:lock:chat:${chatId}`;
      const everywhere = () => Promise.all(nodes.map((r) => r.exists(resource)));
      if (winners.length === 0) {
        await expect.poll(everywhere, POLL).toEqual([0, 0, 0]);
        winners.push(keep(await (await locksOf()).tryAcquire(chatId))!);
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

    /** A chat whose lock another holder has on nodes 2 and 3: an acquire takes node 1 only, and loses. */
    async function heldOnTwoNodes(): Promise<{ chatId: string; resource: string }> {
      const chatId = randomUUID();
      const resource = `${prefix}:lock:chat:${chatId}`;
      await cleaners.get(2)!.set(resource, 'another-holder', 'PX', 10_000);
      await cleaners.get(3)!.set(resource, 'another-holder', 'PX', 10_000);
      return { chatId, resource };
    }

    it("when an acquire loses the vote › it deletes the key it took, and leaves the other holder's", async () => {
      prefix = uniquePrefix('lock');
      const nodes = [client(1), client(2), client(3)];
      const { chatId, resource } = await heldOnTwoNodes();

      expect(await new ChatLocks(nodes, prefix).tryAcquire(chatId)).toBeNull();

      await expect.poll(() => cleaners.get(1)!.exists(resource), POLL).toBe(0);
      for (const db of [2, 3]) expect(await cleaners.get(db)!.get(resource)).toBe('another-holder');
    });

    it('when a lost acquire cannot delete its key on a quorum › it says so, and the key is left to expire', async () => {
      prefix = uniquePrefix('lock');
      const nodes = [client(1), client(2), client(3)];
      const { chatId, resource } = await heldOnTwoNodes();
      const warn = vi.fn();
      // The deletes fail on two nodes: only node 3 answers the undo.
      for (const node of nodes.slice(0, 2)) {
        vi.spyOn(node, 'evalsha').mockRejectedValue(new Error('Connection is closed.'));
      }

      expect(await new ChatLocks(nodes, prefix, { log: { warn } as never }).tryAcquire(chatId)).toBeNull();

      await expect
        .poll(() => warn.mock.calls, POLL)
        .toContainEqual([
          expect.objectContaining({ resource, err: expect.any(LockUnavailableError) }),
          expect.stringContaining('could not undo a lost acquire'),
        ]);
      expect(await cleaners.get(1)!.pttl(resource)).toBeGreaterThan(0);
    });

    it('when a majority of nodes loses the key › the holder is aborted', async () => {
      prefix = uniquePrefix('lock');
      const nodes = [client(1), client(2), client(3)];
      const locks = new ChatLocks(nodes, prefix, { lockTimeoutMs: 2_000, refreshIntervalMs: 100 });
      const lock = keep(await locks.tryAcquire(randomUUID()))!;

      // Both at once, and again until it is lost: a refresh in flight between the two deletes still sees a
      // quorum holding the lock, and writes the first node's key back.
      const lose = () =>
        Promise.all([cleaners.get(1)!.del(lock.resource), cleaners.get(2)!.del(lock.resource)]);

      await expect
        .poll(async () => {
          if (!lock.signal.aborted) await lose();
          return lock.signal.reason;
        }, POLL)
        .toBeInstanceOf(LockLostError);
    });
  });
});
