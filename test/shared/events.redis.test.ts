// Events on the real Redis: live order, gap-free replay under concurrent publishing, shared subscriptions,
// stream capping, reconnects.
import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  EventPublisher,
  EventSubscriber,
  StaleAttemptError,
  readChatEvents,
} from '../../src/shared/events.js';
import type { WorkspaceJobEvent } from '../../src/shared/contract.js';
import { closeRedis, type Redis } from '../../src/shared/redis.js';
import { draft, numberOf } from '../helpers/events.js';
import { deleteKeys, testRedis, uniquePrefix } from '../helpers/redis.js';

/** How long and how often the tests poll for deliveries. */
const POLL = { timeout: 5_000, interval: 10 };

const numbers = (events: WorkspaceJobEvent[]) => events.map(numberOf);

describe('events on the real Redis', () => {
  let prefix: string;
  const connections: Redis[] = [];
  const cleanups: (() => Promise<void>)[] = [];

  function connection(): Redis {
    const redis = testRedis();
    connections.push(redis);
    return redis;
  }

  function eventSubscriber(commands: Redis): { events: EventSubscriber; connection: Redis } {
    const subscriberConnection = connection();
    const events = new EventSubscriber({ subscriber: subscriberConnection, commands, prefix });
    cleanups.push(() => events.close());
    return { events, connection: subscriberConnection };
  }

  afterEach(async () => {
    vi.restoreAllMocks();
    for (const cleanup of cleanups.splice(0)) await cleanup();
    const cleaner = testRedis();
    await deleteKeys(cleaner, prefix);
    await closeRedis(cleaner);
    await Promise.all(connections.splice(0).map((redis) => closeRedis(redis)));
  });

  it('when the XADD of a result fails › throws and leaves no marker, so a retry can publish it', async () => {
    prefix = uniquePrefix('events');
    const redis = connection();
    const chatId = randomUUID();
    const publisher = new EventPublisher(redis, prefix);
    const result = draft(chatId, 0, {
      type: 'result',
      stage: 'failed',
      data: { kind: 'start-workspace', ok: false, error: 'x', code: 'internal', is_error: true },
    });
    // A key of the wrong type makes the XADD inside the publish script fail (WRONGTYPE).
    await redis.set(`${prefix}:events:chat:${chatId}:log`, 'not a stream');

    await expect(publisher.publish(result)).rejects.toThrow(/WRONGTYPE/);
    expect(await redis.exists(`${prefix}:result:job-1`)).toBe(0);
    await redis.del(`${prefix}:events:chat:${chatId}:log`);
    expect(await publisher.publish(result)).not.toBeNull();
    expect(await redis.ttl(`${prefix}:events:chat:${chatId}:log`)).toBeGreaterThan(0);
  });

  it('a subscriber gets live events in publish order, each with the seq the publisher returned', async () => {
    prefix = uniquePrefix('events');
    const redis = connection();
    const chatId = randomUUID();
    const publisher = new EventPublisher(redis, prefix);
    const received: WorkspaceJobEvent[] = [];
    await eventSubscriber(redis).events.subscribe(chatId, (e) => received.push(e));

    const published: WorkspaceJobEvent[] = [];
    for (let n = 0; n < 50; n++) published.push((await publisher.publish(draft(chatId, n)))!);

    await vi.waitFor(() => expect(received.length).toBeGreaterThanOrEqual(50), POLL);
    expect(received).toEqual(published);
    expect(await readChatEvents(redis, prefix, chatId, '0')).toEqual(published);
  });

  it('since replays without gaps or duplicates while events are published during the subscribe', async () => {
    prefix = uniquePrefix('events');
    const redis = connection();
    const publisherConnection = connection();
    const chatId = randomUUID();
    const publisher = new EventPublisher(publisherConnection, prefix);
    // 600 before: the replay spans more than one XRANGE page.
    const before: WorkspaceJobEvent[] = [];
    for (let n = 0; n < 600; n++) before.push((await publisher.publish(draft(chatId, n)))!);
    const since = before[99]!.seq;

    let published = 0;
    const during = (async () => {
      for (let n = 600; n < 800; n++) {
        await publisher.publish(draft(chatId, n));
        published++;
      }
    })();
    await vi.waitFor(() => expect(published).toBeGreaterThanOrEqual(20), POLL); // publishing is under way
    const received: WorkspaceJobEvent[] = [];
    await eventSubscriber(redis).events.subscribe(chatId, (e) => received.push(e), { since });
    expect(published).toBeLessThan(200); // the subscribe really overlapped the publishing
    await during;

    // A witness published last: once it is in, any stray duplicate of an earlier event would be too.
    await publisher.publish(draft(chatId, 800));
    await vi.waitFor(() => expect(numbers(received)).toContain(800), POLL);
    expect(numbers(received)).toEqual(Array.from({ length: 701 }, (_, i) => i + 100));
    expect(received.map((e) => e.seq)).toEqual(
      (await readChatEvents(redis, prefix, chatId, since)).map((e) => e.seq),
    );
  });

  it('an event published just after the replay read reaches the subscriber through the live buffer', async () => {
    prefix = uniquePrefix('events');
    const redis = connection();
    const chatId = randomUUID();
    const publisher = new EventPublisher(connection(), prefix);
    await publisher.publish(draft(chatId, 0));
    const { events, connection: subscriberConnection } = eventSubscriber(redis);
    let liveMessages = 0;
    subscriberConnection.on('message', () => liveMessages++); // after the subscriber's own listener
    // Widen the window between "XRANGE has read the stream" and "the subscription is live" on purpose.
    const xrange = redis.xrange.bind(redis);
    let injected = false;
    vi.spyOn(redis, 'xrange').mockImplementation((async (...args: Parameters<typeof xrange>) => {
      const page = await xrange(...args);
      if (!injected) {
        injected = true;
        await publisher.publish(draft(chatId, 1)); // not in `page`: only pub/sub can deliver it
        // The subscriber has it in its live buffer before the replay goes on.
        await expect.poll(() => liveMessages, POLL).toBe(1);
      }
      return page;
    }) as typeof xrange);
    const received: WorkspaceJobEvent[] = [];

    await events.subscribe(chatId, (e) => received.push(e), { since: '0' });
    await publisher.publish(draft(chatId, 2));

    await vi.waitFor(() => expect(received.length).toBeGreaterThanOrEqual(3), POLL);
    expect(numbers(received)).toEqual([0, 1, 2]);
  });

  it("since '0' replays everything retained", async () => {
    prefix = uniquePrefix('events');
    const redis = connection();
    const chatId = randomUUID();
    const publisher = new EventPublisher(redis, prefix);
    for (let n = 0; n < 5; n++) await publisher.publish(draft(chatId, n));
    const received: WorkspaceJobEvent[] = [];

    await eventSubscriber(redis).events.subscribe(chatId, (e) => received.push(e), { since: '0' });

    expect(numbers(received)).toEqual([0, 1, 2, 3, 4]);
  });

  it('two subscriptions on one chat share one SUBSCRIBE; each gets every event; the last one out unsubscribes', async () => {
    prefix = uniquePrefix('events');
    const redis = connection();
    const chatId = randomUUID();
    const channel = `${prefix}:events:chat:${chatId}`;
    const publisher = new EventPublisher(redis, prefix);
    const { events } = eventSubscriber(redis);
    const first: WorkspaceJobEvent[] = [];
    const second: WorkspaceJobEvent[] = [];
    const numsub = async () => ((await redis.pubsub('NUMSUB', channel)) as [string, number])[1];

    const [unsubscribeFirst, unsubscribeSecond] = await Promise.all([
      events.subscribe(chatId, (e) => first.push(e)),
      events.subscribe(chatId, (e) => second.push(e), { since: '0' }),
    ]);
    expect(await numsub()).toBe(1);
    for (let n = 0; n < 10; n++) await publisher.publish(draft(chatId, n));
    await vi.waitFor(() => {
      expect(first.length).toBeGreaterThanOrEqual(10);
      expect(second.length).toBeGreaterThanOrEqual(10);
    }, POLL);

    await unsubscribeFirst();
    expect(await numsub()).toBe(1);
    await publisher.publish(draft(chatId, 10));
    await vi.waitFor(() => expect(second.length).toBeGreaterThanOrEqual(11), POLL);
    expect(numbers(first)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(numbers(second)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);

    await unsubscribeSecond();
    expect(await numsub()).toBe(0);
  });

  it('unsubscribe stops delivery', async () => {
    prefix = uniquePrefix('events');
    const redis = connection();
    const chatId = randomUUID();
    const publisher = new EventPublisher(redis, prefix);
    const { events } = eventSubscriber(redis);
    const received: WorkspaceJobEvent[] = [];
    const unsubscribe = await events.subscribe(chatId, (e) => received.push(e));
    await publisher.publish(draft(chatId, 0));
    await vi.waitFor(() => expect(received).toHaveLength(1), POLL);

    await unsubscribe();
    const witness: WorkspaceJobEvent[] = [];
    await events.subscribe(chatId, (e) => witness.push(e));
    await publisher.publish(draft(chatId, 1));
    await vi.waitFor(() => expect(witness).toHaveLength(1), POLL);

    expect(numbers(received)).toEqual([0]);
  });

  it('publishes on the workspace channel too, with the same envelope', async () => {
    prefix = uniquePrefix('events');
    const redis = connection();
    const listener = connection();
    const chatId = randomUUID();
    const workspaceId = randomUUID();
    const messages: string[] = [];
    listener.on('message', (_channel: string, message: string) => messages.push(message));
    await listener.subscribe(`${prefix}:events:workspace:${workspaceId}`);

    const event = await new EventPublisher(redis, prefix).publish(draft(chatId, 0, { workspaceId }));

    await vi.waitFor(() => expect(messages).toHaveLength(1), POLL);
    expect(JSON.parse(messages[0]!)).toEqual(event);
  });

  it('caps the stream at about maxLen entries and sets its TTL', async () => {
    prefix = uniquePrefix('events');
    const redis = connection();
    const chatId = randomUUID();
    const key = `${prefix}:events:chat:${chatId}:log`;
    const publisher = new EventPublisher(redis, prefix, { maxLen: 10 });

    for (let n = 0; n < 500; n++) await publisher.publish(draft(chatId, n));

    const length = await redis.xlen(key);
    expect(length).toBeGreaterThanOrEqual(10);
    // `~` trims whole stream nodes (stream-node-max-entries, 100 by default), so "about" 10.
    expect(length).toBeLessThan(500);
    const retained = await readChatEvents(redis, prefix, chatId, '0');
    expect(numberOf(retained.at(-1)!)).toBe(499);
    const ttl = await redis.ttl(key);
    expect(ttl).toBeGreaterThan(86_000);
    expect(ttl).toBeLessThanOrEqual(86_400);
  });

  it('under concurrent publishers › a job result is published exactly once', async () => {
    prefix = uniquePrefix('events');
    const chatId = randomUUID();
    const publishers = Array.from({ length: 4 }, () => new EventPublisher(connection(), prefix));
    const result = draft(chatId, 0, {
      type: 'result',
      stage: 'completed',
      data: { kind: 'start-workspace', ok: true, started: true, workspace_name: 'dev' },
    });

    const outcomes = await Promise.all(
      Array.from({ length: 20 }, (_, i) => publishers[i % 4]!.publish(result)),
    );

    expect(outcomes.filter((e) => e !== null)).toHaveLength(1);
    expect(await readChatEvents(connection(), prefix, chatId, '0')).toHaveLength(1);
  });

  it('a published result is kept with its marker › publishedResult returns that very event', async () => {
    prefix = uniquePrefix('events');
    const chatId = randomUUID();
    const publisher = new EventPublisher(connection(), prefix);
    expect(await publisher.publishedResult('job-1')).toBeNull();
    const result = draft(chatId, 0, {
      type: 'result',
      stage: 'completed',
      data: { kind: 'start-workspace', ok: true, started: true, workspace_name: 'dev', build_id: 'b' },
    });

    const published = await publisher.publish(result);
    expect(
      await publisher.publish({
        ...result,
        data: { kind: 'start-workspace', ok: true, started: true, workspace_name: 'dev', no_build: true },
      }),
    ).toBeNull();

    expect(published).not.toBeNull();
    expect(await publisher.publishedResult('job-1')).toEqual(published);
  });

  describe('with the job owner given (its BullMQ lock key and token)', () => {
    const lockKey = () => `${prefix}:workspaces:job-1:lock`;

    it('publishes while the token holds the lock', async () => {
      prefix = uniquePrefix('events');
      const redis = connection();
      const chatId = randomUUID();
      await redis.set(lockKey(), 'token-a', 'PX', 10_000);

      const event = await new EventPublisher(redis, prefix).publish(draft(chatId, 1), {
        owner: { lockKey: lockKey(), token: 'token-a' },
      });

      expect(event).not.toBeNull();
      expect(numbers(await readChatEvents(redis, prefix, chatId, '0'))).toEqual([1]);
    });

    it('when another token holds the lock, or none does › throws a StaleAttemptError and writes nothing', async () => {
      prefix = uniquePrefix('events');
      const redis = connection();
      const chatId = randomUUID();
      const publisher = new EventPublisher(redis, prefix);
      const owner = { lockKey: lockKey(), token: 'token-a' };
      const result = draft(chatId, 2, {
        type: 'result',
        stage: 'completed',
        data: { kind: 'start-workspace', ok: true, started: true, workspace_name: 'dev' },
      });

      await redis.set(lockKey(), 'token-b', 'PX', 10_000);
      await expect(publisher.publish(draft(chatId, 1), { owner })).rejects.toBeInstanceOf(StaleAttemptError);
      await redis.del(lockKey());
      await expect(publisher.publish(result, { owner })).rejects.toBeInstanceOf(StaleAttemptError);

      expect(await readChatEvents(redis, prefix, chatId, '0')).toEqual([]);
      expect(await publisher.publishedResult('job-1')).toBeNull();
    });

    describe("with the job's record given", () => {
      const jobKey = () => `${prefix}:workspaces:job-1`;

      it("writes the job's progress and log entry with the event, the log trimmed to keepLogs", async () => {
        prefix = uniquePrefix('events');
        const redis = connection();
        const chatId = randomUUID();
        const publisher = new EventPublisher(redis, prefix);
        const owner = { lockKey: lockKey(), token: 'token-a' };
        await redis.set(lockKey(), 'token-a', 'PX', 10_000);
        await redis.hset(jobKey(), 'name', 'start-workspace');

        for (const n of [1, 2, 3]) {
          const record = {
            jobKey: jobKey(),
            progress: { stage: `stage ${n}` },
            log: `entry ${n}`,
            keepLogs: 2,
          };
          await publisher.publish(draft(chatId, n), { owner, record });
        }

        expect(numbers(await readChatEvents(redis, prefix, chatId, '0'))).toEqual([1, 2, 3]);
        expect(JSON.parse((await redis.hget(jobKey(), 'progress'))!)).toEqual({ stage: 'stage 3' });
        expect(await redis.lrange(`${jobKey()}:logs`, 0, -1)).toEqual(['entry 2', 'entry 3']);
      });

      it('when another token holds the lock › writes neither the progress nor the log', async () => {
        prefix = uniquePrefix('events');
        const redis = connection();
        const publisher = new EventPublisher(redis, prefix);
        const owner = { lockKey: lockKey(), token: 'token-a' };
        await redis.set(lockKey(), 'token-b', 'PX', 10_000);
        await redis.hset(jobKey(), 'progress', '"theirs"');
        const record = { jobKey: jobKey(), progress: 'stale', log: 'stale entry' };

        await expect(publisher.publish(draft(randomUUID(), 1), { owner, record })).rejects.toBeInstanceOf(
          StaleAttemptError,
        );
        await expect(publisher.recordProgress(jobKey(), 'stale', owner)).rejects.toBeInstanceOf(
          StaleAttemptError,
        );

        expect(await redis.hget(jobKey(), 'progress')).toBe('"theirs"');
        expect(await redis.exists(`${jobKey()}:logs`)).toBe(0);
      });

      it('when the job is gone › recordProgress answers false and creates nothing', async () => {
        prefix = uniquePrefix('events');
        const redis = connection();
        const publisher = new EventPublisher(redis, prefix);

        expect(await publisher.recordProgress(jobKey(), { stage: 'checking' })).toBe(false);
        expect(await publisher.recordProgress(jobKey(), { stage: 'checking' }, undefined)).toBe(false);
        await redis.hset(jobKey(), 'name', 'start-workspace');
        expect(await publisher.recordProgress(jobKey(), { stage: 'checking' })).toBe(true);
        expect(JSON.parse((await redis.hget(jobKey(), 'progress'))!)).toEqual({ stage: 'checking' });
      });
    });
  });

  describe('with the job leaving (its result)', () => {
    const deduplicationKey = () => `${prefix}:workspaces:de:start-workspace:ws-1`;
    const orderKey = (chatId: string) => `${prefix}:order:chat:${chatId}`;
    const result = (chatId: string) =>
      draft(chatId, 1, {
        type: 'result',
        stage: 'completed',
        data: { kind: 'start-workspace', ok: true, started: true, workspace_name: 'dev' },
      });

    it('frees the deduplication id while it names the job and leaves the chat order, also when the result is out', async () => {
      prefix = uniquePrefix('events');
      const redis = connection();
      const chatId = randomUUID();
      const publisher = new EventPublisher(redis, prefix);
      const leaving = { deduplicationKey: deduplicationKey() };
      await redis.set(deduplicationKey(), 'job-1');
      await redis.zadd(orderKey(chatId), 1, 'job-1', 2, 'job-2');

      expect(await publisher.publish(result(chatId), { leaving })).not.toBeNull();
      expect(await redis.exists(deduplicationKey())).toBe(0);
      expect(await redis.zrange(orderKey(chatId), 0, -1)).toEqual(['job-2']);

      // A re-run that finds the result out leaves too; a deduplication id naming another job stays.
      await redis.zadd(orderKey(chatId), 1, 'job-1');
      await redis.set(deduplicationKey(), 'job-3');
      expect(await publisher.publish(result(chatId), { leaving })).toBeNull();
      expect(await redis.get(deduplicationKey())).toBe('job-3');
      expect(await redis.zrange(orderKey(chatId), 0, -1)).toEqual(['job-2']);
      expect(await readChatEvents(redis, prefix, chatId, '0')).toHaveLength(1);
    });

    it('when another token holds the job › frees nothing', async () => {
      prefix = uniquePrefix('events');
      const redis = connection();
      const chatId = randomUUID();
      const lockKey = `${prefix}:workspaces:job-1:lock`;
      await redis.set(lockKey, 'token-b', 'PX', 10_000);
      await redis.set(deduplicationKey(), 'job-1');
      await redis.zadd(orderKey(chatId), 1, 'job-1');

      await expect(
        new EventPublisher(redis, prefix).publish(result(chatId), {
          owner: { lockKey, token: 'token-a' },
          leaving: { deduplicationKey: deduplicationKey() },
        }),
      ).rejects.toBeInstanceOf(StaleAttemptError);
      expect(await redis.get(deduplicationKey())).toBe('job-1');
      expect(await redis.zrange(orderKey(chatId), 0, -1)).toEqual(['job-1']);
    });
  });

  it('after the subscriber connection drops and comes back › events published meanwhile are delivered once', async () => {
    prefix = uniquePrefix('events');
    const redis = connection();
    const chatId = randomUUID();
    const publisher = new EventPublisher(redis, prefix);
    const { events, connection: subscriberConnection } = eventSubscriber(redis);
    const live: WorkspaceJobEvent[] = [];
    const replaying: WorkspaceJobEvent[] = [];
    await events.subscribe(chatId, (e) => live.push(e));
    await events.subscribe(chatId, (e) => replaying.push(e), { since: '0' });
    await publisher.publish(draft(chatId, 0));
    await vi.waitFor(() => {
      expect(live).toHaveLength(1);
      expect(replaying).toHaveLength(1);
    }, POLL);

    subscriberConnection.disconnect();
    await expect.poll(() => subscriberConnection.status, POLL).toBe('end');
    for (let n = 1; n <= 3; n++) await publisher.publish(draft(chatId, n)); // nobody is listening
    await subscriberConnection.connect();
    await vi.waitFor(() => {
      expect(live.length).toBeGreaterThanOrEqual(4);
      expect(replaying.length).toBeGreaterThanOrEqual(4);
    }, POLL);
    await publisher.publish(draft(chatId, 4));

    await vi.waitFor(() => {
      expect(live.length).toBeGreaterThanOrEqual(5);
      expect(replaying.length).toBeGreaterThanOrEqual(5);
    }, POLL);
    // A witness published last: once it is in, any stray duplicate of an earlier event would be too.
    await publisher.publish(draft(chatId, 5));
    await vi.waitFor(() => {
      expect(numbers(live)).toContain(5);
      expect(numbers(replaying)).toContain(5);
    }, POLL);
    expect(numbers(live)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(numbers(replaying)).toEqual([0, 1, 2, 3, 4, 5]);
  });
});
