// The chat lock on three real redis-server processes of the test's own, as the worker connects to them
// (createRedis failFast): a node killed or frozen (SIGSTOP) while many locks are held and refreshed, a lost
// quorum, and a node that comes back. Latency figures are in the benchmark (bench/lock.ts); the bounds
// here are generous, to catch a wait for the dead node (its connect/command timeout or reconnect backoff).
import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  ChatLocks,
  LockLostError,
  LockUnavailableError,
  type HeldLock,
  type LockOperation,
} from '../../src/shared/lock.js';
import { closeRedis, createRedis, type Redis } from '../../src/shared/redis.js';
import { RedisServerProcess } from '../helpers/redis-server.js';
import { uniquePrefix } from '../helpers/redis.js';

const LOCKS = 40;
const TTL_MS = 1_500;
const REFRESH_MS = 300;
/** Far below the watchdog (90% of the TTL) and the 500 ms command timeout of a frozen node. */
const OP_BOUND_MS = 400;

interface Timing {
  operation: LockOperation;
  ms: number;
  at: number;
}

describe('the chat lock on three redis-server nodes', () => {
  const nodes: RedisServerProcess[] = [];
  const clients: Redis[] = [];
  const held: HeldLock[] = [];
  let timings: Timing[];
  let locks: ChatLocks;
  let prefix: string;

  beforeAll(async () => {
    nodes.push(...(await RedisServerProcess.startMany(3)));
  });

  afterAll(async () => {
    await Promise.all(nodes.map((node) => node.stop()));
  });

  beforeEach(async () => {
    prefix = uniquePrefix('redlock');
    timings = [];
    clients.push(
      ...nodes.map((node, i) =>
        createRedis(node.url, { name: `workspace-jobs-test-lock-${i}`, failFast: true }),
      ),
    );
    locks = new ChatLocks(clients, prefix, {
      lockTimeoutMs: TTL_MS,
      refreshIntervalMs: REFRESH_MS,
      onOperation: (operation, ms) => timings.push({ operation, ms, at: Date.now() }),
    });
    // Every node, not just a quorum: each test takes one or two of them away.
    await expect
      .poll(() => clients.map((c) => c.status), { timeout: 5_000, interval: 20 })
      .toEqual(['ready', 'ready', 'ready']);
  });

  afterEach(async () => {
    await Promise.all(held.splice(0).map((lock) => lock.release()));
    await Promise.all(clients.splice(0).map((client) => closeRedis(client, 500)));
    for (const node of nodes) {
      if (node.running) node.thaw();
      else await node.restart();
    }
  });

  /** A connection of the test's own to one node, to look at its keys. */
  async function onNode<T>(node: RedisServerProcess, fn: (redis: Redis) => Promise<T>): Promise<T> {
    const redis = createRedis(node.url, { name: 'workspace-jobs-test-inspect' });
    try {
      return await fn(redis);
    } finally {
      await closeRedis(redis, 500);
    }
  }

  async function acquireMany(n: number): Promise<HeldLock[]> {
    const acquired = await Promise.all(Array.from({ length: n }, () => locks.tryAcquire(randomUUID())));
    for (const lock of acquired) {
      expect(lock).not.toBeNull();
      held.push(lock!);
    }
    return acquired as HeldLock[];
  }

  /** Waits until `count` refreshes were made since `since`. */
  async function refreshesSince(since: number, count: number): Promise<void> {
    await expect
      .poll(() => timings.filter((t) => t.operation === 'refresh' && t.at >= since).length, {
        timeout: 20_000,
        interval: 50,
      })
      .toBeGreaterThanOrEqual(count);
  }

  /**
   * Holds LOCKS locks over several refresh periods, takes one node away mid-run with `fault`, keeps them
   * over more than two TTLs more while other chats are locked and released, and checks what it measured.
   */
  async function holdThrough(fault: () => Promise<void> | void): Promise<void> {
    const lost: unknown[] = [];
    const many = await acquireMany(LOCKS);
    for (const lock of many) lock.signal.addEventListener('abort', () => lost.push(lock.signal.reason));
    await refreshesSince(0, LOCKS * 2);

    await fault();
    const faultAt = Date.now();
    // Locks taken and released while the node is down.
    for (let i = 0; i < 50; i++) {
      const lock = await locks.tryAcquire(randomUUID());
      expect(lock).not.toBeNull();
      await lock!.release();
    }
    // Each held lock is refreshed at least 6 times (> 2 TTLs) with the node down.
    await refreshesSince(faultAt, LOCKS * 6);

    expect(lost).toEqual([]);
    const after = timings.filter((t) => t.at >= faultAt);
    for (const operation of ['acquire', 'refresh', 'release'] as const) {
      const slowest = Math.max(...after.filter((t) => t.operation === operation).map((t) => t.ms));
      expect(slowest, `slowest ${operation} with the node down`).toBeLessThan(OP_BOUND_MS);
    }
    await Promise.all(many.map((lock) => lock.release()));
    expect(many.filter((lock) => lock.signal.aborted)).toEqual([]);
  }

  describe('when one node is killed mid-run', () => {
    it('keeps every lock, and acquire, refresh and release answer from the two live nodes', async () => {
      await holdThrough(() => nodes[2]!.kill());

      // Released on the live nodes: nothing left for the TTL to clean up.
      for (const node of nodes.slice(0, 2)) {
        expect(await onNode(node, (redis) => redis.keys(`${prefix}:*`))).toEqual([]);
      }
    });
  });

  describe('when one node hangs (SIGSTOP: connections accepted, nothing answered)', () => {
    it('keeps every lock, and no operation waits for the frozen node', async () => {
      await holdThrough(() => nodes[1]!.freeze());

      // Its client gives up on the timed-out connection: its commands then fail at once, none pile up.
      await expect.poll(() => clients[1]!.status, { timeout: 5_000, interval: 20 }).not.toBe('ready');
    });
  });

  describe('when two nodes are killed', () => {
    it('refuses new locks at once with a LockUnavailableError, and aborts held ones naming the lost quorum', async () => {
      const many = await acquireMany(10);

      await Promise.all([nodes[1]!.kill(), nodes[2]!.kill()]);

      const started = performance.now();
      const attempt = locks.tryAcquire(randomUUID());
      await expect(attempt).rejects.toThrow(LockUnavailableError);
      await expect(attempt).rejects.toThrow(
        'lock quorum unavailable: 2 of 3 lock nodes unreachable, 2 needed',
      );
      expect(performance.now() - started).toBeLessThan(OP_BOUND_MS);

      // Given up before the TTL can run out on the nodes, so nobody else can get in while a job still runs.
      for (const lock of many) {
        await expect.poll(() => lock.signal.aborted, { timeout: TTL_MS * 3 }).toBe(true);
        expect(lock.signal.reason).toBeInstanceOf(LockLostError);
        expect((lock.signal.reason as Error).message).toContain('lock quorum unavailable');
      }
    });
  });

  describe('whenReachable (a worker starting)', () => {
    it('answers true once a quorum is connected, false after its timeout without one', async () => {
      const fresh = () => {
        const made = nodes.map((node) =>
          createRedis(node.url, { name: 'workspace-jobs-test-lock', failFast: true }),
        );
        clients.push(...made);
        return new ChatLocks(made, prefix);
      };
      await nodes[2]!.kill();
      expect(await fresh().whenReachable(5_000)).toBe(true);

      await nodes[1]!.kill();
      const started = performance.now();
      expect(await fresh().whenReachable(300)).toBe(false);
      expect(performance.now() - started).toBeGreaterThanOrEqual(290);
    });
  });

  describe('when a node comes back', () => {
    it('after a kill, restarted on its port › is written to again: by new locks, and by the refreshes of locks held while it was down', async () => {
      const node = nodes[2]!;
      await node.kill();
      const [heldThrough] = await acquireMany(1);

      await node.restart();
      const restartedAt = Date.now();
      await expect.poll(() => clients[2]!.status, { timeout: 5_000, interval: 20 }).toBe('ready');
      const reconnectMs = Date.now() - restartedAt;

      const [after] = await acquireMany(1);
      await expect.poll(() => onNode(node, (redis) => redis.exists(after!.resource))).toBe(1);
      await expect.poll(() => onNode(node, (redis) => redis.exists(heldThrough!.resource))).toBe(1);
      // The fail-fast client retries at most a second apart; allow for a loaded machine.
      expect(reconnectMs).toBeLessThan(3_000);
      expect(heldThrough!.signal.aborted).toBe(false);
    });

    it('after a freeze, once thawed › is written to again', async () => {
      const node = nodes[2]!;
      node.freeze();
      const [heldThrough] = await acquireMany(1);
      // A command to it times out, and its client reconnects to wait for it.
      await expect.poll(() => clients[2]!.status, { timeout: 5_000, interval: 20 }).not.toBe('ready');

      node.thaw();
      await expect.poll(() => clients[2]!.status, { timeout: 5_000, interval: 20 }).toBe('ready');

      const [after] = await acquireMany(1);
      await expect.poll(() => onNode(node, (redis) => redis.exists(after!.resource))).toBe(1);
      await expect.poll(() => onNode(node, (redis) => redis.exists(heldThrough!.resource))).toBe(1);
      expect(heldThrough!.signal.aborted).toBe(false);
    });
  });
});
