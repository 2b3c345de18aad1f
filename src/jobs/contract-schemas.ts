// zod schemas of the results and events that leave the process (docs/design.md §6 and §7), built from
// the registry: a result is a failure or the success of one of its kinds, an event names one of its jobs.
// Kept above the registry (the kinds import the primitives of shared/schemas.ts, never this module).
import { z } from 'zod';
import {
  FAILURE_CODES,
  PROGRESS_STAGES,
  RESULT_STAGES,
  type BuildEstimate,
  type BuildLogData,
  type JobResult,
  type QueuePositionData,
  type WorkspaceJobEvent,
} from '../shared/contract.js';
import { JOB_KINDS, JOB_NAME_LIST } from './registry.js';

const jobFailureSchema = z.object({
  kind: z.enum(JOB_NAME_LIST),
  ok: z.literal(false),
  error: z.string(),
  code: z.enum(FAILURE_CODES),
  is_error: z.boolean(),
  detail: z.string().optional(),
  validations: z.array(z.object({ field: z.string(), detail: z.string() })).optional(),
  template_id: z.string().optional(),
  build_id: z.string().optional(),
  settings_url: z.string().optional(),
  error_code: z.string().optional(),
  title: z.string().optional(),
  message: z.string().optional(),
  next_steps: z.array(z.string()).optional(),
  quota: z.object({ credits_consumed: z.number().int(), budget: z.number().int() }).optional(),
});

type SuccessSchema = (typeof JOB_KINDS)[number]['successSchema'];

export const jobResultSchema = z.union([
  jobFailureSchema,
  ...JOB_KINDS.map((kind): SuccessSchema => kind.successSchema),
]);

const envelopeShape = {
  v: z.literal(1),
  seq: z.string(),
  job: z.object({
    id: z.string(),
    name: z.enum(JOB_NAME_LIST),
    attempt: z.number().int(),
  }),
  chatId: z.string(),
  workspaceId: z.string().optional(),
  at: z.string(),
  message: z.string(),
};

export const workspaceJobEventSchema = z.discriminatedUnion('type', [
  z.object({
    ...envelopeShape,
    type: z.literal('progress'),
    stage: z.enum(PROGRESS_STAGES),
    data: z.record(z.string(), z.unknown()).optional(),
  }),
  z.object({
    ...envelopeShape,
    type: z.literal('result'),
    stage: z.enum(RESULT_STAGES),
    data: jobResultSchema,
  }),
]);

const isoTime = z.iso.datetime({ offset: true });

export const buildEstimateSchema = z.object({
  build_ms: z.number().int().nonnegative(),
  done_at: isoTime,
  samples: z.number().int().min(1).max(20),
  agent_ms: z.number().int().nonnegative().optional(),
  ready_at: isoTime.optional(),
});

/** `data` of a `build_log` progress event. */
export const buildLogDataSchema = z.object({
  build_id: z.string(),
  transition: z.string(),
  lines: z
    .array(
      z.object({ id: z.string(), at: isoTime, level: z.string(), stage: z.string(), output: z.string() }),
    )
    .max(20),
  last_log_id: z.string(),
  skipped: z.number().int().nonnegative(),
});

/** `data` of a `queue_position` progress event. */
export const queuePositionDataSchema = z.object({
  build_id: z.string(),
  transition: z.string(),
  position: z.number().int().min(1),
  pending: z.number().int().min(1),
  estimate: buildEstimateSchema.optional(),
});

/** Assignable both ways: the same type. */
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
// The hand-written types (contract.ts) and these schemas cannot drift apart: if they do, `true` is not
// assignable to `false` here and the build fails. Required<> (it distributes over the union's members):
// otherwise an optional field that only one side has would pass, being assignable both ways.
const _resultSchemaAgrees: Same<Required<z.output<typeof jobResultSchema>>, Required<JobResult>> = true;
const _estimateSchemaAgrees: Same<
  Required<z.output<typeof buildEstimateSchema>>,
  Required<BuildEstimate>
> = true;
const _buildLogSchemaAgrees: Same<z.output<typeof buildLogDataSchema>, BuildLogData> = true;
const _queueSchemaAgrees: Same<
  Required<z.output<typeof queuePositionDataSchema>>,
  Required<QueuePositionData>
> = true;
const _eventSchemaAgrees: Same<z.output<typeof workspaceJobEventSchema>, WorkspaceJobEvent> = true;
