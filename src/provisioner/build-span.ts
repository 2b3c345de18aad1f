// A build a provisioner daemon runs is a span `build <transition>`: a trace of its own, linked (not
// parented) to the job attempt that created the build, whose context the provisioner job row carries
// (provisioner_jobs.trace_context). A build handed to another daemon gets a span there too, with the same link.
import { SpanStatusCode, trace } from '@opentelemetry/api';
import { ATTR, inSpan, linkTo } from '../shared/telemetry.js';
import { JobCanceledError, JobLostError } from './abort-reasons.js';
import type { BuildJob } from './executor.js';

/** How the executor's run ended, as the daemon sees it. */
export type BuildOutcome =
  { kind: 'succeeded' } | { kind: 'failed'; message: string } | { kind: 'aborted'; reason: unknown };

/** Runs `execute` (claim to settlement of one build) in its build span. */
export function traceBuild(
  provisionerId: string,
  job: BuildJob,
  traceContext: unknown,
  execute: () => Promise<void>,
): Promise<void> {
  return inSpan(
    `build ${job.transition}`,
    {
      root: true,
      links: linkTo(traceContext),
      attributes: {
        [ATTR.provisionerJobId]: job.jobId,
        [ATTR.buildId]: job.buildId,
        [ATTR.buildNumber]: job.buildNumber,
        [ATTR.transition]: job.transition,
        [ATTR.workspaceId]: job.workspaceId,
        [ATTR.provisionerId]: provisionerId,
      },
    },
    execute,
  );
}

/** Records the executor's outcome on the active build span. */
export function recordBuildOutcome(outcome: BuildOutcome): void {
  const span = trace.getActiveSpan();
  if (!span) return;
  span.setAttribute(ATTR.buildOutcome, outcomeLabel(outcome));
  if (outcome.kind === 'failed') span.setStatus({ code: SpanStatusCode.ERROR, message: outcome.message });
}

function outcomeLabel(outcome: BuildOutcome): string {
  if (outcome.kind !== 'aborted') return outcome.kind;
  if (outcome.reason instanceof JobCanceledError) return 'canceled';
  if (outcome.reason instanceof JobLostError) return 'lost';
  return 'aborted';
}
