// The one list of job kinds. JobName, the event schema's job names, the worker's handlers, the producer's
// enqueue, `workspace-jobs enqueue <command>` and the dashboard's actions are all derived from it: a new kind
// is a module in src/jobs/<kind>/ and one entry here.
import type { EventDraft, JobName, JobSuccess } from '../shared/contract.js';
import { dedupeId } from '../shared/keys.js';
import { createWorkspaceJob } from './create-workspace/index.js';
import type { ChatPayload, JobKind } from './job-kind.js';
import { startWorkspaceJob } from './start-workspace/index.js';
import { stopWorkspaceJob } from './stop-workspace/index.js';

export const JOB_KINDS = [startWorkspaceJob, createWorkspaceJob, stopWorkspaceJob] as const;

/** The registry as kinds handled alike. */
const ANY_KINDS: readonly AnyJobKind[] = JOB_KINDS;

/** Every job name, in the registry's order (for zod enums). */
export const JOB_NAME_LIST = JOB_KINDS.map((kind) => kind.name) as [JobName, ...JobName[]];

/** Any registered kind, for code that handles every kind alike (the worker, the CLI, the dashboard). */
export type AnyJobKind = JobKind<{
  name: JobName;
  command: string;
  input: object;
  parsed: ChatPayload;
  payload: ChatPayload;
  field: string;
  success: JobSuccess;
}>;

/** The kind of that name, typed by it. */
export type JobKindOf<N extends JobName> = Extract<(typeof JOB_KINDS)[number], { name: N }>;

/** The types (input, payload, compared fields, success) of the kind of that name. */
export type JobTypes<N extends JobName> = JobKindOf<N> extends JobKind<infer T> ? T : never;

export function jobKind<N extends JobName>(name: N): JobKindOf<N> {
  return JOB_KINDS.find((kind) => kind.name === name) as JobKindOf<N>;
}

/** The kind of a job name from outside (a job added by hand), if it is one of ours. */
export function findJobKind(name: string): AnyJobKind | undefined {
  return ANY_KINDS.find((kind) => kind.name === name);
}

/** The kind of a CLI word or dashboard action (`start`). */
export function findJobKindByCommand(command: string): AnyJobKind | undefined {
  return ANY_KINDS.find((kind) => kind.command === command);
}

/** A job's BullMQ deduplication id: `<name>:<its kind's dedupeBy field>`, e.g. `stop-workspace:<workspaceId>`. */
export function dedupeIdOf(kind: AnyJobKind, payload: ChatPayload): string {
  const by = payload[kind.dedupeBy];
  // Each kind's payload schema requires its dedupeBy field; a kind declaring an optional one is a bug here.
  if (by === undefined) throw new Error(`a ${kind.name} payload has no ${kind.dedupeBy} to deduplicate by`);
  return dedupeId(kind.name, by);
}

/**
 * The job's `queued` event (once per job, docs/design.md §6): the producer publishes it after the add, the
 * worker before its first event when the producer has not yet; whichever is first, the same event.
 */
export function queuedDraft(kind: AnyJobKind, payload: ChatPayload, jobId: string): EventDraft {
  return {
    type: 'progress',
    stage: 'queued',
    job: { id: jobId, name: kind.name, attempt: 0 },
    chatId: payload.chatId,
    ...(payload.workspaceId !== undefined && { workspaceId: payload.workspaceId }),
    message: kind.queuedMessage(payload),
    ...(payload.requestId !== undefined && { data: { request_id: payload.requestId } }),
  };
}

/**
 * For the package's callers, by command: the deduplication id of a job from the id it is deduplicated by
 * (`dedupeIds.start(workspaceId)`, `dedupeIds.create(chatId)`, `dedupeIds.stop(workspaceId)`).
 */
export const dedupeIds = Object.fromEntries(
  ANY_KINDS.map((kind) => [kind.command, (by: string) => dedupeId(kind.name, by)]),
) as Record<(typeof JOB_KINDS)[number]['command'], (by: string) => string>;
