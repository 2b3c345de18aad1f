// The chat lock on a real Redis Cluster (the `cluster` test project), made as the worker makes it without
// LOCK_REDIS_URLS: one fail-fast Cluster client as the lock's single node. redis-semaphore's scripts see
// their one key, which is in the prefix's slot.
import { randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ChatLocks, LockLostError, type HeldLock, type LockOperation } from '../../src/shared/lock.js';
import { closeRedis, type RedisClient } from '../../src/shared/redis.js';
import { deleteKeys, testClient, uniquePrefix } from '../helpers/redis.js';

/** A fail-fast client has no offline queue: commands wait for the cluster to be ready. */
async function readyClient(): Promise<RedisClient> {
  const client = testClient({ name: 'workspace-jobs-test-lock', failFast: true });
  if (client.status !== 'ready') await new Promise((resolve) => client.once('ready', resolve));
  return client;
}

describe('the chat lock on a Redis Cluster', () => {
  let prefix: string;
  let clients: RedisClient[];
  const held: HeldLock[] = [];

  beforeEach(async () => {
    prefix = uniquePrefix('lock');
    clients = await Promise.all([readyClient(), readyClient()]);
  });

  afterEach(async () => {
    await Promise.all(held.splice(0).map((lock) => lock.release()));
    await deleteKeys(clients[0]!, prefix);
    await Promise.all(clients.map((client) => closeRedis(client)));
  });

  const keep = (lock: HeldLock | null) => {
    if (lock) held.push(lock);
    return lock;
  };

  it('gives a chat to exactly one of 20 concurrent callers on two clients, under the contract key', async () => {
    const chatId = randomUUID();
    const attempts = Array.from({ length: 20 }, (_, i) =>
      new ChatLocks([clients[i % 2]!], prefix).tryAcquire(chatId).then(keep),
    );

    const winners = (await Promise.all(attempts)).filter((lock) => lock !== null);

    expect(winners).toHaveLength(1);
    const key = `${prefix}:lock:chat:${chatId}`;
    expect(winners[0]!.resource).toBe(key);
    expect(await clients[0]!.pttl(key)).toBeGreaterThan(0);
    expect(await clients[0]!.cluster('KEYSLOT', key)).toBe(
      await clients[0]!.cluster('KEYSLOT', `${prefix}:x`),
    );
  });

  it('keeps the lock past its TTL by refreshing it, and a release frees it for the next holder', async () => {
    const chatId = randomUUID();
    const refreshes: LockOperation[] = [];
    const options = { lockTimeoutMs: 600, refreshIntervalMs: 150 };
    const locks = new ChatLocks([clients[0]!], prefix, {
      ...options,
      onOperation: (operation) => void (operation === 'refresh' && refreshes.push(operation)),
    });
    const other = new ChatLocks([clients[1]!], prefix, options);
    const lock = keep(await locks.tryAcquire(chatId))!;

    // Six refreshes take longer than the TTL: without them the key would be gone.
    await vi.waitFor(() => expect(refreshes.length).toBeGreaterThanOrEqual(6), { timeout: 10_000 });
    expect(lock.signal.aborted).toBe(false);
    expect(await other.tryAcquire(chatId)).toBeNull();

    await lock.release();
    expect(keep(await other.tryAcquire(chatId))).not.toBeNull();
  });

  it("keeps many chats' locks past their TTL by one script for all of them (one slot: the prefix's hash tag)", async () => {
    let refreshes = 0;
    const locks = new ChatLocks([clients[0]!], prefix, {
      lockTimeoutMs: 600,
      refreshIntervalMs: 150,
      onOperation: (operation) => void (operation === 'refresh' && refreshes++),
    });
    const many = await Promise.all(Array.from({ length: 20 }, () => locks.tryAcquire(randomUUID())));
    for (const lock of many) expect(keep(lock)).not.toBeNull();

    // Six refreshes of each take longer than the TTL.
    await vi.waitFor(() => expect(refreshes).toBeGreaterThanOrEqual(20 * 6), { timeout: 10_000 });
    expect(many.filter((lock) => lock!.signal.aborted)).toEqual([]);
    const ttls = await Promise.all(many.map((lock) => clients[1]!.pttl(lock!.resource)));
    expect(ttls.every((ttl) => ttl > 0)).toBe(true);
  });

  it('aborts the holder with a LockLostError when its key is removed', async () => {
    const lock = keep(
      await new ChatLocks([clients[0]!], prefix, { lockTimeoutMs: 2_000, refreshIntervalMs: 100 }).tryAcquire(
        randomUUID(),
      ),
    )!;

    await clients[1]!.del(lock.resource);

    await vi.waitFor(() => expect(lock.signal.reason).toBeInstanceOf(LockLostError), { timeout: 5_000 });
  });
});
