// What a job kind is: everything the producer, the worker, the CLI and the dashboard need to know about one
// kind of job, in one object. Each kind lives in src/jobs/<kind>/ and exports one JobKind; src/jobs/registry.ts
// lists them, and everything that has to know the kinds (JobName, the event schema's job names, the worker's
// handlers, the producer's enqueue, `enqueue <command>`, the dashboard's actions) is derived from that list.
import type { z } from 'zod';
import type { JobFailure } from '../shared/contract.js';
import type { JobContext } from '../worker/ports.js';

/** What every payload has, whatever its kind: which chat (and, once known, which workspace). */
export interface ChatPayload {
  chatId: string;
  ownerId: string;
  workspaceId?: string;
  requestId?: string;
}

/** The types one kind is made of; each kind names its own (see start-workspace/index.ts). */
export interface JobKindTypes {
  /** The BullMQ job name (`start-workspace`). */
  name: string;
  /** The word of `workspace-jobs enqueue <command>` and of the dashboard's `/api/chats/:chatId/<command>`. */
  command: string;
  /** What a caller passes to the producer (the input schema's z.input). */
  input: object;
  /** The input once validated: the payload, maybe without the fields `resolve` fills. */
  parsed: ChatPayload;
  /** What the job carries and the worker parses. */
  payload: ChatPayload;
  /** The payload fields a deduplicated enqueue is compared on (EnqueuedJob's `differs`). */
  field: string;
  /** Its success result. */
  success: { kind: string; ok: true };
}

/** What the producer can look up for a kind's `resolve` (throwing ValidationError when it cannot). */
export interface EnqueueLookups {
  /** The chat's workspace (chats.workspace_id); the chat must exist and have one. */
  workspaceOfChat(chatId: string): Promise<string>;
}

/** The `resolve` of a kind whose payload names the chat's workspace, which a caller may leave out. */
export async function resolveChatWorkspace<Input extends { chatId: string; workspaceId?: string }>(
  input: Input,
  lookups: EnqueueLookups,
): Promise<Input & { workspaceId: string }> {
  return { ...input, workspaceId: input.workspaceId ?? (await lookups.workspaceOfChat(input.chatId)) };
}

export interface JobKind<T extends JobKindTypes = JobKindTypes> {
  readonly name: T['name'];
  readonly command: T['command'];
  /** One line for `--help`: what the job does. */
  readonly summary: string;
  /**
   * What the producer, the CLI and the dashboard accept, as a zod object: its keys are the fields a caller
   * may give (the CLI's flags and the dashboard's body fields are derived from them).
   */
  readonly inputSchema: z.ZodType<T['parsed'], T['input']> & { readonly shape: Record<string, z.ZodType> };
  /** What the worker parses: anyone with Redis access can add a job, so it validates again. */
  readonly payloadSchema: z.ZodType<T['payload']>;
  /**
   * The payload field the job is deduplicated by: at most one job of this kind waits, is delayed or runs per
   * value of it (BullMQ's deduplication id is `<name>:<value>`, see registry.ts dedupeIdOf).
   */
  readonly dedupeBy: 'chatId' | 'workspaceId';
  readonly comparedFields: readonly T['field'][];
  /** Fills what a caller may omit (e.g. the workspace, from the chat); without it the input is the payload. */
  resolve?(input: T['parsed'], lookups: EnqueueLookups): Promise<T['payload']>;
  /** The enqueue's announcement on the chat's stream: `Start of workspace … queued`. */
  queuedMessage(payload: T['payload']): string;
  /** The deduplicated enqueue's announcement, before ` as job <id>`: `A start of this workspace is already queued`. */
  readonly alreadyQueued: string;
  /** The success result, as the result event's `data` (its `kind` is this kind's name, `ok` is true). */
  readonly successSchema: z.ZodType<T['success']>;
  /** The domain logic, under the chat lock the processor holds. Thrown errors are retried. */
  run(ctx: JobContext, payload: T['payload']): Promise<T['success'] | JobFailure>;
  /** The one sentence of a success: the result event's `message`. */
  describe(success: T['success']): string;
}

/**
 * Input fields a person never types at the CLI or on the live page: the chat (the command's --chat, the
 * page's selection), its owner (read from the chat), its workspace (the producer looks it up) and the request
 * id (the chat backend's own).
 */
const FILLED_FOR_A_PERSON: ReadonlySet<string> = new Set(['chatId', 'ownerId', 'workspaceId', 'requestId']);

/**
 * The fields a person gives for a job of this kind (the CLI's flags, the page's request body): the input
 * schema's keys but those filled for them, in the schema's order, and whether each is required.
 */
export function personFields(kind: JobKind): { name: string; required: boolean }[] {
  return Object.entries(kind.inputSchema.shape)
    .filter(([name]) => !FILLED_FOR_A_PERSON.has(name))
    .map(([name, schema]) => ({ name, required: !schema.safeParse(undefined).success }));
}
