// Each attempt of a job is a span `attempt <job name>`: a child of BullMQ's own `process` span when
// BullMQ traces too, and linked (not parented) to the span that enqueued the job, whose context the job
// carries in its options (WorkspaceJobOptions.traceContext). Builds the attempt creates link to it in turn.
import type { Job } from 'bullmq';
import type { WorkspaceJobOptions } from '../producer/job-options.js';
import { isFailure, type JobFailure, type JobProgress } from '../shared/contract.js';
import { ATTR, inSpan, linkTo } from '../shared/telemetry.js';

type Processor<R> = (job: Job, token: string | undefined) => Promise<R>;

/**
 * `process` wrapped in an attempt span; its outcome is `ok`, a final failure's code, `delayed` or `error`.
 * An expected failure result is returned, not thrown: its span carries the code and is not an error.
 */
export function traceAttempts<R>(process: Processor<R>): Processor<R> {
  // Two declared parameters: BullMQ makes an AbortController for each job only for a processor whose length
  // is 3; the worker stops its attempts with one signal of its own (ProcessorOptions.shutdown).
  return (job, token) =>
    inSpan(
      `attempt ${job.name}`,
      {
        links: linkTo((job.opts as WorkspaceJobOptions).traceContext),
        attributes: {
          [ATTR.jobId]: job.id,
          [ATTR.jobName]: job.name,
          [ATTR.attempt]: job.attemptsMade + 1,
          ...(typeof job.data?.chatId === 'string' && { [ATTR.chatId]: job.data.chatId }),
        },
      },
      async (span) => {
        // A span that records nothing gets no outcome: returned, not awaited, so that a job waiting for its
        // build does not hold this frame too (issue 11).
        if (!span.isRecording()) return process(job, token);
        try {
          const result = await process(job, token);
          const code = (result as Partial<JobFailure> | undefined)?.code;
          span.setAttribute(ATTR.jobOutcome, code ?? 'ok');
          return result;
        } catch (error) {
          span.setAttribute(ATTR.jobOutcome, outcomeOf(job, error));
          throw error;
        }
      },
      (error) => !isDelay(error),
    );
}

function outcomeOf(job: Job, error: unknown): string {
  if (isDelay(error)) return 'delayed';
  if ((error as Error | undefined)?.name !== 'UnrecoverableError') return 'error';
  // The processor keeps a final result in the job's progress before it fails the job.
  const result = (job.progress as Partial<JobProgress> | undefined)?.result;
  return result && isFailure(result) ? result.code : 'failed';
}

/** A job re-queued on purpose (chat lock busy, worker shutting down): not a failure. */
function isDelay(error: unknown): boolean {
  return (error as Error | undefined)?.name === 'DelayedError';
}
