// GET /chats/:chatId/events on a real Redis: replay after Last-Event-ID (or ?since=), gap-free and in
// order, then live events; reconnects; validation; heartbeats; one shared subscription; cleanup on
// disconnect and on close.
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { EventPublisher } from '../../src/shared/events.js';
import type { WorkspaceJobEvent } from '../../src/shared/contract.js';
import { redisKeys } from '../../src/shared/keys.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { openSse, startTestDashboard, take, type TestDashboard } from './helpers.js';

let db: TestDatabase;
let t: TestDashboard;
let publisher: EventPublisher;

beforeAll(async () => {
  db = await createTestDatabase();
  t = await startTestDashboard({ db, dashboard: { sse: { heartbeatMs: 100 } } });
  publisher = new EventPublisher(t.redis, t.prefix);
});

afterAll(async () => {
  await t?.close();
  await db?.drop();
});

const jobId = randomUUID();

async function publish(chatId: string, n: number, from = 1): Promise<WorkspaceJobEvent[]> {
  const events: WorkspaceJobEvent[] = [];
  for (let i = from; i < from + n; i++) {
    const event = await publisher.publish({
      type: 'progress',
      stage: 'checking',
      job: { id: jobId, name: 'start-workspace', attempt: 1 },
      chatId,
      message: `event ${i}`,
    });
    events.push(event!);
  }
  return events;
}

const messages = (events: WorkspaceJobEvent[]) => events.map((e) => e.message);
const subscribers = async (chatId: string) => {
  const [, count] = (await t.redis.pubsub('NUMSUB', redisKeys(t.prefix).chatChannel(chatId))) as [
    string,
    number,
  ];
  return count;
};

describe('replay and live delivery', () => {
  it('with Last-Event-ID = the k-th seq it sends exactly events k+1..N, then live ones, in order', async () => {
    const chatId = randomUUID();
    const published = await publish(chatId, 6);
    const client = await openSse(t.url(`/chats/${chatId}/events`), { lastEventId: published[1]!.seq });
    try {
      expect(client.status).toBe(200);
      expect(client.headers.get('content-type')).toMatch(/^text\/event-stream/);
      expect(client.headers.get('cache-control')).toContain('no-cache');
      const replayed = await take(client, 4);
      expect(replayed.map((e) => e.seq)).toEqual(published.slice(2).map((e) => e.seq));
      await client.comment('live');
      expect(client.retry).toBe(2000);

      const live = await publish(chatId, 3, 7);
      expect(await take(client, 3)).toEqual(live);
      // Nothing else: no duplicate of a replayed event, no stray event. A stray one would arrive before a
      // witness published last.
      const witness = await publish(chatId, 1, 10);
      expect(await take(client, 1)).toEqual(witness);
      expect(client.pending()).toEqual([]);
    } finally {
      client.close();
    }
  });

  it('takes ?since= on a first connection, and prefers Last-Event-ID when both are sent', async () => {
    const chatId = randomUUID();
    const published = await publish(chatId, 5);
    const first = await openSse(t.url(`/chats/${chatId}/events?since=${published[2]!.seq}`));
    try {
      expect(messages(await take(first, 2))).toEqual(['event 4', 'event 5']);
    } finally {
      first.close();
    }
    const all = await openSse(t.url(`/chats/${chatId}/events?since=0`));
    try {
      expect(messages(await take(all, 5))).toEqual(['event 1', 'event 2', 'event 3', 'event 4', 'event 5']);
    } finally {
      all.close();
    }
    // What EventSource does on a reconnect: the original URL (?since=0) plus the header.
    const both = await openSse(t.url(`/chats/${chatId}/events?since=0`), { lastEventId: published[3]!.seq });
    try {
      expect(messages(await take(both, 1))).toEqual(['event 5']);
      await both.comment('live');
      expect(both.pending()).toEqual([]);
    } finally {
      both.close();
    }
  });

  it('without since, sends live events only', async () => {
    const chatId = randomUUID();
    await publish(chatId, 3);
    const client = await openSse(t.url(`/chats/${chatId}/events`));
    try {
      await client.comment('live');
      const live = await publish(chatId, 2, 4);
      expect(await take(client, 2)).toEqual(live);
      expect(client.pending()).toEqual([]);
    } finally {
      client.close();
    }
  });

  it('with ?since=$ sends live events only, and a reconnect with that URL resumes after its Last-Event-ID', async () => {
    const chatId = randomUUID();
    await publish(chatId, 3);
    const first = await openSse(t.url(`/chats/${chatId}/events?since=$`));
    let live: WorkspaceJobEvent[];
    try {
      expect(first.status).toBe(200);
      await first.comment('live');
      live = await publish(chatId, 2, 4);
      // Events 4 and 5, not 1-3: nothing the stream held was replayed.
      expect(await take(first, 2)).toEqual(live);
      expect(first.pending()).toEqual([]);
    } finally {
      first.close();
    }
    // What EventSource does on a reconnect: the same URL plus the header, which wins.
    const again = await openSse(t.url(`/chats/${chatId}/events?since=$`), { lastEventId: live[0]!.seq });
    try {
      expect(await take(again, 1)).toEqual([live[1]]);
      await again.comment('live');
      expect(again.pending()).toEqual([]);
    } finally {
      again.close();
    }
  });

  it('a reconnect with the last id it saw continues without a gap or a duplicate', async () => {
    const chatId = randomUUID();
    await publish(chatId, 3);
    const first = await openSse(t.url(`/chats/${chatId}/events?since=0`));
    const seen = await take(first, 3);
    first.close();
    // Published while the client is away.
    await publish(chatId, 2, 4);
    const again = await openSse(t.url(`/chats/${chatId}/events?since=0`), { lastEventId: seen.at(-1)!.seq });
    try {
      seen.push(...(await take(again, 2)));
      await again.comment('live');
      await publish(chatId, 1, 6);
      seen.push(...(await take(again, 1)));
      expect(messages(seen)).toEqual(['event 1', 'event 2', 'event 3', 'event 4', 'event 5', 'event 6']);
      expect(new Set(seen.map((e) => e.seq)).size).toBe(6);
    } finally {
      again.close();
    }
  });
});

describe('validation', () => {
  it('answers 400 with a reason for a chat id that is not a UUID, and for a bad Last-Event-ID or since', async () => {
    const bad = await fetch(t.url('/chats/not-a-chat/events'));
    expect(bad.status).toBe(400);
    expect(await bad.json()).toEqual({ error: expect.stringContaining('invalid chatId') });

    const chatId = randomUUID();
    const badHeader = await fetch(t.url(`/chats/${chatId}/events`), {
      headers: { 'Last-Event-ID': 'yesterday' },
    });
    expect(badHeader.status).toBe(400);
    expect(await badHeader.json()).toEqual({ error: expect.stringContaining('Last-Event-ID') });

    const badQuery = await fetch(t.url(`/chats/${chatId}/events?since=abc`));
    expect(badQuery.status).toBe(400);
    expect(await badQuery.json()).toEqual({ error: expect.stringContaining('invalid since') });

    const twoQueries = await fetch(t.url(`/chats/${chatId}/events?since=0&since=1`));
    expect(twoQueries.status).toBe(400);
  });

  it('answers 400 naming the parameter for a since or Last-Event-ID beyond 64 bits, and takes the largest id', async () => {
    const chatId = randomUUID();
    const max = '18446744073709551615';
    for (const since of [`${max}0`, `1${max}`, `1-${BigInt(max) + 1n}`, '9'.repeat(400), `${max}-${max}0`]) {
      const query = await fetch(t.url(`/chats/${chatId}/events?since=${since}`));
      expect(query.status, since).toBe(400);
      expect(await query.json(), since).toEqual({
        error: `invalid since ${JSON.stringify(since)}: each part of a stream id is at most ${max} (64 bits) (an event's seq; 0 = from the beginning, $ = live events only)`,
      });
      const header = await fetch(t.url(`/chats/${chatId}/events`), { headers: { 'Last-Event-ID': since } });
      expect(header.status, since).toBe(400);
      expect(await header.json(), since).toEqual({
        error: expect.stringMatching(/^invalid Last-Event-ID .*64 bits/),
      });
    }
    // The largest ids are fine: nothing is replayed after them, and live events still come.
    for (const since of [max, `${max}-${max}`]) {
      const client = await openSse(t.url(`/chats/${chatId}/events?since=${since}`));
      try {
        expect(client.status, since).toBe(200);
        await client.comment('live');
      } finally {
        client.close();
      }
    }
  });
});

describe('connection handling', () => {
  it('sends heartbeat comments while idle', async () => {
    const client = await openSse(t.url(`/chats/${randomUUID()}/events`));
    try {
      await client.comment('heartbeat', 2_000);
    } finally {
      client.close();
    }
  });

  it('shares one subscription per chat between clients and unsubscribes when the last one leaves', async () => {
    const chatId = randomUUID();
    const a = await openSse(t.url(`/chats/${chatId}/events`));
    const b = await openSse(t.url(`/chats/${chatId}/events`));
    await Promise.all([a.comment('live'), b.comment('live')]);
    expect(await subscribers(chatId)).toBe(1);

    const [event] = await publish(chatId, 1);
    expect((await take(a, 1))[0]).toEqual(event);
    expect((await take(b, 1))[0]).toEqual(event);

    a.close();
    // Nothing to wait for (the server's stream count is not visible): time for the server to see a's close
    // and, were it wrong, give up the shared subscription.
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(await subscribers(chatId)).toBe(1);
    b.close();
    await vi.waitFor(async () => expect(await subscribers(chatId)).toBe(0), { timeout: 5_000 });
  });

  it('when several clients watch one chat › serialises each live event once, and a later client still gets its replay', async () => {
    const chatId = randomUUID();
    const clients = await Promise.all([1, 2, 3].map(() => openSse(t.url(`/chats/${chatId}/events`))));
    try {
      await Promise.all(clients.map((c) => c.comment('live')));
      // Counts the serialisations of this chat's events (the dashboard runs in this process).
      const stringify = vi.spyOn(JSON, 'stringify');
      const ofEvents = () =>
        stringify.mock.calls.filter(
          ([value]) => (value as Partial<WorkspaceJobEvent>)?.chatId === chatId && 'seq' in (value as object),
        ).length;
      try {
        const [event] = await publish(chatId, 1);
        for (const c of clients) expect(await take(c, 1)).toEqual([event]);
        expect(ofEvents()).toBe(1);
      } finally {
        stringify.mockRestore();
      }
      const late = await openSse(t.url(`/chats/${chatId}/events?since=0`));
      clients.push(late);
      const [replayed] = await take(late, 1);
      await late.comment('live');
      const [next] = await publish(chatId, 1, 2);
      for (const c of clients) expect(await take(c, 1)).toEqual([next]);
      expect(replayed!.message).toBe('event 1');
    } finally {
      for (const c of clients) c.close();
    }
  });

  it('ends open streams and closes everything on close()', async () => {
    const own = await startTestDashboard({ db });
    const chatId = randomUUID();
    const client = await openSse(own.url(`/chats/${chatId}/events`));
    await client.comment('live');
    const started = Date.now();
    await own.dashboard.close();
    expect(Date.now() - started).toBeLessThan(4_000);
    await client.ended; // the server ended the response
    expect(await subscribers(chatId)).toBe(0);
    await expect(fetch(own.url('/healthz'))).rejects.toThrow();
    await own.close(); // idempotent
  });
});
