// Appends a job's log lines to provisioner_job_logs in call order. Lines that arrive while a write is in
// flight go out together in the next INSERT, so a chatty build command costs a few statements, not one
// round trip per line, and the ids (which readers sort by) follow the order the lines were produced in.
// Lines are stored only while the job is running under the writer's claim: once a stale run was handed
// back (or failed) by another daemon, what its paused, not dead, daemon still writes is dropped instead of
// being mixed into the re-run's log. The daemon flushes before it completes a job, so its own lines land.
// Each INSERT notifies `provisioner_job_logs` with the batch's last id (a trigger, migrations/0006), which is
// what live followers of the log (src/shared/build-logs.ts) wake on.
import type { Logger } from '../shared/logger.js';
import { prepared, runPrepared, type Pool } from '../shared/postgres.js';
import type { LogLevel } from './executor.js';

export type LogSource = 'provisioner_daemon' | 'provisioner';

export interface JobLogWriterOptions {
  pool: Pool;
  jobId: string;
  /** The claim the lines belong to: provisioner_jobs.worker_id and .claims when the daemon claimed the job. */
  claim: { workerId: string; claims: number };
  /** Longer lines are cut (a runaway line must not bloat the table). Default 4096 characters. */
  maxLineLength?: number;
  /** Lines kept per job; after that one notice is written and the rest dropped. Default 10000. */
  maxLines?: number;
  log?: Logger;
}

const INSERT_LOGS = prepared(
  'provisioner.insert_logs',
  `INSERT INTO provisioner_job_logs (job_id, source, level, stage, output)
   SELECT $1, t.source::log_source, t.level::log_level, t.stage, t.output
   FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY
     AS t(source, level, stage, output, n)
   WHERE EXISTS (SELECT 1 FROM provisioner_jobs
                WHERE id = $1 AND worker_id = $6 AND claims = $7 AND completed_at IS NULL)
   ORDER BY t.n`,
);

interface Row {
  source: LogSource;
  level: LogLevel;
  stage: string;
  output: string;
}

export class JobLogWriter {
  private readonly maxLineLength: number;
  private readonly maxLines: number;
  private queued: Row[] = [];
  private written = 0;
  /** The last write in the chain; every write starts after the previous one finished. */
  private tail: Promise<void> = Promise.resolve();
  /** The write that will take the queued rows, if one is scheduled and has not started yet. */
  private next: Promise<void> | undefined;
  private warned = false;

  constructor(private readonly options: JobLogWriterOptions) {
    this.maxLineLength = options.maxLineLength ?? 4096;
    this.maxLines = options.maxLines ?? 10_000;
  }

  /** Queues a line; resolves once it is stored (or dropped after a database error). Never rejects. */
  append(source: LogSource, level: LogLevel, output: string, stage = ''): Promise<void> {
    if (this.written + this.queued.length > this.maxLines) return this.flush();
    if (this.written + this.queued.length === this.maxLines) {
      this.queued.push({
        source: 'provisioner_daemon',
        level: 'warn',
        stage,
        output: 'log limit reached; further lines dropped',
      });
    } else {
      this.queued.push({ source, level, stage: this.clean(stage), output: this.clean(output) });
    }
    this.next ??= this.tail = this.tail.then(() => {
      this.next = undefined;
      return this.write();
    });
    return this.next;
  }

  /** Resolves once every line appended so far is stored. */
  flush(): Promise<void> {
    return this.tail;
  }

  private clean(text: string): string {
    // Postgres text cannot hold NUL. (A build command's CRLF line endings are the LineSplitter's to drop.)
    const cleaned = text.replace(/\0/g, '');
    return cleaned.length > this.maxLineLength ? `${cleaned.slice(0, this.maxLineLength)}…` : cleaned;
  }

  private async write(): Promise<void> {
    const rows = this.queued;
    this.queued = [];
    if (rows.length === 0) return;
    this.written += rows.length;
    try {
      await runPrepared(this.options.pool, INSERT_LOGS, [
        this.options.jobId,
        rows.map((r) => r.source),
        rows.map((r) => r.level),
        rows.map((r) => r.stage),
        rows.map((r) => r.output),
        this.options.claim.workerId,
        this.options.claim.claims,
      ]);
    } catch (error) {
      // Logs are worth less than the build: losing some must not fail or stall the job.
      if (!this.warned) {
        this.warned = true;
        this.options.log?.warn(
          { err: error, jobId: this.options.jobId },
          'could not write provisioner job logs',
        );
      }
    }
  }
}
