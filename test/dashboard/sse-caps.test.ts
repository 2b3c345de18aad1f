// The event streams' caps on a real Redis: per client address (DASHBOARD_SSE_MAX_PER_CLIENT, 429) and in
// total (DASHBOARD_SSE_MAX_STREAMS, 503), checked before anything is subscribed, with the slot freed when a
// stream closes; and what the streams cost in Redis: one SUBSCRIBE per watched chat, none once they close.
// Other client addresses are other loopback addresses (127.0.0.2, ...), which Linux answers without setup.
import { randomUUID } from 'node:crypto';
import { get, type IncomingHttpHeaders } from 'node:http';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { redisKeys } from '../../src/shared/keys.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { openSse, startTestDashboard, type SseClient, type TestDashboard } from './helpers.js';

let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
});

afterAll(async () => {
  await db?.drop();
});

interface Opened {
  status: number;
  headers: IncomingHttpHeaders;
  /** The JSON answer of a refused stream. */
  body?: { error: string };
  close(): void;
}

/** Opens a chat's event stream from `localAddress`; resolves with the headers (200) or the whole answer. */
function openFrom(t: TestDashboard, chatId: string, localAddress: string): Promise<Opened> {
  return new Promise((resolve, reject) => {
    const req = get(t.url(`/chats/${chatId}/events`), { localAddress, timeout: 5_000 }, (res) => {
      const opened = { status: res.statusCode!, headers: res.headers, close: () => req.destroy() };
      if (res.statusCode === 200) return resolve(opened);
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => resolve({ ...opened, body: JSON.parse(text) as { error: string } }));
    });
    req.on('timeout', () => req.destroy(new Error('no answer within 5 s')));
    req.on('error', reject);
  });
}

const subscribers = async (t: TestDashboard, chatId: string) => {
  const [, count] = (await t.redis.pubsub('NUMSUB', redisKeys(t.prefix).chatChannel(chatId))) as [
    string,
    number,
  ];
  return count;
};
const chatChannels = async (t: TestDashboard) =>
  (await t.redis.pubsub('CHANNELS', `${redisKeys(t.prefix).chatChannel('')}*`)) as string[];

describe('with DASHBOARD_SSE_MAX_PER_CLIENT=2 and DASHBOARD_SSE_MAX_STREAMS=3', () => {
  let t: TestDashboard;
  const open: Opened[] = [];
  beforeAll(async () => {
    t = await startTestDashboard({
      db,
      env: { DASHBOARD_SSE_MAX_PER_CLIENT: '2', DASHBOARD_SSE_MAX_STREAMS: '3' },
    });
  });
  afterAll(async () => {
    for (const stream of open) stream.close();
    await t?.close();
  });

  const opened = async (chatId: string, from: string) => {
    const stream = await openFrom(t, chatId, from);
    open.push(stream);
    return stream;
  };

  it('refuses a client its third stream with 429 and Retry-After, another client not; the fourth in all gets 503', async () => {
    expect((await opened(randomUUID(), '127.0.0.1')).status).toBe(200);
    expect((await opened(randomUUID(), '127.0.0.1')).status).toBe(200);

    const refusedChat = randomUUID();
    const third = await opened(refusedChat, '127.0.0.1');
    expect(third.status).toBe(429);
    expect(third.headers['retry-after']).toBe('10');
    expect(third.body?.error).toBe(
      'too many event streams from 127.0.0.1: 2 open, at most 2 (DASHBOARD_SSE_MAX_PER_CLIENT); close one',
    );
    // Refused before subscribing: a refused stream costs Redis nothing.
    expect(await subscribers(t, refusedChat)).toBe(0);

    expect((await opened(refusedChat, '127.0.0.2')).status).toBe(200);

    const fourth = await opened(randomUUID(), '127.0.0.3');
    expect(fourth.status).toBe(503);
    expect(fourth.headers['retry-after']).toBe('10');
    expect(fourth.body?.error).toMatch(
      /too many event streams: 3 open, at most 3 \(DASHBOARD_SSE_MAX_STREAMS\)/,
    );
    // The three open streams subscribe (after their headers), the refused ones never do.
    await vi.waitFor(async () => expect(await chatChannels(t)).toHaveLength(3), { timeout: 5_000 });
    expect(await subscribers(t, refusedChat)).toBe(1);
  });

  it('frees the slot when a stream closes', async () => {
    open.find((s) => s.status === 200)!.close(); // one of 127.0.0.1's two
    // The server sees the close a moment later; until then the answer is still 429.
    await vi.waitFor(
      async () => {
        const again = await opened(randomUUID(), '127.0.0.1');
        expect(again.status).toBe(200);
      },
      { timeout: 5_000, interval: 50 },
    );
    expect((await opened(randomUUID(), '127.0.0.1')).status).toBe(429);

    for (const stream of open) stream.close();
    await vi.waitFor(async () => expect(await chatChannels(t)).toEqual([]), { timeout: 5_000 });
    // Every slot is back: the whole cap again, from one client and another.
    expect((await opened(randomUUID(), '127.0.0.1')).status).toBe(200);
    expect((await opened(randomUUID(), '127.0.0.1')).status).toBe(200);
    expect((await opened(randomUUID(), '127.0.0.2')).status).toBe(200);
    expect((await opened(randomUUID(), '127.0.0.2')).status).toBe(503);
  });
});

describe('what streams cost in Redis', () => {
  it('holds one SUBSCRIBE per watched chat however many streams watch it, and none once they close', async () => {
    const t = await startTestDashboard({ db });
    const clients: SseClient[] = [];
    try {
      const chats = [randomUUID(), randomUUID(), randomUUID()];
      for (const chatId of [...chats, ...chats, chats[0]!]) {
        const client = await openSse(t.url(`/chats/${chatId}/events`));
        clients.push(client);
        await client.comment('live');
      }
      expect((await chatChannels(t)).sort()).toEqual(
        chats.map((chatId) => redisKeys(t.prefix).chatChannel(chatId)).sort(),
      );
      for (const chatId of chats) expect(await subscribers(t, chatId)).toBe(1);

      for (const client of clients) client.close();
      await vi.waitFor(async () => expect(await chatChannels(t)).toEqual([]), { timeout: 5_000 });
    } finally {
      for (const client of clients) client.close();
      await t.close();
    }
  });
});
