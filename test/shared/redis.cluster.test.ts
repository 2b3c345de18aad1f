// Cluster connections made by createRedis (the `cluster` test project): their options reach every node,
// the subscriber duplicate stays a cluster client, and an unreachable cluster is logged once, without its
// password.
import { randomUUID } from 'node:crypto';
import { pino } from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  closeRedis,
  connectionNameOf,
  createRedis,
  duplicateSubscriber,
  isCluster,
  type RedisClient,
} from '../../src/shared/redis.js';
import { testClient } from '../helpers/redis.js';

describe('createRedis with cluster: true', () => {
  const clients: RedisClient[] = [];
  const keep = <T extends RedisClient>(client: T): T => {
    clients.push(client);
    return client;
  };

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => closeRedis(client)));
  });

  it("gives BullMQ's blocking connection retry-forever node options, and names every node connection", async () => {
    const blocking = keep(testClient({ blocking: true, name: 'workspace-jobs-test-blocking' }));
    expect(isCluster(blocking)).toBe(true);
    if (!isCluster(blocking)) return;
    expect(blocking.options.redisOptions?.maxRetriesPerRequest).toBeNull();
    await blocking.ping();
    const names = await Promise.all(
      blocking.nodes('master').map(async (node) => (await node.client('GETNAME')) as string | null),
    );
    expect(names.length).toBeGreaterThanOrEqual(3);
    expect(names.every((name) => name === 'workspace-jobs-test-blocking')).toBe(true);
  });

  it('duplicates a subscriber that is a cluster client of its own, with subscriber options', async () => {
    const commands = keep(testClient({ name: 'workspace-jobs-test' }));
    const subscriber = keep(duplicateSubscriber(commands, 'workspace-jobs-test-sub'));
    expect(isCluster(subscriber)).toBe(true);
    expect(subscriber).not.toBe(commands);
    expect(connectionNameOf(subscriber)).toBe('workspace-jobs-test-sub');

    const channel = `wsjtest-${randomUUID()}`;
    const received: string[] = [];
    subscriber.on('message', (name: string, message: string) => name === channel && received.push(message));
    await subscriber.subscribe(channel);
    await commands.publish(channel, 'hello');
    await vi.waitFor(() => expect(received).toEqual(['hello']), { timeout: 5_000 });
  });

  it('when pipelined › the cluster client pipelines commands sent in one turn, and all answer', async () => {
    const pipelined = keep(testClient({ pipelined: true }));
    expect(isCluster(pipelined)).toBe(true);
    if (!isCluster(pipelined)) return;
    await pipelined.ping();
    const key = `{wsjtest}:${randomUUID()}`;

    const answers = Promise.all([pipelined.set(key, '1'), pipelined.incr(key), pipelined.get(key)]);
    expect(pipelined.autoPipelineQueueSize).toBe(3);
    expect(await answers).toEqual(['OK', 2, '2']);
    await pipelined.del(key);
  });

  it('logs an unreachable cluster once, naming its seeds without the password', async () => {
    const lines: { msg: string; url?: string }[] = [];
    const log = pino({ level: 'warn' }, { write: (line: string) => void lines.push(JSON.parse(line)) });
    const down = keep(
      createRedis('redis://:s3cret@127.0.0.1:1,redis://127.0.0.1:2', {
        cluster: true,
        name: 'workspace-jobs-test-down',
        log,
      }),
    );
    let attempts = 0;
    down.on('reconnecting', () => attempts++);

    // Three failed reconnects, still one line.
    await vi.waitFor(() => expect(attempts).toBeGreaterThanOrEqual(3), { timeout: 15_000 });
    expect(lines).toHaveLength(1);
    expect(lines[0]!.url).toMatch(/^redis:\/\/:\*\*\*@127\.0\.0\.1:1\/?,redis:\/\/127\.0\.0\.1:2\/?$/);
    expect(JSON.stringify(lines)).not.toContain('s3cret');
  });
});
