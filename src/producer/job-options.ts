// BullMQ options of every job the producer adds (docs/design.md §4). Kept apart from the producer so
// that the worker, the CLI and tests can see exactly what a job was enqueued with.
import type { JobsOptions } from 'bullmq';
import { JOB_KINDS } from '../jobs/registry.js';
import type { TraceCarrier } from '../shared/telemetry.js';

/**
 * Exponential backoff from 2 s with 50% jitter: BullMQ 6.7 computes the retry delay of attempt n as a
 * random value in [0.5, 1) x 2000 x 2^(n-1) ms, so retries of many jobs that failed together spread out.
 */
export const JOB_BACKOFF = { type: 'exponential', delay: 2_000, jitter: 0.5 } as const;

/**
 * Completed jobs stay a week, as failed ones do, and at most the newest 5000 of them, so `waitForResult`
 * and Bull Board can read them. The week is for expected failure results (manual_update_required, ...),
 * which complete and were kept a week in the failed list before; it cannot be theirs alone, since each job
 * that completes trims the one completed set by its own options. The count bounds memory either way.
 */
export const REMOVE_ON_COMPLETE = { age: 7 * 24 * 60 * 60, count: 5_000 } as const;

/** Failed jobs (internal, invalid_payload) stay a week: operators look at them in Bull Board. */
export const REMOVE_ON_FAIL = { age: 7 * 24 * 60 * 60 } as const;

/**
 * The newest entries of a job's BullMQ log (Bull Board's Logs tab: its events, and its build's lines in
 * batches) that are kept: a chatty build cannot grow a job's log without bound.
 */
export const KEEP_LOGS = 1_000;

export interface JobOptionsInput {
  /** A fresh job id; a duplicate add returns the existing job's id instead, which is how dedup is seen. */
  jobId: string;
  /** BullMQ deduplication id (the kind's `dedupeId`, e.g. `start-workspace:<workspaceId>`). */
  deduplicationId: string;
  /** JOB_ATTEMPTS. */
  attempts: number;
  /** The enqueue span's context; each attempt's span links to it. */
  traceContext?: TraceCarrier;
}

/** Our options on top of BullMQ's: BullMQ stores options it does not know with the job as they are. */
export interface WorkspaceJobOptions extends JobsOptions {
  /** The enqueue span's context (W3C Trace Context), absent when the enqueue was not traced. */
  traceContext?: TraceCarrier;
}

export function jobOptions(input: JobOptionsInput): WorkspaceJobOptions {
  return {
    jobId: input.jobId,
    // Only while the job is waiting, delayed or active: the key goes when the job completes or fails, so
    // the next start of the same workspace creates a new job. Never dedupe with jobId itself: a finished
    // job with that id would swallow every later add until it is removed.
    deduplication: { id: input.deduplicationId },
    attempts: input.attempts,
    backoff: { ...JOB_BACKOFF },
    removeOnComplete: { ...REMOVE_ON_COMPLETE },
    removeOnFail: { ...REMOVE_ON_FAIL },
    keepLogs: KEEP_LOGS,
    // BullMQ would carry its own span context in the job and parent every attempt's spans to the enqueue,
    // retries included, in one trace; our attempts link to the enqueue span (traceContext) instead.
    telemetry: { omitContext: true },
    ...(input.traceContext !== undefined && { traceContext: input.traceContext }),
  };
}

/** Each kind's job name by its command (`JOB_NAMES.start` is `start-workspace`), from the registry. */
export const JOB_NAMES = Object.fromEntries(JOB_KINDS.map((kind) => [kind.command, kind.name])) as {
  readonly [Kind in (typeof JOB_KINDS)[number] as Kind['command']]: Kind['name'];
};
