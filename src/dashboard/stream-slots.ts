// What every Server-Sent Events stream of the dashboard shares (a chat's events, sse.ts; a build's log,
// build-log-streams.ts): the caps, the response headers, the heartbeat, the cut-off for a client that stops
// reading, and ending every stream when the dashboard closes.
//
// Heartbeat comments keep proxies and load balancers from closing an idle stream and make a dead client show
// up as a failed write; a client that stops reading is cut off once too much is buffered for it (it
// reconnects with Last-Event-ID and catches up, so nothing is lost and memory stays bounded).
//
// Caps: each stream holds a socket (and, for a chat nobody else watches, a SUBSCRIBE), so a client could open
// thousands on random ids. Streams of both kinds are counted together per client address (429 past
// DASHBOARD_SSE_MAX_PER_CLIENT) and in total (503 past DASHBOARD_SSE_MAX_STREAMS), before anything is
// subscribed. The address, not the user: Basic auth has one user for all operators. Behind a proxy every
// client has the proxy's address, so there the per-client cap is one more total cap.
import { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Request, Response } from 'express';
import { DEFAULT_SSE_MAX_PER_CLIENT, DEFAULT_SSE_MAX_STREAMS } from '../shared/config.js';
import type { Logger } from '../shared/logger.js';

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

/**
 * An SSE block made once and written to many streams: `chunk` is it framed as one HTTP/1.1 chunk (size line,
 * block, CRLF), `body` the block alone (a view into `chunk`) for a response that is not chunked.
 */
export interface SharedBlock {
  readonly chunk: Buffer;
  readonly body: Buffer;
}

export function sharedBlock(text: string): SharedBlock {
  const length = Buffer.byteLength(text);
  const sizeLine = `${length.toString(16)}\r\n`;
  const chunk = Buffer.allocUnsafe(sizeLine.length + length + 2);
  chunk.write(sizeLine, 0, 'latin1');
  chunk.write(text, sizeLine.length);
  chunk.write('\r\n', sizeLine.length + length, 'latin1');
  return { chunk, body: chunk.subarray(sizeLine.length, sizeLine.length + length) };
}

/** An open stream: its response is committed to `text/event-stream`. */
export interface EventStream {
  readonly res: Response;
  /** True once stopped (client gone, cut off, or the dashboard closing). */
  readonly stopped: boolean;
  /**
   * Writes an SSE block unless stopped; cuts the client off when too much is buffered for it. A SharedBlock is
   * not copied or changed: many streams write the same one.
   */
  write(block: string | SharedBlock): void;
  /** Ends the response and runs the stream's clean-up; resolves once that is done. Idempotent. */
  stop(): Promise<void>;
}

export class EventStreamSlots {
  private readonly streams = new Set<EventStream>();
  /** Open streams per client address. */
  private readonly perClient = new Map<string, number>();
  private readonly heartbeatMs: number;
  private readonly retryMs: number;
  private readonly maxBufferedBytes: number;
  private readonly maxPerClient: number;
  private readonly maxStreams: number;
  private closed = false;

  constructor(
    private readonly log: Logger,
    options: SseOptions = {},
  ) {
    this.heartbeatMs = options.heartbeatMs ?? 15_000;
    this.retryMs = options.retryMs ?? 2_000;
    this.maxBufferedBytes = options.maxBufferedBytes ?? 1024 * 1024;
    this.maxPerClient = options.maxPerClient ?? DEFAULT_SSE_MAX_PER_CLIENT;
    this.maxStreams = options.maxStreams ?? DEFAULT_SSE_MAX_STREAMS;
  }

  /**
   * Takes a slot and commits the response to an event stream (headers, the retry delay, heartbeats), or
   * answers 503/429 and returns undefined. `cleanUp` runs once when the stream stops; `fields` go into its logs.
   */
  open(
    req: Request,
    res: Response,
    fields: Record<string, unknown>,
    cleanUp: () => Promise<void>,
  ): EventStream | undefined {
    if (this.closed) {
      res.status(503).json({ error: 'the dashboard is shutting down' });
      return undefined;
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
      return undefined;
    }
    if (this.streams.size >= this.maxStreams) {
      res
        .status(503)
        .set('Retry-After', String(CAP_RETRY_AFTER_S))
        .json({
          error: `too many event streams: ${this.streams.size} open, at most ${this.maxStreams} (DASHBOARD_SSE_MAX_STREAMS)`,
        });
      return undefined;
    }

    // Commit to the stream: headers now (the browser's EventSource opens), then the retry delay.
    // `no-transform` and `X-Accel-Buffering: no` ask proxies (nginx) not to buffer or compress the stream;
    // `Connection: close` because a connection that carried a stream is never reused for a request.
    res.status(200).set({
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-cache, no-transform',
      Connection: 'close',
      'X-Accel-Buffering': 'no',
    });
    res.flushHeaders();
    req.socket.setNoDelay(true);
    res.write(`retry: ${this.retryMs}\n\n`);
    // The socket shared blocks go to directly, bypassing res.write (SlotStream.write): only with chunked
    // framing done by Node itself, not when a middleware (compression) replaced res.write and so owns the
    // bytes, and only once the response owns the connection (res.socket is null while a pipelined request
    // ahead still answers).
    const directSocket =
      res.chunkedEncoding && res.write === ServerResponse.prototype.write ? res.socket : null;
    const { heartbeatMs, maxBufferedBytes, log } = this;
    const stream = new SlotStream(
      res,
      directSocket,
      { heartbeatMs, maxBufferedBytes, log },
      fields,
      async () => {
        this.streams.delete(stream);
        const left = (this.perClient.get(client) ?? 1) - 1;
        if (left > 0) this.perClient.set(client, left);
        else this.perClient.delete(client);
        await cleanUp();
      },
    );
    this.streams.add(stream);
    this.perClient.set(client, ofClient + 1);
    // The client went away (tab closed, network gone) or we ended the response: clean up either way.
    res.on('close', () => void stream.stop());
    return stream;
  }

  /** Ends every open stream; new requests get 503. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.streams].map((stream) => stream.stop()));
  }
}

/**
 * A class, not an object literal per stream: a literal with a getter is a dictionary-mode object, so every
 * `stream.stopped` or `stream.write` in the per-client loop of a chat's fan-out was a hash lookup through the
 * generic load IC. For the same reason the response is touched only off that loop: every Express response has
 * a hidden class of its own (Express 5 sets each one's prototype), so each `res.<property>` read there was a
 * megamorphic inline-cache miss, a runtime lookup of about a microsecond; the sockets all share one (issue 11).
 */
class SlotStream implements EventStream {
  private readonly heartbeat: NodeJS.Timeout;
  private readonly maxBufferedBytes: number;
  private readonly log: Logger;
  /** Set as stop() begins, before anything it calls could write: nothing is written to an ending response. */
  private ending = false;
  private stopping: Promise<void> | undefined;

  constructor(
    readonly res: Response,
    private readonly directSocket: Socket | null,
    settings: { heartbeatMs: number; maxBufferedBytes: number; log: Logger },
    private readonly fields: Record<string, unknown>,
    private readonly onStop: () => Promise<void>,
  ) {
    this.maxBufferedBytes = settings.maxBufferedBytes;
    this.log = settings.log;
    // Comments (lines starting with `:`) are ignored by EventSource; they only keep the connection busy.
    this.heartbeat = setInterval(() => {
      if (!this.ending) res.write(': heartbeat\n\n');
    }, settings.heartbeatMs);
  }

  get stopped(): boolean {
    return this.ending;
  }

  write(block: string | SharedBlock): void {
    // Only stop() ends the response, and it sets `ending` first.
    if (this.ending) return;
    let buffered: number;
    // A shared block goes to the socket already framed: res.write would frame it again for every client (a
    // size line, the block and a CRLF through OutgoingMessage, corked, then one writev each), which was most of
    // the dashboard's CPU per client with 1,000 on one chat (issue 11). It stays in order with what res.write
    // sent before: the headers are flushed and res.write hands its bytes to this same socket as it goes.
    // Otherwise (HTTP/1.0, where the body ends at the close, res.write replaced, or a pipelined response) the
    // bare block goes through res.write.
    if (typeof block !== 'string' && this.directSocket !== null) {
      this.directSocket.write(block.chunk);
      buffered = this.directSocket.writableLength;
    } else {
      this.res.write(typeof block === 'string' ? block : block.body);
      buffered = this.res.writableLength;
    }
    if (buffered > this.maxBufferedBytes) {
      this.log.warn(
        { ...this.fields, buffered },
        'event stream client is not reading; disconnecting it (it resumes from Last-Event-ID)',
      );
      // Dropped, not ended: an ended response would keep its unsent bytes for as long as the client reads
      // nothing.
      this.res.destroy();
      void this.stop();
    }
  }

  stop(): Promise<void> {
    if (this.stopping) return this.stopping;
    this.ending = true;
    this.stopping = (async () => {
      clearInterval(this.heartbeat);
      if (!this.res.writableEnded) this.res.end();
      await this.onStop();
    })();
    return this.stopping;
  }
}

/** The peer's address (an IPv4 client of a dual-stack listener without its `::ffff:`). */
function clientAddress(req: Request): string {
  const address = req.socket.remoteAddress ?? 'unknown';
  return address.startsWith('::ffff:') ? address.slice(7) : address;
}
