// The publish scripts' watcher, dedup-announcement and once-per-job paths on the real Redis: a chat
// deduplicated onto another chat's job hears its later events on its own stream and channel, also a result
// that was out before it joined; repeats of an announcement write nothing; a changed watcher set is re-read.
import { randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it, onTestFinished, vi } from 'vitest';
import { EventPublisher, EventSubscriber, readChatEvents } from '../../src/shared/events.js';
import type { EventDraft, WorkspaceJobEvent } from '../../src/shared/contract.js';
import { closeRedis, createRedis, type Redis } from '../../src/shared/redis.js';
import { draft } from '../helpers/events.js';
import { TEST_REDIS_URL, deleteKeys, testRedis, uniquePrefix } from '../helpers/redis.js';

const POLL = { timeout: 5_000, interval: 10 };
const RESULT = { kind: 'start-workspace', ok: true, started: true, workspace_name: 'dev' } as const;

/** Chat `chatId`'s deduplicated announcement of job-1 (draft()'s job), differing in `differs`. */
function deduplicated(chatId: string, differs: string[] = []): EventDraft {
  return draft(chatId, 0, { stage: 'deduplicated', message: 'already queued', data: { differs } });
}

const result = (chatId: string) =>
  draft(chatId, 0, { type: 'result', stage: 'completed', message: 'done', data: RESULT });

describe('watcher chats and deduplicated announcements on the real Redis', () => {
  let prefix: string;
  let redis: Redis;
  let subscriberConnection: Redis;
  let subscriber: EventSubscriber;
  let publisher: EventPublisher;
  const own = randomUUID();
  const other = randomUUID();

  beforeEach(() => {
    prefix = uniquePrefix('watchers');
    redis = testRedis();
    subscriberConnection = testRedis();
    subscriber = new EventSubscriber({ subscriber: subscriberConnection, commands: redis, prefix });
    publisher = new EventPublisher(redis, prefix);
  });

  afterEach(async () => {
    vi.restoreAllMocks();
    await subscriber.close();
    await deleteKeys(redis, prefix);
    await closeRedis(subscriberConnection);
    await closeRedis(redis);
  });

  /** Live events of the chat, as its subscribers get them. */
  async function live(chatId: string): Promise<WorkspaceJobEvent[]> {
    const received: WorkspaceJobEvent[] = [];
    await subscriber.subscribe(chatId, (e) => received.push(e));
    return received;
  }

  it("a watcher gets the job's later events on its stream and channel, with its own chatId and seq", async () => {
    const ownLive = await live(own);
    const otherLive = await live(other);
    await publisher.publish(draft(own, 0));
    expect(
      await publisher.announceDeduplicated(deduplicated(other), { chatId: own, differs: [] }),
    ).toMatchObject({
      chatId: other,
      stage: 'deduplicated',
    });

    const progress = await publisher.publish({ ...draft(own, 1), workspaceId: randomUUID() });
    const end = await publisher.publish(result(own));

    const ownEvents = await readChatEvents(redis, prefix, own, '0');
    const otherEvents = await readChatEvents(redis, prefix, other, '0');
    expect(ownEvents).toEqual([expect.objectContaining({ data: { n: 0 } }), progress, end]);
    expect(otherEvents.map((e) => e.stage)).toEqual(['deduplicated', 'build_running', 'completed']);
    // The same envelope but for its chat, and its seq is its entry id on the watcher's own stream.
    expect(otherEvents.slice(1)).toEqual([
      { ...progress, chatId: other, seq: otherEvents[1]!.seq },
      { ...end, chatId: other, seq: otherEvents[2]!.seq },
    ]);
    await vi.waitFor(() => expect(otherLive).toEqual(otherEvents), POLL);
    await vi.waitFor(() => expect(ownLive).toEqual(ownEvents), POLL);
    // The result ended the watcher set.
    expect(await redis.exists(`${prefix}:job:job-1:chats`)).toBe(0);
  });

  it("the job's own chat deduplicated onto it is announced, but does not watch it (no event twice)", async () => {
    await publisher.announceDeduplicated(deduplicated(own), { chatId: own.toUpperCase(), differs: [] });
    await publisher.publish(draft(own, 1));

    expect((await readChatEvents(redis, prefix, own, '0')).map((e) => e.stage)).toEqual([
      'deduplicated',
      'build_running',
    ]);
    expect(await redis.exists(`${prefix}:job:job-1:chats`)).toBe(0);
  });

  it('a watcher that joins after the result is out gets that result at once, once, with its own chatId and seq', async () => {
    const otherLive = await live(other);
    const end = (await publisher.publish(result(own)))!;

    await publisher.announceDeduplicated(deduplicated(other), { chatId: own, differs: [] });
    // A repeat (the same differences) writes nothing, so no second copy either.
    expect(
      await publisher.announceDeduplicated(deduplicated(other), { chatId: own, differs: [] }),
    ).toBeNull();

    const otherEvents = await readChatEvents(redis, prefix, other, '0');
    expect(otherEvents.map((e) => e.stage)).toEqual(['deduplicated', 'completed']);
    const copy = otherEvents[1]!;
    expect(copy).toEqual({ ...end, chatId: other, seq: copy.seq });
    await vi.waitFor(() => expect(otherLive).toEqual(otherEvents), POLL);
    // Not a watcher: nothing of the job's ended set is left behind.
    expect(await redis.exists(`${prefix}:job:job-1:chats`)).toBe(0);
  });

  it('a chat is announced once per set of differing fields, however often it is deduplicated', async () => {
    for (let i = 0; i < 50; i++) {
      await publisher.announceDeduplicated(deduplicated(other), { chatId: own, differs: [] });
      await publisher.announceDeduplicated(deduplicated(other, ['ownerId', 'parameters']), {
        chatId: own,
        differs: ['parameters', 'ownerId'],
      });
    }
    await publisher.publish(draft(own, 1));

    expect((await readChatEvents(redis, prefix, other, '0')).map((e) => [e.stage, e.data])).toEqual([
      ['deduplicated', { differs: [] }],
      ['deduplicated', { differs: ['ownerId', 'parameters'] }],
      ['build_running', { n: 1 }],
    ]);
    expect(await redis.ttl(`${prefix}:job:job-1:deduplicated`)).toBeGreaterThan(0);
    expect(await redis.ttl(`${prefix}:job:job-1:chats`)).toBeGreaterThan(0);
  });

  it('a publish that tried without a watcher that joined tries again and reaches that chat', async () => {
    await publisher.announceDeduplicated(deduplicated(other), { chatId: own, differs: [] });

    // Tried first without the watcher: the script answers with the set, and the second try reaches it.
    await publisher.publish(draft(own, 1));

    expect((await readChatEvents(redis, prefix, own, '0')).map((e) => e.data)).toEqual([{ n: 1 }]);
    expect((await readChatEvents(redis, prefix, other, '0')).map((e) => e.stage)).toEqual([
      'deduplicated',
      'build_running',
    ]);
  });

  it('a publish while chats keep joining gives up after 20 tries, writing nothing', async () => {
    // Another chat joins before every try, as a storm of other chats' enqueues would.
    const joining = new Proxy(redis, {
      get(target, property, receiver) {
        const value: unknown = Reflect.get(target, property, receiver);
        if (typeof value !== 'function') return value;
        // The publish script runs by EVALSHA (LuaScript); this publisher sends nothing else.
        if (property !== 'evalsha') return value.bind(target);
        return async (...args: unknown[]) => {
          await publisher.announceDeduplicated(deduplicated(randomUUID()), { chatId: own, differs: [] });
          return (value as (...a: unknown[]) => Promise<unknown>).apply(target, args);
        };
      },
    });
    const publishing = new EventPublisher(joining, prefix);

    await expect(publishing.publish(draft(own, 1))).rejects.toThrow(/watcher chats changed 20 times/);
    expect(await readChatEvents(redis, prefix, own, '0')).toEqual([]);
    expect(await redis.scard(`${prefix}:job:job-1:chats`)).toBe(20);
  });

  it("publishes a job's queued event once, whoever publishes it", async () => {
    const queued = draft(own, 0, { stage: 'queued', message: 'queued', data: undefined });

    expect(await publisher.publish(queued)).toMatchObject({ stage: 'queued' });
    expect(await publisher.publish(queued)).toBeNull();
    expect(await publisher.publish(draft(own, 1))).not.toBeNull();

    expect((await readChatEvents(redis, prefix, own, '0')).map((e) => e.stage)).toEqual([
      'queued',
      'build_running',
    ]);
    expect(await redis.ttl(`${prefix}:queued:job-1`)).toBeGreaterThan(0);
  });

  it('on an auto-pipelined connection › a publish to a watcher while other commands share its pipeline reaches both chats', async () => {
    // The worker's events connection pipelines; a script first used for a watcher count while a pipeline was
    // open used to be missing from it (TypeError, then an uncaught exception from the pipeline's replies).
    const pipelined = createRedis(TEST_REDIS_URL, { name: 'workspace-jobs-test', pipelined: true });
    onTestFinished(() => closeRedis(pipelined));
    const worker = new EventPublisher(pipelined, prefix);
    await publisher.announceDeduplicated(deduplicated(other), { chatId: own, differs: [] });

    // The get's answer comes first and sends another get, which opens the next pipeline; then the publish,
    // told of the watcher, tries again with it in that pipeline.
    const key = `${prefix}:unrelated`;
    const unrelated = pipelined.get(key).then(() => pipelined.get(key));
    const published = await worker.publish(draft(own, 1));
    await unrelated;

    expect(published).toMatchObject({ chatId: own, data: { n: 1 } });
    expect((await readChatEvents(redis, prefix, other, '0')).map((e) => e.stage)).toEqual([
      'deduplicated',
      'build_running',
    ]);
  });
});
