// Appends a job's log lines to provisioner_job_logs in call order, in batches: the first line goes out at
// once, the lines that follow within flushIntervalMs of a write go together in the next INSERT (at most
// maxBatchLines each, a full batch without waiting), so a chatty build command costs a few statements a
// second, not one round trip per line, and the ids (which readers sort by) follow the order the lines were
// produced in. What is still queued when the job ends is not written here: close() hands it to the
// statement that completes the job (src/provisioner/provisioner.ts), so the last lines and the job's end
// commit together.
// Lines are stored only while the job is running under the writer's claim: once a stale run was handed
// back (or failed) by another daemon, what its paused, not dead, daemon still writes is dropped instead of
// being mixed into the re-run's log. Each INSERT also reads the job under that claim, so every batch tells
// the daemon (onJobState) when the job was canceled or is no longer its own.
// Each INSERT notifies `provisioner_job_logs` with the batch's last id (a trigger, migrations/0006), which is
// what live followers of the log (src/shared/build-logs.ts) wake on.
// Each INSERT commits without waiting for its WAL flush (synchronous_commit off for its transaction alone):
// a transaction that sent a NOTIFY holds Postgres's notify lock until its commit is flushed, so every
// notifying commit of every backend waits for the one before it, and a log batch's flush was one of the six
// a zero-delay start waited in line for. A Postgres crash can lose the last batches (a few hundred ms of
// them), never a build's end: the next flushed commit (the completion among them) makes them durable too.
// It can lose their ids' sequence advance with them, after a follower read them; the lines after a server
// start get ids 10^9 further on (migrations/0011), so none gets an id a follower has seen.
import type { Logger } from '../shared/logger.js';
import { prepared, runPrepared, type Pool } from '../shared/postgres.js';
import type { LogLevel } from './executor.js';

export type LogSource = 'provisioner_daemon' | 'provisioner';

/** What a write found of its job: canceled (still this claim's), or no longer this claim's (lines refused). */
export type JobState = 'canceled' | 'lost';

export interface JobLogWriterOptions {
  pool: Pool;
  jobId: string;
  /** The claim the lines belong to: provisioner_jobs.worker_id and .claim_id when the daemon claimed the job. */
  claim: { workerId: string; claimId: string };
  /** Longer lines are cut (a runaway line must not bloat the table). Default 4096 characters. */
  maxLineLength?: number;
  /** Lines kept per job; after that one notice is written and the rest dropped. Default 10000. */
  maxLines?: number;
  /**
   * At most one INSERT per this interval: lines that come within it of the previous write wait for the
   * next one (what a person following the log sees late, at most). Default DEFAULT_LOG_FLUSH_MS (250).
   */
  flushIntervalMs?: number;
  /** Lines per INSERT at most; a full batch is written without waiting for the interval. Default 1000. */
  maxBatchLines?: number;
  /** Called when a write finds the job canceled or no longer this claim's. */
  onJobState?: (state: JobState) => void;
  log?: Logger;
}

/** How long log lines may wait to be batched unless told otherwise. */
export const DEFAULT_LOG_FLUSH_MS = 250;

/** Log lines as the columns of one INSERT (unnest of four text arrays), in order. */
export interface LogColumns {
  sources: string[];
  levels: string[];
  stages: string[];
  outputs: string[];
}

/** The job under this claim: no row when it is not (any more), and whether it was canceled. */
const INSERT_LOGS = prepared(
  'provisioner.insert_logs',
  `WITH job AS (
     SELECT canceled_at IS NOT NULL AS canceled FROM provisioner_jobs
     WHERE id = $1 AND worker_id = $6 AND claim_id = $7 AND completed_at IS NULL
   ), unflushed AS (
     -- Local to this statement's transaction; joined below, so that it is evaluated.
     SELECT set_config('synchronous_commit', 'off', true)
   ), logged AS (
     INSERT INTO provisioner_job_logs (job_id, source, level, stage, output)
     SELECT $1, t.source::log_source, t.level::log_level, t.stage, t.output
     FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY
       AS t(source, level, stage, output, n)
     WHERE EXISTS (SELECT 1 FROM job)
     ORDER BY t.n
   )
   SELECT canceled FROM job, unflushed`,
);

interface Row {
  source: LogSource;
  level: LogLevel;
  stage: string;
  output: string;
}

/** A queued line and the append() promise it settles. */
interface Queued {
  row: Row;
  stored: () => void;
}

export class JobLogWriter {
  private readonly maxLineLength: number;
  private readonly maxLines: number;
  private readonly flushIntervalMs: number;
  private readonly maxBatchLines: number;
  private queued: Queued[] = [];
  private accepted = 0;
  /** The write in flight, if any; writes never overlap. */
  private writing: Promise<void> | undefined;
  /** When the last write started (performance.now()); the next waits for the interval from there. */
  private lastWriteAt = -Infinity;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private warned = false;

  constructor(private readonly options: JobLogWriterOptions) {
    this.maxLineLength = options.maxLineLength ?? 4096;
    this.maxLines = options.maxLines ?? 10_000;
    this.flushIntervalMs = options.flushIntervalMs ?? DEFAULT_LOG_FLUSH_MS;
    this.maxBatchLines = options.maxBatchLines ?? 1000;
    if (!Number.isInteger(this.flushIntervalMs) || this.flushIntervalMs < 0) {
      throw new RangeError(`flushIntervalMs must be a whole number ≥ 0, got ${this.flushIntervalMs}`);
    }
    if (!Number.isInteger(this.maxBatchLines) || this.maxBatchLines < 1) {
      throw new RangeError(`maxBatchLines must be a whole number ≥ 1, got ${this.maxBatchLines}`);
    }
  }

  /**
   * Queues a line; resolves once it is stored, handed to the job's completion (close) or dropped (after a
   * database error, past maxLines, after close). Never rejects.
   */
  append(source: LogSource, level: LogLevel, output: string, stage = ''): Promise<void> {
    if (this.closed || this.accepted > this.maxLines) return Promise.resolve();
    const row: Row =
      this.accepted === this.maxLines
        ? {
            source: 'provisioner_daemon',
            level: 'warn',
            stage,
            output: 'log limit reached; further lines dropped',
          }
        : { source, level, stage: this.clean(stage), output: this.clean(output) };
    this.accepted++;
    return new Promise<void>((stored) => {
      this.queued.push({ row, stored });
      this.schedule();
    });
  }

  /**
   * Stops writing and returns the lines not written yet (at most maxBatchLines: full batches before them are
   * written first), once the writes are done: the caller stores them with the job's completion. Later
   * appends are dropped.
   */
  async close(): Promise<LogColumns> {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    while (this.writing) await this.writing;
    // Full batches still go out on their own: the completion takes at most one batch too.
    while (this.queued.length > this.maxBatchLines) await this.write();
    const rest = this.queued.splice(0);
    for (const { stored } of rest) stored();
    return columns(rest.map(({ row }) => row));
  }

  private clean(text: string): string {
    // Postgres text cannot hold NUL. (A build command's CRLF line endings are the LineSplitter's to drop.)
    const cleaned = text.replace(/\0/g, '');
    return cleaned.length > this.maxLineLength ? `${cleaned.slice(0, this.maxLineLength)}…` : cleaned;
  }

  /** Starts a write when one is due (now: the first line, a full batch; else after the interval). */
  private schedule(): void {
    if (this.closed || this.writing || this.timer || this.queued.length === 0) return;
    const wait = this.lastWriteAt + this.flushIntervalMs - performance.now();
    if (wait <= 0 || this.queued.length >= this.maxBatchLines) {
      // On a microtask: the lines appended in the same tick (an executor's burst) join the batch.
      this.writing = Promise.resolve()
        .then(() => this.write())
        .finally(() => {
          this.writing = undefined;
          this.schedule();
        });
      return;
    }
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.schedule();
    }, wait);
  }

  private async write(): Promise<void> {
    if (this.queued.length === 0) return;
    this.lastWriteAt = performance.now();
    const batch = this.queued.splice(0, this.maxBatchLines);
    const { sources, levels, stages, outputs } = columns(batch.map(({ row }) => row));
    try {
      const { rows } = await runPrepared<{ canceled: boolean }>(this.options.pool, INSERT_LOGS, [
        this.options.jobId,
        sources,
        levels,
        stages,
        outputs,
        this.options.claim.workerId,
        this.options.claim.claimId,
      ]);
      const job = rows[0];
      if (!job) this.options.onJobState?.('lost');
      else if (job.canceled) this.options.onJobState?.('canceled');
    } catch (error) {
      // Logs are worth less than the build: losing some must not fail or stall the job.
      if (!this.warned) {
        this.warned = true;
        this.options.log?.warn(
          { err: error, jobId: this.options.jobId },
          'could not write provisioner job logs',
        );
      }
    } finally {
      for (const { stored } of batch) stored();
    }
  }
}

function columns(rows: Row[]): LogColumns {
  return {
    sources: rows.map((r) => r.source),
    levels: rows.map((r) => r.level),
    stages: rows.map((r) => r.stage),
    outputs: rows.map((r) => r.output),
  };
}
