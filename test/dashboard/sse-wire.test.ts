// GET /chats/:chatId/events on the wire: the HTTP/1.1 chunked framing the dashboard writes itself for shared
// event blocks (stream-slots.ts), read by a strict parser of the raw bytes and by curl; an HTTP/1.0 client's
// close-delimited body; and the cut-off of a client that stops reading.
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { WorkspaceJobEvent } from '../../src/shared/contract.js';
import { EventPublisher } from '../../src/shared/events.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { startTestDashboard, type TestDashboard } from './helpers.js';

let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
});

afterAll(async () => {
  await db?.drop();
});

async function publish(t: TestDashboard, chatId: string, message: string): Promise<WorkspaceJobEvent> {
  const event = await new EventPublisher(t.redis, t.prefix).publish({
    type: 'progress',
    stage: 'checking',
    job: { id: randomUUID(), name: 'start-workspace', attempt: 1 },
    chatId,
    message,
  });
  return event!;
}

/** A raw connection that sent `request(host)`; `received` is everything read so far. */
function rawConnect(t: TestDashboard, request: (host: string) => string) {
  const { hostname, port } = new URL(t.url('/'));
  const socket: Socket = connect(Number(port), hostname);
  socket.setEncoding('latin1');
  const wire = { socket, received: '', closed: false };
  socket.on('data', (chunk: string) => (wire.received += chunk));
  socket.on('close', () => (wire.closed = true));
  socket.on('error', () => {});
  socket.write(request(hostname));
  return wire;
}

/** A raw connection that sent `GET <path>` in HTTP/`version`. */
function rawGet(t: TestDashboard, path: string, version: '1.0' | '1.1') {
  return rawConnect(
    t,
    (host) => `GET ${path} HTTP/${version}\r\nHost: ${host}\r\nAccept: text/event-stream\r\n\r\n`,
  );
}

/** The body of a chunked response, checking every chunk's size line and CRLF and the final `0` chunk. */
function dechunk(body: string): string {
  let data = '';
  let at = 0;
  for (;;) {
    const lineEnd = body.indexOf('\r\n', at);
    expect(lineEnd).toBeGreaterThan(at);
    const size = body.slice(at, lineEnd);
    expect(size).toMatch(/^[0-9a-f]+$/);
    const length = parseInt(size, 16);
    at = lineEnd + 2;
    if (length === 0) {
      expect(body.slice(at)).toBe('\r\n'); // no trailers, nothing after the last chunk
      return data;
    }
    data += body.slice(at, at + length);
    expect(body.slice(at + length, at + length + 2)).toBe('\r\n');
    at += length + 2;
  }
}

describe('on the wire', () => {
  let t: TestDashboard;

  beforeAll(async () => {
    t = await startTestDashboard({ db, dashboard: { sse: { heartbeatMs: 50 } } });
  });

  afterAll(async () => {
    await t?.close();
  });

  it('when a client speaks HTTP/1.1 › every event, comment and heartbeat is a valid chunk, and close() sends the last chunk', async () => {
    const own = await startTestDashboard({ db, dashboard: { sse: { heartbeatMs: 50 } } });
    try {
      const chatId = randomUUID();
      const wire = rawGet(own, `/chats/${chatId}/events`, '1.1');
      await vi.waitFor(() => expect(wire.received).toContain('replay done'), { timeout: 5_000 });
      // Non-ASCII text: a chunk's size counts bytes, not characters.
      const events = [await publish(own, chatId, 'première'), await publish(own, chatId, 'zweite ✓')];
      await vi.waitFor(() => expect(wire.received).toContain(`id: ${events[1]!.seq}`), { timeout: 5_000 });
      await vi.waitFor(() => expect(wire.received.split('heartbeat').length).toBeGreaterThan(2), {
        timeout: 5_000,
      });
      await own.dashboard.close();
      await vi.waitFor(() => expect(wire.closed).toBe(true), { timeout: 5_000 });

      const raw = Buffer.from(wire.received, 'latin1');
      const headEnd = raw.indexOf('\r\n\r\n');
      expect(raw.subarray(0, headEnd).toString()).toMatch(/^HTTP\/1\.1 200[^]*transfer-encoding: chunked/i);
      const body = Buffer.from(dechunk(raw.subarray(headEnd + 4).toString('latin1')), 'latin1').toString();
      const ids = [...body.matchAll(/^id: (.*)$/gm)].map((m) => m[1]);
      expect(ids).toEqual(events.map((e) => e.seq));
      const data = [...body.matchAll(/^data: (.*)$/gm)].map((m) => JSON.parse(m[1]!) as WorkspaceJobEvent);
      expect(data.map((e) => e.message)).toEqual(['première', 'zweite ✓']);
    } finally {
      await own.close();
    }
  });

  it('when curl -N reads the stream › it gets the events and a complete response once the dashboard closes', async () => {
    const own = await startTestDashboard({ db });
    try {
      const chatId = randomUUID();
      const curl = spawn('curl', [
        '-N',
        '-sS',
        '--http1.1',
        '--max-time',
        '20',
        own.url(`/chats/${chatId}/events`),
      ]);
      let out = '';
      let err = '';
      curl.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
      curl.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
      const exited = new Promise<number | null>((resolve) => curl.on('close', resolve));
      await vi.waitFor(() => expect(out).toContain('replay done'), { timeout: 5_000 });
      const event = await publish(own, chatId, 'to curl');
      await vi.waitFor(() => expect(out).toContain(`id: ${event.seq}\ndata: `), { timeout: 5_000 });
      await own.dashboard.close();
      // curl exits 18 (partial file) on a chunked body cut short, 56 on bad framing.
      expect(await exited).toBe(0);
      expect(err).toBe('');
    } finally {
      await own.close();
    }
  });

  it('when the stream is asked for pipelined behind another request › its events still arrive as valid chunks', async () => {
    // The response has no socket of its own until /healthz (async: it pings Redis and Postgres) has answered,
    // so its blocks cannot go to the socket directly when the stream opens: the replayed event is written
    // then, and would land inside /healthz's response.
    const own = await startTestDashboard({ db });
    try {
      const chatId = randomUUID();
      const replayed = await publish(own, chatId, 'before');
      const wire = rawConnect(
        own,
        (host) =>
          `GET /healthz HTTP/1.1\r\nHost: ${host}\r\n\r\n` +
          `GET /chats/${chatId}/events?since=0 HTTP/1.1\r\nHost: ${host}\r\nAccept: text/event-stream\r\n\r\n`,
      );
      await vi.waitFor(() => expect(wire.received).toContain('replay done'), { timeout: 5_000 });
      const events = [replayed, await publish(own, chatId, 'one'), await publish(own, chatId, 'two')];
      await vi.waitFor(() => expect(wire.received).toContain(`id: ${events[2]!.seq}`), { timeout: 5_000 });
      await own.dashboard.close();
      await vi.waitFor(() => expect(wire.closed).toBe(true), { timeout: 5_000 });
      const { received } = wire;

      // /healthz's response first (its body is not chunked: it ends where the next head begins).
      const streamHead = received.indexOf('HTTP/1.1 200', 1);
      expect(streamHead).toBeGreaterThan(0);
      const stream = received.slice(streamHead);
      const headEnd = stream.indexOf('\r\n\r\n');
      expect(stream.slice(0, headEnd)).toMatch(
        /content-type: text\/event-stream[^]*transfer-encoding: chunked/i,
      );
      const body = dechunk(stream.slice(headEnd + 4));
      expect([...body.matchAll(/^id: (.*)$/gm)].map((m) => m[1])).toEqual(events.map((e) => e.seq));
    } finally {
      await own.close();
    }
  });

  it('when a client speaks HTTP/1.0 › the body is the bare blocks, ended by closing the connection', async () => {
    const chatId = randomUUID();
    const wire = rawGet(t, `/chats/${chatId}/events`, '1.0');
    try {
      await vi.waitFor(() => expect(wire.received).toContain('replay done'), { timeout: 5_000 });
      const event = await publish(t, chatId, 'old client');
      await vi.waitFor(() => expect(wire.received).toContain(`\n\nid: ${event.seq}\ndata: `), {
        timeout: 5_000,
      });
      const head = wire.received.slice(0, wire.received.indexOf('\r\n\r\n'));
      expect(head).toMatch(/^HTTP\/1\.1 200/);
      expect(head).not.toMatch(/transfer-encoding/i);
      const body = wire.received.slice(head.length + 4);
      expect(body).toMatch(/^retry: \d+\n\n/);
      const [, data] = /^data: (.*)\n\n/m.exec(body.slice(body.indexOf(`id: ${event.seq}\n`)))!;
      expect(JSON.parse(data!)).toEqual(event);
    } finally {
      wire.socket.destroy();
    }
  });
});

describe('with maxBufferedBytes of 64 KiB', () => {
  it('when a client stops reading › its connection is dropped, while a client that reads gets every event', async () => {
    const t = await startTestDashboard({ db, dashboard: { sse: { maxBufferedBytes: 64 * 1024 } } });
    try {
      const chatId = randomUUID();
      const stalled = rawGet(t, `/chats/${chatId}/events`, '1.1');
      const reading = rawGet(t, `/chats/${chatId}/events`, '1.1');
      await vi.waitFor(
        () => {
          expect(stalled.received).toContain('replay done');
          expect(reading.received).toContain('replay done');
        },
        { timeout: 5_000 },
      );
      stalled.socket.pause();
      const cutOff = vi.spyOn(t.log, 'warn');
      const wasCutOff = () =>
        cutOff.mock.calls.some(([, message]) => String(message).includes('is not reading'));
      // Blocks well under the 64 KiB, so a client that reads is never over it; up to 32 MiB in all, more than
      // both kernels' socket buffers on loopback take before the dashboard has to buffer.
      const big = 'x'.repeat(32 * 1024);
      const seqs: string[] = [];
      while (!wasCutOff() && seqs.length < 1_000) seqs.push((await publish(t, chatId, big)).seq);
      expect(wasCutOff()).toBe(true);
      const after = await publish(t, chatId, 'after the cut-off');
      seqs.push(after.seq);
      await vi.waitFor(() => expect(reading.received).toContain(`id: ${after.seq}\n`), { timeout: 10_000 });
      expect([...reading.received.matchAll(/^id: (.*)$/gm)].map((m) => m[1])).toEqual(seqs);
      // Its connection was dropped, not ended: it reads what was sent, then the close, without the last chunk.
      stalled.socket.resume();
      await vi.waitFor(() => expect(stalled.closed).toBe(true), { timeout: 10_000 });
      expect(stalled.received).not.toContain(`id: ${after.seq}\n`);
      expect(stalled.received.endsWith('0\r\n\r\n')).toBe(false);
      reading.socket.destroy();
    } finally {
      await t.close();
    }
  });
});
