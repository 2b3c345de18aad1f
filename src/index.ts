// The package entry (`import { WorkspaceJobsProducer } from 'workspace-jobs'`): what the chat backend
// needs to enqueue jobs and follow them, and the public shapes of docs/design.md §3, §4, §6 and §7.
export {
  WorkspaceJobsProducer,
  JobNotFoundError,
  ProducerClosedError,
  type ProducerOptions,
  type EnqueuedJob,
  type EnqueuedStart,
  type EnqueuedCreate,
  type EnqueuedStop,
  type WaitForResultOptions,
  type SubscribeOptions,
  type BuildLogsOptions,
} from './producer/producer.js';
export { UnknownBuildError, type BuildLogLine } from './shared/build-logs.js';
// A producer built with `new` follows build logs through one of these (ProducerOptions.changes).
export { PgNotificationHub, type PgNotificationHubOptions } from './shared/notifications.js';
export { JOB_BACKOFF, JOB_NAMES, REMOVE_ON_COMPLETE, REMOVE_ON_FAIL } from './producer/job-options.js';

export {
  QUEUE_NAME,
  PROGRESS_STAGES,
  RESULT_STAGES,
  FAILURE_CODES,
  INSUFFICIENT_QUOTA,
  isFailure,
  type JobName,
  type StartWorkspacePayload,
  type CreateWorkspacePayload,
  type StartWorkspaceField,
  type CreateWorkspaceField,
  type ProgressStage,
  type ResultStage,
  type JobRef,
  type WorkspaceJobEvent,
  type ProgressEvent,
  type ResultEvent,
  type EventDraft,
  type AgentReadiness,
  type StartWorkspaceSuccess,
  type CreateWorkspaceSuccess,
  type FailureCode,
  type Validation,
  type JobFailure,
  type QuotaReport,
  type StartWorkspaceResult,
  type CreateWorkspaceResult,
  type JobSuccess,
  type JobResult,
  type JobProgress,
  type QueryPool,
} from './shared/contract.js';
export { ValidationError } from './shared/schemas.js';
export {
  startWorkspacePayloadSchema,
  startWorkspaceInputSchema,
  type StartWorkspaceInput,
} from './jobs/start-workspace/schemas.js';
export { createWorkspacePayloadSchema, type CreateWorkspaceInput } from './jobs/create-workspace/schemas.js';
export {
  stopWorkspacePayloadSchema,
  stopWorkspaceInputSchema,
  type StopWorkspaceInput,
  type StopWorkspacePayload,
  type StopWorkspaceField,
  type StopWorkspaceSuccess,
} from './jobs/stop-workspace/schemas.js';
export { workspaceJobEventSchema, jobResultSchema } from './jobs/contract-schemas.js';
export { WaitTimeoutError } from './shared/errors.js';
export { ConfigError, DEFAULT_JOB_ATTEMPTS, loadConfig, type Config } from './shared/config.js';
export { redisKeys } from './shared/keys.js';
export { dedupeIds } from './jobs/registry.js';
// The chat backend can count its enqueues: `new WorkspaceJobsProducer({ ..., metrics: createMetrics() })`
// and serve `metrics.registry` on its own /metrics.
export { createMetrics, type Metrics, type MetricsOptions } from './shared/metrics.js';
