// The worker's CancelListener on a real Redis: a broadcast aborts a watched attempt with the marker's
// request; a marker made before the watch aborts it at once; and, pub/sub being at-most-once, a marker
// whose broadcast never arrived is read again for every watched job once the subscriber reconnects.
import { randomBytes, randomUUID } from 'node:crypto';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CancelRequests } from '../../src/shared/cancel-requests.js';
import { redisKeys } from '../../src/shared/keys.js';
import { closeRedis, duplicateSubscriber, type Redis, type RedisClient } from '../../src/shared/redis.js';
import { CancelListener, type CancelWatch } from '../../src/worker/cancel-listener.js';
import { JobCancelRequestedError } from '../../src/worker/cancel-requested.js';
import { deleteKeys, testRedis, uniquePrefix } from '../helpers/redis.js';

describe('CancelListener', () => {
  let prefix: string;
  let redis: Redis;
  let subscriberName: string;
  let subscriber: RedisClient;
  let requests: CancelRequests;
  let listener: CancelListener;
  const watches: CancelWatch[] = [];
  let logs: Record<string, unknown>[];

  beforeEach(async () => {
    prefix = uniquePrefix('cancel-listener');
    redis = testRedis();
    subscriberName = `wsjtest-cancel-subscriber-${randomBytes(4).toString('hex')}`;
    subscriber = duplicateSubscriber(redis, subscriberName);
    requests = new CancelRequests(redis, prefix);
    logs = [];
    const log = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line)) });
    listener = new CancelListener(subscriber, requests, prefix, log);
    await listener.start();
  });

  afterEach(async () => {
    for (const watch of watches.splice(0)) watch.done();
    await listener.close();
    await closeRedis(subscriber);
    await deleteKeys(redis, prefix);
    await closeRedis(redis);
  });

  const watch = async (jobId: string) => {
    const watched = await listener.watch(jobId);
    watches.push(watched);
    return watched;
  };

  /** The listener is subscribed to the cancel channel (again). */
  const expectSubscribed = async () =>
    expect.poll(async () => (await redis.pubsub('NUMSUB', redisKeys(prefix).cancelChannel))[1]).toBe(1);

  it('when a cancel is broadcast for a watched job › aborts it with the request, and only it', async () => {
    const [jobId, otherId] = [randomUUID(), randomUUID()];
    const [watched, other] = [await watch(jobId), await watch(otherId)];

    const request = await requests.mark(jobId, 'user pressed stop');
    await requests.broadcast(jobId);

    await expect.poll(() => watched.signal.aborted).toBe(true);
    expect(watched.signal.reason).toBeInstanceOf(JobCancelRequestedError);
    expect((watched.signal.reason as JobCancelRequestedError).request).toEqual(request);
    expect(other.signal.aborted).toBe(false);
  });

  it('when a cancel is broadcast twice › logs the abort once, with who asked and when', async () => {
    const jobId = randomUUID();
    const watched = await watch(jobId);

    const request = await requests.mark(jobId, 'user pressed stop');
    await requests.broadcast(jobId);
    await requests.broadcast(jobId);

    await expect.poll(() => watched.signal.aborted).toBe(true);
    // The second broadcast's marker read is answered before a later job's, on the same connection.
    const laterId = randomUUID();
    const later = await watch(laterId);
    await requests.mark(laterId);
    await requests.broadcast(laterId);
    await expect.poll(() => later.signal.aborted).toBe(true);
    const aborts = logs.filter((line) => line.msg === 'cancel requested for a job running here; aborting it');
    expect(aborts.filter((line) => line.jobId === jobId)).toEqual([
      expect.objectContaining({ jobId, reason: 'user pressed stop', requestedAt: request.at }),
    ]);
  });

  it('when the job was marked before it is watched › the watch starts aborted', async () => {
    const jobId = randomUUID();
    await requests.mark(jobId);

    const watched = await watch(jobId);

    expect(watched.signal.aborted).toBe(true);
  });

  describe('when the broadcast was lost while the subscriber was away', () => {
    it('reads the marker of every watched job once it is back, and aborts the marked one', async () => {
      const [jobId, otherId] = [randomUUID(), randomUUID()];
      const [watched, other] = [await watch(jobId), await watch(otherId)];
      // Marked, its broadcast lost: nothing tells the listener yet.
      await requests.mark(jobId);
      await expectSubscribed();
      expect(watched.signal.aborted).toBe(false);

      // The server drops the subscriber's connection; ioredis reconnects and resubscribes.
      const clients = await redis.client('LIST');
      const id = /id=(\d+) .*name=(\S+)/
        .exec(
          String(clients)
            .split('\n')
            .find((line) => line.includes(`name=${subscriberName} `)) ?? '',
        )
        ?.at(1);
      expect(id, 'the subscriber connection in CLIENT LIST').toBeDefined();
      await redis.client('KILL', 'ID', id!);

      await expect.poll(() => watched.signal.aborted, { timeout: 10_000 }).toBe(true);
      expect(other.signal.aborted).toBe(false);
      await expectSubscribed();
    });
  });
});
