// The dashboard's Server-Sent Events on a real Redis Cluster (the `cluster` test project): its producer's
// subscriber is a duplicated Cluster connection; replay after Last-Event-ID, then live events. Health and
// Bull Board answer there too.
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EventPublisher } from '../../src/shared/events.js';
import { QUEUE_NAME, type WorkspaceJobEvent } from '../../src/shared/contract.js';
import { Cluster } from '../../src/shared/redis.js';
import { openSse, startTestDashboard, take, type TestDashboard } from './helpers.js';

let t: TestDashboard;
let publisher: EventPublisher;

beforeAll(async () => {
  t = await startTestDashboard();
  publisher = new EventPublisher(t.redis, t.prefix);
});

afterAll(async () => {
  await t?.close();
});

async function publish(chatId: string, from: number, count: number): Promise<WorkspaceJobEvent[]> {
  const events: WorkspaceJobEvent[] = [];
  for (let i = from; i < from + count; i++) {
    const event = await publisher.publish({
      type: 'progress',
      stage: 'checking',
      job: { id: randomUUID(), name: 'start-workspace', attempt: 1 },
      chatId,
      message: `event ${i}`,
    });
    events.push(event!);
  }
  return events;
}

describe('chat events over SSE on a Redis Cluster', () => {
  it('runs the dashboard on a Cluster connection: health, Bull Board and its queue answer', async () => {
    expect(t.config.redisCluster).toBe(true);
    expect(t.redis).toBeInstanceOf(Cluster);
    expect((await fetch(t.url('/healthz'))).status).toBe(200);
    const queues = await fetch(t.url('/admin/queues/api/queues'));
    expect(queues.status).toBe(200);
    const body = (await queues.json()) as { queues: { name: string }[] };
    expect(body.queues.map((q) => q.name)).toEqual([QUEUE_NAME]);
  });

  it('replays the events after Last-Event-ID, then sends live ones, in order and once', async () => {
    const chatId = randomUUID();
    const published = await publish(chatId, 1, 4);
    const client = await openSse(t.url(`/chats/${chatId}/events`), { lastEventId: published[0]!.seq });
    try {
      expect(client.status).toBe(200);
      expect(await take(client, 3)).toEqual(published.slice(1));
      await client.comment('live', 10_000);

      const live = await publish(chatId, 5, 2);
      expect(await take(client, 2)).toEqual(live);
      expect(client.pending()).toEqual([]);
    } finally {
      client.close();
    }
  });
});
