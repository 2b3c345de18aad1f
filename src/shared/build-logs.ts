// A build's log, as stored by the provisioner in provisioner_job_logs: read in pages after a cursor, or
// followed live. The cursor is a line's id (a bigserial, as a decimal string): ids only grow, across a
// Postgres crash too (migrations/0011), so "after X" is exact across reconnects, with no gap and no
// duplicate. A crash may lose the last unflushed log batches after a follower read them: it keeps what it
// got (nothing tells it), and a read from the start no longer has them. Following waits on the NOTIFY every log insert
// raises (migrations/0006) and on the job's own change notification, so a follower costs no polling.
import type { ChangeWaiter } from '../worker/ports.js';
import { topics } from '../worker/ports.js';
import { WaitTimeoutError } from './errors.js';
import type { QueryPool } from './contract.js';
import { prepared, preparedQuery } from './postgres.js';
import { ValidationError } from './schemas.js';

export interface BuildLogLine {
  /** provisioner_job_logs.id as a decimal string; the cursor (`after`) of the next read. */
  id: string;
  /** When the line was stored, ISO 8601. */
  at: string;
  level: string;
  stage: string;
  /** `provisioner_daemon` (the daemon's own lines) or `provisioner` (the build's output). */
  source: string;
  output: string;
}

export interface BuildLogPage {
  /** At most `limit` lines after the cursor, in id order. */
  lines: BuildLogLine[];
  /** The build's provisioner job has completed: no line comes after the ones it had when this was read. */
  done: boolean;
  /** The build's provisioner job. */
  jobId: string;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const LOG_ID = /^(0|[1-9][0-9]{0,18})$/;
const MAX_LOG_ID = 2n ** 63n - 1n;

/** Why `after` is not a log id, or undefined when it is one (`0` = from the first line). */
export function logIdProblem(after: string): string | undefined {
  if (!LOG_ID.test(after) || BigInt(after) > MAX_LOG_ID)
    return 'expected a log line id (a non-negative integer, 0 = from the first line)';
  return undefined;
}

function checkAfter(after: string): void {
  const problem = logIdProblem(after);
  if (problem !== undefined) throw new ValidationError(`invalid after ${JSON.stringify(after)}: ${problem}`);
}

/** Anything that runs a query: a pool, a client, the producer's QueryPool. */
export type LogReader = Pick<QueryPool, 'query'>;

// One statement, so `done` and the lines come from one snapshot: when the job had completed, every line
// written before completion is in this read (the daemon flushes its log before completing).
const READ_BUILD_LOGS = prepared(
  'build_logs.read',
  `SELECT b.job_id, j.completed_at IS NOT NULL AS done,
          l.id, l.created_at, l.level, l.stage, l.source, l.output
     FROM workspace_builds b
     JOIN provisioner_jobs j ON j.id = b.job_id
     LEFT JOIN LATERAL (
       SELECT id, created_at, level::text, stage, source::text, output
         FROM provisioner_job_logs
        WHERE job_id = b.job_id AND id > $2::bigint
        ORDER BY id
        LIMIT $3
     ) l ON true
    WHERE b.id = $1
    ORDER BY l.id`,
);

type Row = {
  job_id: string;
  done: boolean;
  id: string | null;
  created_at: Date | null;
  level: string | null;
  stage: string | null;
  source: string | null;
  output: string | null;
};

/**
 * The build's log lines after `after` (at most `limit`), or undefined when there is no such build (an id
 * that is not a UUID names none). Throws a ValidationError for an `after` that is not a log id.
 */
export async function readBuildLogs(
  db: LogReader,
  buildId: string,
  after: string,
  limit: number,
): Promise<BuildLogPage | undefined> {
  checkAfter(after);
  if (!Number.isInteger(limit) || limit < 0)
    throw new ValidationError(`invalid limit ${limit}: expected an integer ≥ 0`);
  if (!UUID.test(buildId)) return undefined;
  const { rows } = await db.query<Row>(preparedQuery(READ_BUILD_LOGS, [buildId, after, limit]));
  const first = rows[0];
  if (!first) return undefined;
  const lines = rows
    .filter((r) => r.id !== null)
    .map((r) => ({
      id: r.id!,
      at: r.created_at!.toISOString(),
      level: r.level!,
      stage: r.stage!,
      source: r.source!,
      output: r.output!,
    }));
  return { lines, done: first.done, jobId: first.job_id };
}

/** The build to follow does not exist. */
export class UnknownBuildError extends Error {
  override name = 'UnknownBuildError';
  constructor(readonly buildId: string) {
    super(`no build ${buildId}`);
  }
}

export interface FollowBuildLogsOptions {
  /** Lines after this log id. Default '0' (from the first line). */
  after?: string;
  /** false: end after the lines there are now, without waiting for more. Default true. */
  follow?: boolean;
  /** Lines per read (and so at most per batch). Default 1000. */
  batchSize?: number;
  /**
   * Longest wait for a new line or the job's completion; past it the iterator throws a WaitTimeoutError.
   * Default 3600000 (1 hour: longer than any build's timeout, which completes the job).
   */
  idleTimeoutMs?: number;
  /** Ends the iterator: the pending next() rejects with the signal's reason and every listener is removed. */
  signal?: AbortSignal;
}

/**
 * The build's log lines after `after`, in batches in id order, until its provisioner job has completed and
 * the last lines are read (or, without `follow`, until the lines there are now are read); then the iterator
 * ends. The first batch is yielded at once, even when empty, so a
 * caller learns straight away that the build exists (the first next() throws UnknownBuildError otherwise);
 * later batches are never empty. Breaking out of the loop (or aborting) removes the listeners.
 */
export async function* followBuildLogs(
  db: LogReader,
  /** Needed with `follow` (the default); unused without. */
  waiter: ChangeWaiter | undefined,
  buildId: string,
  options: FollowBuildLogsOptions = {},
): AsyncGenerator<BuildLogLine[], void, undefined> {
  const { signal, follow = true, batchSize = 1000, idleTimeoutMs = 3_600_000 } = options;
  let after = options.after ?? '0';
  checkAfter(after);
  if (!Number.isInteger(batchSize) || batchSize < 1)
    throw new ValidationError(`invalid batchSize ${batchSize}: expected an integer ≥ 1`);
  if (follow && !waiter) throw new Error('following build logs needs a ChangeWaiter (LISTEN connection)');
  signal?.throwIfAborted();
  const first = await readBuildLogs(db, buildId, after, batchSize);
  if (!first) throw new UnknownBuildError(buildId);
  let page = first;
  const watched = [topics.provisionerJobLogs(page.jobId), topics.provisionerJob(page.jobId)];
  let yieldEmpty = true;
  for (;;) {
    if (page.lines.length > 0 || yieldEmpty) {
      yieldEmpty = false;
      yield page.lines;
      after = page.lines.at(-1)?.id ?? after;
    }
    // A full page may have more behind it, even once the job is done.
    if (page.lines.length === batchSize) {
      signal?.throwIfAborted();
      page = (await readBuildLogs(db, buildId, after, batchSize)) ?? { ...page, lines: [] };
      continue;
    }
    if (page.done || !follow) return;
    const cursor = after;
    page = await waiter!
      .waitFor(
        watched,
        async () => {
          const next = await readBuildLogs(db, buildId, cursor, batchSize);
          // The build vanished (deleted): nothing more will come.
          if (!next) return { lines: [], done: true, jobId: first.jobId };
          return next.lines.length > 0 || next.done ? next : undefined;
        },
        // No timed re-check: every log INSERT (0006) and the job's completion (0001) notify.
        { timeoutMs: idleTimeoutMs, signal },
      )
      .catch((error: unknown) => {
        if (!(error instanceof WaitTimeoutError)) throw error;
        throw new WaitTimeoutError(
          `build ${buildId} wrote no log line and did not complete for ${idleTimeoutMs} ms`,
          idleTimeoutMs,
        );
      });
  }
}
