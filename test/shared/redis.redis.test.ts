// Connections made by createRedis on a single Redis: what `pipelined` does, and that a subscriber
// duplicate of a pipelined connection does not pipeline (SUBSCRIBE must not wait in a pipeline).
import { afterEach, describe, expect, it } from 'vitest';
import { closeRedis, createRedis, duplicateSubscriber, type Redis } from '../../src/shared/redis.js';
import { TEST_REDIS_URL } from '../helpers/redis.js';

describe('createRedis on a single Redis', () => {
  const clients: Redis[] = [];
  const keep = (client: Redis): Redis => {
    clients.push(client);
    return client;
  };

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => closeRedis(client)));
  });

  it('when pipelined › commands sent in one turn of the event loop wait in one pipeline, and all answer', async () => {
    const pipelined = keep(createRedis(TEST_REDIS_URL, { name: 'workspace-jobs-test', pipelined: true }));
    await pipelined.ping();

    const answers = Promise.all([pipelined.ping('a'), pipelined.ping('b'), pipelined.ping('c')]);
    expect(pipelined.autoPipelineQueueSize).toBe(3);
    expect(await answers).toEqual(['a', 'b', 'c']);
  });

  it('by default › each command goes out on its own', async () => {
    const plain = keep(createRedis(TEST_REDIS_URL, { name: 'workspace-jobs-test' }));
    await plain.ping();

    const answers = Promise.all([plain.ping('a'), plain.ping('b')]);
    expect(plain.autoPipelineQueueSize).toBe(0);
    expect(await answers).toEqual(['a', 'b']);
  });

  it('a subscriber duplicate of a pipelined connection does not pipeline', async () => {
    const pipelined = keep(createRedis(TEST_REDIS_URL, { name: 'workspace-jobs-test', pipelined: true }));
    const subscriber = keep(duplicateSubscriber(pipelined, 'workspace-jobs-test-sub') as Redis);

    expect(subscriber.options.enableAutoPipelining).toBe(false);
  });
});
