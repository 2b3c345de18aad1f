// The event publisher and subscriber on ioredis-mock. Stream capping, replay paging and concurrency are
// tested on the real Redis in events.redis.test.ts (ioredis-mock's XADD MAXLEN and XRANGE ids are too crude).
import { randomBytes, randomUUID } from 'node:crypto';
import RedisMock from 'ioredis-mock';
import type { Redis } from 'ioredis';
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  EventPublisher,
  EventSubscriber,
  compareSeq,
  readChatEvents,
  type Unsubscribe,
} from '../../src/shared/events.js';
import type { EventDraft, WorkspaceJobEvent } from '../../src/shared/contract.js';
import type { Logger } from '../../src/shared/logger.js';
import { ValidationError } from '../../src/shared/schemas.js';

function uniquePrefix(): string {
  return `wsjmock-events-${randomBytes(5).toString('hex')}`;
}

/** How long and how often the tests poll for deliveries. */
const POLL = { timeout: 2_000, interval: 5 };

function draft(chatId: string, overrides: Partial<EventDraft> = {}): EventDraft {
  return {
    type: 'progress',
    stage: 'build_running',
    job: { id: '42', name: 'start-workspace', attempt: 1 },
    chatId,
    message: 'Build #3 is running',
    ...overrides,
  } as EventDraft;
}

function fakeLog() {
  const log = { warn: vi.fn(), error: vi.fn(), info: vi.fn(), debug: vi.fn() };
  return { log: log as unknown as Logger, warn: log.warn, error: log.error };
}

describe('events on ioredis-mock', () => {
  const clients: Redis[] = [];
  const cleanups: (() => Promise<void>)[] = [];

  function client(): Redis {
    const redis = new RedisMock();
    clients.push(redis);
    return redis;
  }

  /** Raw messages received on `channel` by a separate subscriber connection. */
  async function listen(channel: string): Promise<string[]> {
    const sub = client();
    const messages: string[] = [];
    sub.on('message', (name: string, message: string) => {
      if (name === channel) messages.push(message);
    });
    await sub.subscribe(channel);
    return messages;
  }

  function subscriber(commands: Redis, prefix: string, log?: Logger): EventSubscriber {
    const events = new EventSubscriber({ subscriber: client(), commands, prefix, log });
    cleanups.push(() => events.close());
    return events;
  }

  afterEach(async () => {
    vi.restoreAllMocks();
    for (const cleanup of cleanups.splice(0)) await cleanup();
    for (const redis of clients.splice(0)) redis.disconnect();
    // Every mock connection shares one data set; wipe it with one that is not in subscriber mode.
    const cleaner = new RedisMock();
    await cleaner.flushall();
    cleaner.disconnect();
  });

  describe('EventPublisher', () => {
    it('appends the envelope to the chat stream and publishes it on the chat channel with seq = the entry id', async () => {
      const redis = client();
      const prefix = uniquePrefix();
      const chatId = randomUUID();
      const live = await listen(`${prefix}:events:chat:${chatId}`);

      const event = await new EventPublisher(redis, prefix).publish(
        draft(chatId, { data: { build_number: 3 } }),
      );

      const entries = await redis.xrange(`${prefix}:events:chat:${chatId}:log`, '-', '+');
      expect(entries).toHaveLength(1);
      const [id, fields] = entries[0]!;
      expect(event).not.toBeNull();
      expect(event!.seq).toBe(id);
      expect(fields[0]).toBe('event');
      expect(JSON.parse(fields[1]!)).toEqual({ ...event, seq: undefined });
      await vi.waitFor(() => expect(live).toHaveLength(1), POLL);
      expect(JSON.parse(live[0]!)).toEqual(event);
    });

    it('builds the v1 envelope in the contract field order', async () => {
      const before = Date.now();
      const event = await new EventPublisher(client(), uniquePrefix()).publish(
        draft('chat-1', { workspaceId: 'ws-1', data: { x: 1 } }),
      );

      expect(Object.keys(event!)).toEqual([
        'v',
        'seq',
        'type',
        'stage',
        'job',
        'chatId',
        'workspaceId',
        'at',
        'message',
        'data',
      ]);
      expect(event).toMatchObject({
        v: 1,
        type: 'progress',
        stage: 'build_running',
        job: { id: '42', name: 'start-workspace', attempt: 1 },
        chatId: 'chat-1',
        workspaceId: 'ws-1',
        message: 'Build #3 is running',
        data: { x: 1 },
      });
      expect(Date.parse(event!.at)).toBeGreaterThanOrEqual(before - 1);
    });

    it('with a workspaceId › also publishes on the workspace channel; without › only on the chat channel', async () => {
      const redis = client();
      const prefix = uniquePrefix();
      const chatId = randomUUID();
      const workspaceId = randomUUID();
      const workspace = await listen(`${prefix}:events:workspace:${workspaceId}`);
      const chat = await listen(`${prefix}:events:chat:${chatId}`);
      const publisher = new EventPublisher(redis, prefix);

      await publisher.publish(draft(chatId));
      const second = await publisher.publish(draft(chatId, { workspaceId, stage: 'build_succeeded' }));

      await vi.waitFor(() => {
        expect(chat).toHaveLength(2);
        expect(workspace).toHaveLength(1);
      }, POLL);
      expect(JSON.parse(workspace[0]!)).toEqual(second);
    });

    it('sets the stream to expire after ttlSeconds on every write', async () => {
      const redis = client();
      const prefix = uniquePrefix();
      const chatId = randomUUID();
      const key = `${prefix}:events:chat:${chatId}:log`;

      await new EventPublisher(redis, prefix).publish(draft(chatId));
      const ttl = await redis.ttl(key);
      expect(ttl).toBeGreaterThan(86_000);
      expect(ttl).toBeLessThanOrEqual(86_400);

      await redis.persist(key);
      await new EventPublisher(redis, prefix, { ttlSeconds: 60 }).publish(draft(chatId));
      expect(await redis.ttl(key)).toBe(60);
    });

    it('publishes a job result once: a second result for the same job returns null and writes nothing', async () => {
      const redis = client();
      const prefix = uniquePrefix();
      const chatId = randomUUID();
      const live = await listen(`${prefix}:events:chat:${chatId}`);
      const publisher = new EventPublisher(redis, prefix);
      const result = draft(chatId, {
        type: 'result',
        stage: 'completed',
        data: { kind: 'start-workspace', ok: true, started: true, workspace_name: 'dev' },
      });

      const first = await publisher.publish(result);
      const second = await publisher.publish({
        ...result,
        stage: 'failed',
        job: { ...result.job, attempt: 2 },
      } as EventDraft);

      expect(first).not.toBeNull();
      expect(second).toBeNull();
      expect(await readChatEvents(redis, prefix, chatId, '0')).toEqual([first]);
      await vi.waitFor(() => expect(live.length).toBeGreaterThanOrEqual(1), POLL);
      expect(live).toHaveLength(1);
      const markerTtl = await redis.ttl(`${prefix}:result:42`);
      expect(markerTtl).toBeGreaterThan(0);
      expect(markerTtl).toBeLessThanOrEqual(86_400);
      // Results of other jobs, and progress of this one, are not affected.
      expect(await publisher.publish({ ...result, job: { ...result.job, id: '43' } })).not.toBeNull();
      expect(await publisher.publish(draft(chatId))).not.toBeNull();
    });

    it('refuses an event that subscribers would reject, writing nothing', async () => {
      const redis = client();
      const prefix = uniquePrefix();
      const chatId = randomUUID();
      const bad = draft(chatId, { stage: 'nonsense' as EventDraft['stage'] });

      await expect(new EventPublisher(redis, prefix).publish(bad)).rejects.toThrow(ValidationError);
      expect(await redis.exists(`${prefix}:events:chat:${chatId}:log`)).toBe(0);
    });

    it('with validate off › writes the event as built, unchecked (the worker: its events are typed code)', async () => {
      const redis = client();
      const prefix = uniquePrefix();
      const chatId = randomUUID();
      const bad = draft(chatId, { stage: 'nonsense' as EventDraft['stage'] });

      const written = await new EventPublisher(redis, prefix, { validate: false }).publish(bad);
      expect(written).toMatchObject({ stage: 'nonsense' });
      expect(await redis.exists(`${prefix}:events:chat:${chatId}:log`)).toBe(1);
    });

    it.each([
      ['a result stage on a progress event', { stage: 'completed' }, /stage/],
      [
        'a progress stage on a result event',
        {
          type: 'result',
          data: { kind: 'start-workspace', ok: false, error: 'x', code: 'internal', is_error: true },
        },
        /stage/,
      ],
      [
        'a result event whose data is not a result',
        { type: 'result', stage: 'completed', data: { kind: 'start-workspace', ok: true, started: true } },
        /data/,
      ],
      [
        'a failure result with an unknown code',
        {
          type: 'result',
          stage: 'failed',
          data: { kind: 'start-workspace', ok: false, error: 'x', code: 'oops', is_error: true },
        },
        /data/,
      ],
    ])('refuses %s, writing nothing', async (_what, overrides, named) => {
      const redis = client();
      const prefix = uniquePrefix();
      const chatId = randomUUID();
      const bad = draft(chatId, overrides as Partial<EventDraft>);

      await expect(new EventPublisher(redis, prefix).publish(bad)).rejects.toThrow(named);
      expect(await redis.exists(`${prefix}:events:chat:${chatId}:log`)).toBe(0);
    });
  });

  describe('readChatEvents', () => {
    it("with since '0' › returns everything retained, oldest first; with count › at most that many", async () => {
      const redis = client();
      const prefix = uniquePrefix();
      const chatId = randomUUID();
      const publisher = new EventPublisher(redis, prefix);
      const published: WorkspaceJobEvent[] = [];
      for (const stage of ['queued', 'lock_acquired', 'checking'] as const) {
        published.push((await publisher.publish(draft(chatId, { stage })))!);
      }

      expect(await readChatEvents(redis, prefix, chatId, '0')).toEqual(published);
      expect(await readChatEvents(redis, prefix, chatId, '0', 2)).toEqual(published.slice(0, 2));
      expect(await readChatEvents(redis, prefix, randomUUID(), '0')).toEqual([]);
    });

    it('skips (and logs) stream entries that are not valid events', async () => {
      const redis = client();
      const prefix = uniquePrefix();
      const chatId = randomUUID();
      const key = `${prefix}:events:chat:${chatId}:log`;
      const publisher = new EventPublisher(redis, prefix);
      await redis.xadd(key, '*', 'event', 'not json');
      const good = await publisher.publish(draft(chatId));
      await redis.xadd(key, '*', 'event', JSON.stringify({ v: 2 }));
      await redis.xadd(key, '*', 'other', '{}');
      const { log, warn } = fakeLog();

      expect(await readChatEvents(redis, prefix, chatId, '0', undefined, log)).toEqual([good]);
      expect(warn).toHaveBeenCalledTimes(3);
    });

    it('rejects a since that is not a stream id', async () => {
      await expect(readChatEvents(client(), uniquePrefix(), 'c', 'yesterday')).rejects.toThrow(
        ValidationError,
      );
    });
  });

  describe('compareSeq', () => {
    it('compares stream ids as numbers, not strings', () => {
      expect(compareSeq('10-0', '9-5')).toBeGreaterThan(0);
      expect(compareSeq('1-10', '1-9')).toBeGreaterThan(0);
      expect(compareSeq('1732190000000-0', '1732190000000-0')).toBe(0);
      expect(compareSeq('1732190000000', '1732190000000-1')).toBeLessThan(0);
      expect(
        compareSeq('18446744073709551615-0', '18446744073709551614-18446744073709551615'),
      ).toBeGreaterThan(0);
    });
  });

  describe('EventSubscriber', () => {
    it('delivers live events published after subscribe, in order', async () => {
      const redis = client();
      const prefix = uniquePrefix();
      const chatId = randomUUID();
      const publisher = new EventPublisher(redis, prefix);
      await publisher.publish(draft(chatId, { stage: 'queued' })); // before: not delivered without since
      const received: WorkspaceJobEvent[] = [];
      await subscriber(redis, prefix).subscribe(chatId, (e) => received.push(e));

      const a = await publisher.publish(draft(chatId, { stage: 'lock_acquired' }));
      const b = await publisher.publish(draft(chatId, { stage: 'checking' }));

      await vi.waitFor(() => expect(received).toHaveLength(2), POLL);
      expect(received).toEqual([a, b]);
    });

    it("with since '0' › replays the stream first, then live events, without duplicates", async () => {
      const redis = client();
      const prefix = uniquePrefix();
      const chatId = randomUUID();
      const publisher = new EventPublisher(redis, prefix);
      const before = [
        await publisher.publish(draft(chatId, { stage: 'queued' })),
        await publisher.publish(draft(chatId, { stage: 'lock_acquired' })),
      ];
      const received: WorkspaceJobEvent[] = [];

      await subscriber(redis, prefix).subscribe(chatId, (e) => received.push(e), { since: '0' });
      expect(received).toEqual(before);
      const after = await publisher.publish(draft(chatId, { stage: 'checking' }));

      await vi.waitFor(() => expect(received).toHaveLength(3), POLL);
      expect(received).toEqual([...before, after]);
    });

    it('gives every subscription of one chat every event, and unsubscribing one leaves the others working', async () => {
      const redis = client();
      const prefix = uniquePrefix();
      const chatId = randomUUID();
      const publisher = new EventPublisher(redis, prefix);
      const events = subscriber(redis, prefix);
      const first: WorkspaceJobEvent[] = [];
      const second: WorkspaceJobEvent[] = [];
      const unsubscribeFirst = await events.subscribe(chatId, (e) => first.push(e));
      await events.subscribe(chatId, (e) => second.push(e));

      const a = await publisher.publish(draft(chatId));
      await vi.waitFor(() => {
        expect(first).toHaveLength(1);
        expect(second).toHaveLength(1);
      }, POLL);
      await unsubscribeFirst();
      await unsubscribeFirst(); // idempotent
      const b = await publisher.publish(draft(chatId));

      await vi.waitFor(() => expect(second).toHaveLength(2), POLL);
      expect(second).toEqual([a, b]);
      expect(first).toEqual([a]);
    });

    it('after unsubscribe › delivers nothing more', async () => {
      const redis = client();
      const prefix = uniquePrefix();
      const chatId = randomUUID();
      const publisher = new EventPublisher(redis, prefix);
      const received: WorkspaceJobEvent[] = [];
      const unsubscribe: Unsubscribe = await subscriber(redis, prefix).subscribe(chatId, (e) =>
        received.push(e),
      );

      await unsubscribe();
      await publisher.publish(draft(chatId));
      // A marker subscription on the same chat shows the event went out and was not delivered to the first.
      const marker: WorkspaceJobEvent[] = [];
      await subscriber(redis, prefix).subscribe(chatId, (e) => marker.push(e));
      await publisher.publish(draft(chatId));

      await vi.waitFor(() => expect(marker).toHaveLength(1), POLL);
      expect(received).toEqual([]);
    });

    it('skips (and logs) messages that are not valid events, and survives a throwing handler', async () => {
      const redis = client();
      const prefix = uniquePrefix();
      const chatId = randomUUID();
      const { log, warn, error } = fakeLog();
      const events = subscriber(redis, prefix, log);
      const received: WorkspaceJobEvent[] = [];
      await events.subscribe(chatId, () => {
        throw new Error('handler bug');
      });
      await events.subscribe(chatId, (e) => received.push(e));

      await redis.publish(`${prefix}:events:chat:${chatId}`, 'not json');
      await redis.publish(`${prefix}:events:chat:${chatId}`, JSON.stringify({ v: 1, type: 'progress' }));
      const good = await new EventPublisher(redis, prefix).publish(draft(chatId));

      await vi.waitFor(() => expect(received).toHaveLength(1), POLL);
      expect(received).toEqual([good]);
      expect(warn).toHaveBeenCalledTimes(2);
      expect(error).toHaveBeenCalledTimes(1);
    });

    it('close() ends every subscription', async () => {
      const redis = client();
      const prefix = uniquePrefix();
      const chatId = randomUUID();
      const events = subscriber(redis, prefix);
      const received: WorkspaceJobEvent[] = [];
      await events.subscribe(chatId, (e) => received.push(e));
      await events.subscribe(randomUUID(), (e) => received.push(e));

      await events.close();
      // A marker subscription on the same chat shows the event went out and was not delivered to the closed one.
      const marker: WorkspaceJobEvent[] = [];
      await subscriber(redis, prefix).subscribe(chatId, (e) => marker.push(e));
      await new EventPublisher(redis, prefix).publish(draft(chatId));

      await vi.waitFor(() => expect(marker).toHaveLength(1), POLL);
      expect(received).toEqual([]);
      await expect(events.subscribe(chatId, () => {})).rejects.toThrow(/closed/);
    });

    it('refuses one connection for both roles', () => {
      const redis = client();
      expect(() => new EventSubscriber({ subscriber: redis, commands: redis, prefix: 'p' })).toThrow(
        /two connections/,
      );
    });
  });
});
