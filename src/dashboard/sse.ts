// GET /chats/:chatId/events: a chat's job events as Server-Sent Events. This is the reference for how a chat
// backend bridges workspace-jobs' Redis events to its browser.
//
// The problem: events live in Redis in two forms (docs/design.md §6). Pub/sub delivers them live but
// at most once: whatever was published while nobody listened is gone. The chat's replay stream
// (`<prefix>:events:chat:<chatId>:log`) keeps the last ~1000 of them, and each event's `seq` is its stream
// entry id. A browser tab comes and goes (reloads, sleeps, loses Wi-Fi), so it must be able to say "I have
// everything up to X" and get exactly what came after, then live events, with no gap and no duplicate.
//
// SSE has that built in: every event we send carries `id: <seq>`. When the connection drops, the browser's
// EventSource reconnects by itself (after the `retry:` delay we send) with the header `Last-Event-ID: <the
// last id it saw>`. The first connection has no such header, so the page passes `?since=<seq>` (`0` = all
// that is retained); the header wins when both are present, which is what makes `?since=0` in the URL safe
// across reconnects. Neither = live events only.
//
// The bridge itself is `producer.subscribe(chatId, onEvent, { since })` (EventSubscriber): it SUBSCRIBEs to
// the chat's channel first and buffers, then reads the stream after `since`, delivers that, then the buffered
// and later live events minus the ones already replayed. So an event is either in the stream when it is read
// or arrives live, never lost in between. One EventSubscriber (one Redis connection in subscriber mode, one
// SUBSCRIBE per chat however many tabs watch it) serves every SSE client of this process: the cost of a
// client is a closure and a socket, not a Redis connection.
//
// Around that: heartbeat comments keep proxies and load balancers from closing an idle stream and make a
// dead client show up as a failed write; a client that stops reading is cut off once too much is buffered
// for it (it reconnects with Last-Event-ID and catches up from the stream, so nothing is lost and memory
// stays bounded); closing the client's connection unsubscribes; and closing the dashboard ends every stream.
//
// Caps: each stream holds a socket and, for a chat nobody else watches, a SUBSCRIBE, so a client could open
// thousands on random chat ids. Streams are counted per client address (429 past DASHBOARD_SSE_MAX_PER_CLIENT)
// and in total (503 past DASHBOARD_SSE_MAX_STREAMS), before anything is subscribed. The address, not the
// user: Basic auth has one user for all operators. Behind a proxy every client has the proxy's address, so
// there the per-client cap is one more total cap.
import type { Request, Response } from 'express';
import type { WorkspaceJobsProducer } from '../producer/producer.js';
import { DEFAULT_SSE_MAX_PER_CLIENT, DEFAULT_SSE_MAX_STREAMS } from '../shared/config.js';
import { compareSeq, streamIdProblem } from '../shared/events.js';
import type { WorkspaceJobEvent } from '../shared/contract.js';
import type { Logger } from '../shared/logger.js';
import { idSchema } from '../shared/schemas.js';

export interface SseOptions {
  /** A comment line this often, so idle streams stay open through proxies. Default 15000. */
  heartbeatMs?: number;
  /** The reconnection delay the browser is told to use. Default 2000. */
  retryMs?: number;
  /** A client with more than this many bytes not yet sent is disconnected (it catches up on reconnect). Default 1 MiB. */
  maxBufferedBytes?: number;
  /** Open streams per client address (DASHBOARD_SSE_MAX_PER_CLIENT). */
  maxPerClient?: number;
  /** Open streams in all (DASHBOARD_SSE_MAX_STREAMS). */
  maxStreams?: number;
}

/** Retry-After (seconds) of a stream refused by a cap: streams are long-lived, so a slot frees slowly. */
const CAP_RETRY_AFTER_S = 10;

interface Stream {
  res: Response;
  /** Ends the stream and unsubscribes; resolves once unsubscribed. Idempotent. */
  stop(): Promise<void>;
}

/** The event-stream handler plus the list of open streams, so that the dashboard can end them on close. */
export class ChatEventStreams {
  private readonly streams = new Set<Stream>();
  /** Open streams per client address. */
  private readonly perClient = new Map<string, number>();
  private readonly heartbeatMs: number;
  private readonly retryMs: number;
  private readonly maxBufferedBytes: number;
  private readonly maxPerClient: number;
  private readonly maxStreams: number;
  private closed = false;

  constructor(
    private readonly producer: WorkspaceJobsProducer,
    private readonly log: Logger,
    options: SseOptions = {},
  ) {
    this.heartbeatMs = options.heartbeatMs ?? 15_000;
    this.retryMs = options.retryMs ?? 2_000;
    this.maxBufferedBytes = options.maxBufferedBytes ?? 1024 * 1024;
    this.maxPerClient = options.maxPerClient ?? DEFAULT_SSE_MAX_PER_CLIENT;
    this.maxStreams = options.maxStreams ?? DEFAULT_SSE_MAX_STREAMS;
  }

  readonly handle = async (req: Request, res: Response): Promise<void> => {
    // 1. Validate before committing to a 200: a bad id gets a plain 400, which also stops EventSource from
    //    retrying (it only reconnects after a stream that started fine).
    const parsedChatId = idSchema.safeParse(String(req.params.chatId));
    if (!parsedChatId.success) {
      res.status(400).json({ error: `invalid chatId: ${JSON.stringify(req.params.chatId)} is not a UUID` });
      return;
    }
    const chatId = parsedChatId.data;
    const header = req.get('last-event-id')?.trim();
    const query = req.query.since;
    const [raw, sinceFrom] =
      header !== undefined && header !== '' ? [header, 'Last-Event-ID'] : [query, 'since'];
    const problem =
      raw === undefined
        ? undefined
        : typeof raw === 'string'
          ? streamIdProblem(raw)
          : 'expected a single value';
    if (problem !== undefined) {
      res.status(400).json({
        error: `invalid ${sinceFrom} ${JSON.stringify(raw)}: ${problem} (0 = from the beginning)`,
      });
      return;
    }
    const since = typeof raw === 'string' ? raw : undefined;
    if (this.closed) {
      res.status(503).json({ error: 'the dashboard is shutting down' });
      return;
    }
    const client = clientAddress(req);
    const ofClient = this.perClient.get(client) ?? 0;
    if (ofClient >= this.maxPerClient) {
      res
        .status(429)
        .set('Retry-After', String(CAP_RETRY_AFTER_S))
        .json({
          error: `too many event streams from ${client}: ${ofClient} open, at most ${this.maxPerClient} (DASHBOARD_SSE_MAX_PER_CLIENT); close one`,
        });
      return;
    }
    if (this.streams.size >= this.maxStreams) {
      res
        .status(503)
        .set('Retry-After', String(CAP_RETRY_AFTER_S))
        .json({
          error: `too many event streams: ${this.streams.size} open, at most ${this.maxStreams} (DASHBOARD_SSE_MAX_STREAMS)`,
        });
      return;
    }

    // 2. Commit to the stream: headers now (the browser's EventSource opens), then the retry delay.
    //    `no-transform` and `X-Accel-Buffering: no` ask proxies (nginx) not to buffer or compress the stream;
    //    `Connection: close` because a connection that carried a stream is never reused for a request.
    res.status(200).set({
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-cache, no-transform',
      Connection: 'close',
      'X-Accel-Buffering': 'no',
    });
    res.flushHeaders();
    req.socket.setNoDelay(true);
    res.write(`retry: ${this.retryMs}\n\n`);

    let unsubscribe: (() => Promise<void>) | undefined;
    let stopped: Promise<void> | undefined;
    // The last seq written. EventSubscriber never repeats an event, but a cheap ordered check here makes
    // "each id at most once, increasing" a property of the wire itself (e.g. across its reconnect catch-ups).
    let lastSent = since;

    // Comments (lines starting with `:`) are ignored by EventSource; they only keep the connection busy.
    const heartbeat = setInterval(() => {
      if (!res.writableEnded) res.write(': heartbeat\n\n');
    }, this.heartbeatMs);

    const stream: Stream = {
      res,
      stop: () =>
        (stopped ??= (async () => {
          clearInterval(heartbeat);
          this.streams.delete(stream);
          const left = (this.perClient.get(client) ?? 1) - 1;
          if (left > 0) this.perClient.set(client, left);
          else this.perClient.delete(client);
          if (!res.writableEnded) res.end();
          // Unsubscribing drops the chat's SUBSCRIBE once its last client is gone.
          await unsubscribe?.().catch((error: unknown) =>
            this.log.warn({ err: error, chatId }, 'could not unsubscribe an event stream'),
          );
        })()),
    };
    this.streams.add(stream);
    this.perClient.set(client, ofClient + 1);
    // The client went away (tab closed, network gone) or we ended the response: clean up either way.
    res.on('close', () => void stream.stop());

    const send = (event: WorkspaceJobEvent) => {
      if (stopped || res.writableEnded) return;
      if (lastSent !== undefined && compareSeq(event.seq, lastSent) <= 0) return;
      lastSent = event.seq;
      // JSON.stringify never emits a raw newline, so the whole envelope is one `data:` line.
      res.write(`id: ${event.seq}\ndata: ${JSON.stringify(event)}\n\n`);
      if (res.writableLength > this.maxBufferedBytes) {
        this.log.warn(
          { chatId, buffered: res.writableLength },
          'event stream client is not reading; disconnecting it (it resumes from Last-Event-ID)',
        );
        void stream.stop();
      }
    };

    // 3. Replay after `since`, then live. Events reach `send` while this awaits (the replay) and after.
    try {
      const off = await this.producer.subscribe(chatId, send, since === undefined ? {} : { since });
      if (stopped) {
        // The client left (or the dashboard closed) while we were subscribing.
        await off();
        return;
      }
      unsubscribe = off;
      res.write(': replay done, live from here\n\n');
    } catch (error) {
      // Headers are sent, so no error status: end the stream and let EventSource retry after `retry` ms,
      // resuming from the last id it got.
      this.log.warn({ err: error, chatId }, 'could not subscribe an event stream to the chat');
      await stream.stop();
    }
  };

  /** Ends every open stream and unsubscribes them; new requests get 503. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.streams].map((stream) => stream.stop()));
  }
}

/** The peer's address (an IPv4 client of a dual-stack listener without its `::ffff:`). */
function clientAddress(req: Request): string {
  const address = req.socket.remoteAddress ?? 'unknown';
  return address.startsWith('::ffff:') ? address.slice(7) : address;
}
