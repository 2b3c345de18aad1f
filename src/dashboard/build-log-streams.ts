// GET /builds/:buildId/logs: a build's log (provisioner_job_logs) as Server-Sent Events, the full log behind
// the `build_log` event previews (docs/dashboard.md).
//
//   event: lines   id: <the last line's id>   data: [BuildLogLine, ...]   (at most 100 lines, in id order)
//   event: end     data: { "build_id", "done", "last_log_id" }             then the server closes the stream
//
// `?after=<log id>` (0 = from the first line; the `Last-Event-ID` header wins, so an EventSource's own
// reconnect resumes after the last batch it got, with no gap and no duplicate) and `?follow=1`: keep the
// stream open and send lines as the provisioner writes them until the build's provisioner job completes,
// then the last lines and `end`. Without follow: the lines there are now, then `end`. `done` says whether
// the job had completed. An EventSource reconnects after any close, so a page closes it on `end`.
//
// Lines are read in pages, and each event is written only once the socket has drained: a 10,000-line log is
// never buffered whole for a slow client, and a page of long lines (500 × 4 KiB) does not pass the 1 MiB
// buffer bound that cuts a client off. A client that reads nothing for DRAIN_TIMEOUT_MS is cut off (it
// resumes with Last-Event-ID).
import type { Request, Response } from 'express';
import { followBuildLogs, logIdProblem, readBuildLogs, UnknownBuildError } from '../shared/build-logs.js';
import type { BuildLogLine } from '../shared/build-logs.js';
import type { Logger } from '../shared/logger.js';
import type { LogReader } from '../shared/build-logs.js';
import { idSchema } from '../shared/schemas.js';
import type { PgNotificationHub } from '../shared/notifications.js';
import type { EventStream, EventStreamSlots } from './stream-slots.js';

/** Lines per `lines` event: a few hundred KiB at most, even with 4 KiB lines. */
const LINES_PER_EVENT = 100;
/** Lines per database read. */
const LINES_PER_READ = 500;
/** How long a client may leave a full socket buffer unread before it is cut off. */
const DRAIN_TIMEOUT_MS = 30_000;

export class BuildLogStreams {
  constructor(
    private readonly db: LogReader,
    private readonly changes: PgNotificationHub,
    private readonly slots: EventStreamSlots,
    private readonly log: Logger,
  ) {}

  readonly handle = async (req: Request, res: Response): Promise<void> => {
    // 1. Validate before committing to a 200 (a 4xx also stops an EventSource from retrying).
    const parsedBuildId = idSchema.safeParse(String(req.params.buildId));
    if (!parsedBuildId.success) {
      res.status(400).json({ error: `invalid buildId: ${JSON.stringify(req.params.buildId)} is not a UUID` });
      return;
    }
    const buildId = parsedBuildId.data;
    const header = req.get('last-event-id')?.trim();
    const [raw, afterFrom] =
      header !== undefined && header !== '' ? [header, 'Last-Event-ID'] : [req.query.after, 'after'];
    const afterProblem =
      raw === undefined ? undefined : typeof raw === 'string' ? logIdProblem(raw) : 'expected a single value';
    if (afterProblem !== undefined) {
      res.status(400).json({ error: `invalid ${afterFrom} ${JSON.stringify(raw)}: ${afterProblem}` });
      return;
    }
    const after = typeof raw === 'string' ? raw : '0';
    const followParam = req.query.follow;
    const follow = followParam === '1' || followParam === 'true';
    if (followParam !== undefined && !follow && followParam !== '0' && followParam !== 'false') {
      res.status(400).json({ error: `invalid follow ${JSON.stringify(followParam)}: expected 1 or 0` });
      return;
    }

    // 2. The first page, which also tells an unknown build (404) before anything is committed.
    if (follow) await this.changes.ready();
    const stopping = new AbortController();
    const batches = followBuildLogs(this.db, this.changes, buildId, {
      after,
      follow,
      batchSize: LINES_PER_READ,
      signal: stopping.signal,
    });
    let first: IteratorResult<BuildLogLine[]>;
    try {
      first = await batches.next();
    } catch (error) {
      if (error instanceof UnknownBuildError) {
        res.status(404).json({ error: `no build ${buildId}` });
        return;
      }
      throw error;
    }

    // 3. Take a slot and commit (or 503/429), then send pages until the iterator ends.
    const stream = this.slots.open(req, res, { buildId }, async () => {
      stopping.abort(new Error('the log stream closed'));
      await batches.return();
    });
    if (!stream) {
      await batches.return();
      return;
    }
    let last = after;
    try {
      for (let batch = first; !batch.done; batch = await batches.next()) {
        for (let i = 0; i < batch.value.length; i += LINES_PER_EVENT) {
          const lines = batch.value.slice(i, i + LINES_PER_EVENT);
          last = lines.at(-1)!.id;
          stream.write(`id: ${last}\nevent: lines\ndata: ${JSON.stringify(lines)}\n\n`);
          if (!(await drained(stream))) return;
        }
      }
      const end = await readBuildLogs(this.db, buildId, last, 0);
      stream.write(
        `event: end\ndata: ${JSON.stringify({ build_id: buildId, done: end?.done ?? true, last_log_id: last })}\n\n`,
      );
    } catch (error) {
      if (stream.stopped) return;
      // Headers are sent, so no error status: end the stream; an EventSource retries from the last id it got.
      this.log.warn({ err: error, buildId }, 'build log stream failed');
    }
    await stream.stop();
  };
}

/** True once the socket can take more; false when the stream stopped or the client read nothing for too long. */
async function drained(stream: EventStream): Promise<boolean> {
  if (stream.stopped) return false;
  if (!stream.res.writableNeedDrain) return true;
  const { res } = stream;
  const ready = await new Promise<boolean>((resolve) => {
    const finish = (ok: boolean) => {
      clearTimeout(timer);
      res.off('drain', onDrain);
      res.off('close', onClose);
      resolve(ok);
    };
    const onDrain = () => finish(true);
    const onClose = () => finish(false);
    const timer = setTimeout(() => finish(false), DRAIN_TIMEOUT_MS);
    res.on('drain', onDrain);
    res.on('close', onClose);
  });
  if (!ready) await stream.stop();
  return ready && !stream.stopped;
}
