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
// that is retained, `$` = live events only: Redis's "from now", as `watch --since $`); the header wins when
// both are present, which is what makes a fixed `?since=0` or `?since=$` in the URL right across
// reconnects. Neither = live events only.
//
// The bridge itself is `producer.subscribe(chatId, onEvent, { since })` (EventSubscriber): it SUBSCRIBEs to
// the chat's channel first and buffers, then reads the stream after `since`, delivers that, then the buffered
// and later live events minus the ones already replayed. So an event is either in the stream when it is read
// or arrives live, never lost in between. One EventSubscriber (one Redis connection in subscriber mode, one
// SUBSCRIBE per chat however many tabs watch it) serves every SSE client of this process: the cost of a
// client is a closure and a socket, not a Redis connection.
//
// Around that (stream-slots.ts, shared with the build log streams): heartbeats, the cut-off for a client that
// stops reading, the per-client and total caps, and ending every stream when the dashboard closes. Closing the
// client's connection unsubscribes.
import type { Request, Response } from 'express';
import type { WorkspaceJobsProducer } from '../producer/producer.js';
import { compareSeq, streamIdProblem } from '../shared/events.js';
import type { WorkspaceJobEvent } from '../shared/contract.js';
import type { Logger } from '../shared/logger.js';
import { idSchema } from '../shared/schemas.js';
import { sharedBlock, type EventStreamSlots, type SharedBlock } from './stream-slots.js';

/**
 * Each event's SSE block, made once per process: EventSubscriber hands the same event object to every client of
 * the chat, so with 1,000 tabs on one chat the JSON, its UTF-8 bytes and its chunk framing are made once, not
 * 1,000 times (issue 11). Replayed events are read per client, so they are new objects and serialised for that
 * client alone.
 */
const blocks = new WeakMap<WorkspaceJobEvent, SharedBlock>();
/** The last event asked for, ahead of the WeakMap: its clients ask one after another. */
let last: { event: WorkspaceJobEvent; block: SharedBlock } | undefined;

function sseBlock(event: WorkspaceJobEvent): SharedBlock {
  if (last?.event === event) return last.block;
  let block = blocks.get(event);
  if (block === undefined) {
    // JSON.stringify never emits a raw newline, so the whole envelope is one `data:` line.
    block = sharedBlock(`id: ${event.seq}\ndata: ${JSON.stringify(event)}\n\n`);
    blocks.set(event, block);
  }
  last = { event, block };
  return block;
}

/** A `since` of "from now" (Redis's `$`): no replay, live events only, the same as no `since`. */
const LIVE_ONLY = '$';

/** The chat event-stream handler; its streams take slots of the dashboard's EventStreamSlots. */
export class ChatEventStreams {
  constructor(
    private readonly producer: WorkspaceJobsProducer,
    private readonly slots: EventStreamSlots,
    private readonly log: Logger,
  ) {}

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
      raw === undefined || raw === LIVE_ONLY
        ? undefined
        : typeof raw === 'string'
          ? streamIdProblem(raw)
          : 'expected a single value';
    if (problem !== undefined) {
      res.status(400).json({
        error: `invalid ${sinceFrom} ${JSON.stringify(raw)}: ${problem} (an event's seq; 0 = from the beginning, $ = live events only)`,
      });
      return;
    }
    const since = typeof raw === 'string' && raw !== LIVE_ONLY ? raw : undefined;

    // 2. Take a slot and commit to the stream (or answer 503/429).
    let unsubscribe: (() => Promise<void>) | undefined;
    const stream = this.slots.open(req, res, { chatId }, async () => {
      // Unsubscribing drops the chat's SUBSCRIBE once its last client is gone.
      await unsubscribe?.().catch((error: unknown) =>
        this.log.warn({ err: error, chatId }, 'could not unsubscribe an event stream'),
      );
    });
    if (!stream) return;
    // The last seq written. EventSubscriber never repeats an event, but a cheap ordered check here makes
    // "each id at most once, increasing" a property of the wire itself (e.g. across its reconnect catch-ups).
    let lastSent = since;

    const send = (event: WorkspaceJobEvent) => {
      if (stream.stopped) return;
      if (lastSent !== undefined && compareSeq(event.seq, lastSent) <= 0) return;
      lastSent = event.seq;
      stream.write(sseBlock(event));
    };

    // 3. Replay after `since`, then live. Events reach `send` while this awaits (the replay) and after.
    try {
      const off = await this.producer.subscribe(chatId, send, since === undefined ? {} : { since });
      if (stream.stopped) {
        // The client left (or the dashboard closed) while we were subscribing.
        await off();
        return;
      }
      unsubscribe = off;
      stream.write(': replay done, live from here\n\n');
    } catch (error) {
      // Headers are sent, so no error status: end the stream and let EventSource retry after `retry` ms,
      // resuming from the last id it got.
      this.log.warn({ err: error, chatId }, 'could not subscribe an event stream to the chat');
      await stream.stop();
    }
  };
}
