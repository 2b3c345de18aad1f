// Events on a real Redis Cluster (the `cluster` test project): the publish script's keys share the prefix's
// slot, pub/sub reaches a subscriber on whichever node it sits, and replay with `since` is gap-free.
import { randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { EventPublisher, EventSubscriber, readChatEvents } from '../../src/shared/events.js';
import type { WorkspaceJobEvent } from '../../src/shared/contract.js';
import { closeRedis, duplicateSubscriber, type RedisClient } from '../../src/shared/redis.js';
import { draft } from '../helpers/events.js';
import { deleteKeys, testClient, uniquePrefix } from '../helpers/redis.js';

describe('events on a Redis Cluster', () => {
  let prefix: string;
  let redis: RedisClient;
  let subscriberConnection: RedisClient;
  let subscriber: EventSubscriber;
  let publisher: EventPublisher;

  beforeEach(() => {
    prefix = uniquePrefix('events');
    redis = testClient();
    // As the producer does it: the subscriber duplicates the command connection.
    subscriberConnection = duplicateSubscriber(redis, 'workspace-jobs-test-sub');
    subscriber = new EventSubscriber({ subscriber: subscriberConnection, commands: redis, prefix });
    publisher = new EventPublisher(redis, prefix);
  });

  afterEach(async () => {
    await subscriber.close();
    await closeRedis(subscriberConnection);
    await deleteKeys(redis, prefix);
    await closeRedis(redis);
  });

  async function publish(chatId: string, from: number, count: number): Promise<WorkspaceJobEvent[]> {
    const events: WorkspaceJobEvent[] = [];
    for (let n = from; n < from + count; n++) events.push((await publisher.publish(draft(chatId, n)))!);
    return events;
  }

  it('delivers live events in publish order, each with the seq the publisher returned', async () => {
    const chatId = randomUUID();
    const received: WorkspaceJobEvent[] = [];
    await subscriber.subscribe(chatId, (e) => received.push(e));

    const published = await publish(chatId, 0, 20);

    await vi.waitFor(() => expect(received).toHaveLength(20), { timeout: 10_000 });
    expect(received).toEqual(published);
    expect(await readChatEvents(redis, prefix, chatId, '0')).toEqual(published);
  });

  it('replays exactly the events after `since`, then live ones', async () => {
    const chatId = randomUUID();
    const before = await publish(chatId, 0, 5);
    const received: WorkspaceJobEvent[] = [];

    await subscriber.subscribe(chatId, (e) => received.push(e), { since: before[1]!.seq });
    expect(received).toEqual(before.slice(2));
    const live = await publish(chatId, 5, 2);

    await vi.waitFor(() => expect(received).toHaveLength(5), { timeout: 10_000 });
    expect(received).toEqual([...before.slice(2), ...live]);
  });

  it("publishes a job's result once: the marker and the stream are written by one script in one slot", async () => {
    const chatId = randomUUID();
    const result = draft(chatId, 0, {
      type: 'result',
      stage: 'completed',
      data: { kind: 'start-workspace', ok: true, started: true, workspace_name: 'dev' },
    });

    expect(await publisher.publish(result)).not.toBeNull();
    expect(await publisher.publish(result)).toBeNull();
    expect(
      (await readChatEvents(redis, prefix, chatId, '0')).filter((e) => e.type === 'result'),
    ).toHaveLength(1);
  });

  it("reaches a watcher chat's stream and channel in the same script, and copies a result out before it joined", async () => {
    const own = randomUUID();
    const watcher = randomUUID();
    const late = randomUUID();
    const received: WorkspaceJobEvent[] = [];
    await subscriber.subscribe(watcher, (e) => received.push(e));
    const announcement = (chatId: string) =>
      draft(chatId, 0, { stage: 'deduplicated', message: 'already queued', data: { differs: [] } });
    await publisher.announceDeduplicated(announcement(watcher), { chatId: own, differs: [] });

    const progress = (await publisher.publish(draft(own, 1)))!;
    const result = (await publisher.publish(
      draft(own, 2, {
        type: 'result',
        stage: 'completed',
        data: { kind: 'start-workspace', ok: true, started: true, workspace_name: 'dev' },
      }),
    ))!;
    await publisher.announceDeduplicated(announcement(late), { chatId: own, differs: [] });

    const watched = await readChatEvents(redis, prefix, watcher, '0');
    expect(watched.slice(1)).toEqual([
      { ...progress, chatId: watcher, seq: watched[1]!.seq },
      { ...result, chatId: watcher, seq: watched[2]!.seq },
    ]);
    await vi.waitFor(() => expect(received).toEqual(watched), { timeout: 10_000 });
    const copied = await readChatEvents(redis, prefix, late, '0');
    expect(copied.map((e) => e.stage)).toEqual(['deduplicated', 'completed']);
    expect(copied[1]).toEqual({ ...result, chatId: late, seq: copied[1]!.seq });
  });
});
