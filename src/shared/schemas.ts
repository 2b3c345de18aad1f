// zod schemas of everything that crosses a process boundary: job payloads (CONTRACT.md section 4) and
// events (section 6). The producer validates with them at the edge; the worker validates again because
// anyone with Redis access can add a job.
import { z } from 'zod';
import { FAILURE_CODES, PROGRESS_STAGES, RESULT_STAGES } from './contract.js';
import type {
  CreateWorkspacePayload,
  JobResult,
  StartWorkspacePayload,
  WorkspaceJobEvent,
} from './contract.js';

/**
 * Every id at every edge (producer, CLI, dashboard, worker): an RFC 9562 UUID of version 1-8 (or the nil/max
 * UUID), so that a version-0 string the database would accept is refused the same way everywhere. Parsed in
 * lower case: Postgres compares UUIDs case-blind, but Redis keys (channels, dedup ids, locks) are strings, so
 * `8F2C…` and `8f2c…` would be two jobs and two channels.
 */
export const idSchema = z.uuid().toLowerCase();

// Object.prototype's own keys (`__proto__`, `constructor`, `toString`, …): as a key of a plain object they
// reach the prototype instead of a value (zod's z.record even drops `__proto__` silently), so none may name
// a parameter.
const PROTOTYPE_KEYS: ReadonlySet<string> = new Set(Object.getOwnPropertyNames(Object.prototype));
const PROTOTYPE_KEY_MESSAGE = 'is reserved (a property of every JavaScript object), not a parameter name';

/**
 * A parameter name as Coder accepts it: Coder requires a non-empty name matching one the template declares
 * ("workspace build parameter name is missing"), and allows spaces and punctuation in it (its provider hashes
 * names into environment variables for that reason; Coder Tasks' parameter is "AI Prompt"). On top of that:
 * at most 128 characters, no control or invisible format characters, no whitespace at either end (a pasting
 * slip that never matches a declared name), and no Object.prototype key.
 */
export const parameterNameSchema = z
  .string()
  .min(1, { message: 'a parameter name must not be empty' })
  .max(128, { message: 'a parameter name must be at most 128 characters' })
  .regex(/^\P{C}*$/u, { message: 'a parameter name must not contain control or format characters' })
  .regex(/^(?!\s)[^]*(?<!\s)$/u, { message: 'a parameter name must not start or end with whitespace' })
  .refine((name) => !PROTOTYPE_KEYS.has(name), { message: PROTOTYPE_KEY_MESSAGE });

/**
 * `{ [name]: value }`, returned without a prototype. `__proto__` is checked before z.record, which skips
 * that key without an issue.
 */
const parametersSchema = z
  .preprocess(
    // Typed for z.input (what a TypeScript caller may pass); at run time `input` is anything a JS caller sent.
    (input: Record<string, string>, ctx) => {
      if (input !== null && typeof input === 'object' && Object.hasOwn(input, '__proto__')) {
        ctx.issues.push({ code: 'custom', message: PROTOTYPE_KEY_MESSAGE, path: ['__proto__'], input });
      }
      return input;
    },
    z.record(parameterNameSchema, z.string().max(4096)),
  )
  .transform((parameters) => Object.assign(Object.create(null) as Record<string, string>, parameters));
const requestId = z.string().min(1).max(200);

export const startWorkspacePayloadSchema = z.strictObject({
  chatId: idSchema,
  ownerId: idSchema,
  workspaceId: idSchema,
  parameters: parametersSchema.optional(),
  requestId: requestId.optional(),
}) satisfies z.ZodType<StartWorkspacePayload>;

/** What the chat backend passes to `startWorkspace()`: the workspace is looked up from the chat when omitted. */
export const startWorkspaceInputSchema = startWorkspacePayloadSchema.extend({
  workspaceId: idSchema.optional(),
});

/** The argument of `startWorkspace()`, derived from the schema that validates it so that the two cannot drift. */
export type StartWorkspaceInput = z.input<typeof startWorkspaceInputSchema>;

// Workspace names follow Coder's rule: letters, digits and single hyphens, at most 32 characters.
export const workspaceNameSchema = z.string().regex(/^[a-zA-Z0-9](?:[a-zA-Z0-9]|-(?=[a-zA-Z0-9])){0,31}$/, {
  message: 'must be 1-32 letters, digits or single hyphens, starting and ending with a letter or digit',
});

export const createWorkspacePayloadSchema = z.strictObject({
  chatId: idSchema,
  ownerId: idSchema,
  templateId: idSchema,
  name: workspaceNameSchema.optional(),
  parameters: parametersSchema.optional(),
  requestId: requestId.optional(),
}) satisfies z.ZodType<CreateWorkspacePayload>;

/** The argument of `createWorkspace()`: the create-workspace payload as the caller writes it. */
export type CreateWorkspaceInput = z.input<typeof createWorkspacePayloadSchema>;

// Results (CONTRACT.md section 7), as the result event's `data`.
const agentReadinessShape = {
  agent_status: z.enum(['no_agent', 'selection_error', 'not_ready']).optional(),
  agent_error: z.string().optional(),
  startup_scripts: z
    .enum(['startup_scripts_failed', 'startup_scripts_timeout', 'startup_scripts_unknown'])
    .optional(),
  lifecycle_state: z.string().optional(),
};

const jobFailureSchema = z.object({
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

const startWorkspaceSuccessSchema = z.object({
  ...agentReadinessShape,
  started: z.literal(true),
  workspace_name: z.string(),
  build_id: z.string().optional(),
  no_build: z.literal(true).optional(),
  updated_to_active_version: z.literal(true).optional(),
  update_reason: z.string().optional(),
  message: z.string().optional(),
  previous_template_version_id: z.string().optional(),
  template_version_id: z.string().optional(),
});

const createWorkspaceSuccessSchema = z.object({
  ...agentReadinessShape,
  created: z.boolean(),
  workspace_name: z.string(),
  status: z.enum(['already_exists', 'stopped']).optional(),
  message: z.string().optional(),
  build_id: z.string().optional(),
});

export const jobResultSchema = z.union([
  jobFailureSchema,
  startWorkspaceSuccessSchema,
  createWorkspaceSuccessSchema,
]);

// Events (CONTRACT.md section 6).
const envelopeShape = {
  v: z.literal(1),
  seq: z.string(),
  job: z.object({
    id: z.string(),
    name: z.enum(['start-workspace', 'create-workspace']),
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

/** Assignable both ways: the same type. */
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
// The hand-written types (contract.ts) and these schemas cannot drift apart: if they do, `true` is not
// assignable to `false` here and the build fails. Required<> (it distributes over the union's members):
// otherwise an optional field that only one side has would pass, being assignable both ways.
const _resultSchemaAgrees: Same<Required<z.output<typeof jobResultSchema>>, Required<JobResult>> = true;
const _eventSchemaAgrees: Same<z.output<typeof workspaceJobEventSchema>, WorkspaceJobEvent> = true;

/** `invalid start-workspace payload: chatId: Invalid UUID; parameters.x: …` — names every bad field. */
export function describeIssues(what: string, error: z.ZodError): string {
  const issues = error.issues.map((issue) => {
    const path = issue.path.map(pathSegment).join('.');
    // A bad record key says only "Invalid key in record"; the key's own issue says what is wrong with it.
    const message =
      issue.code === 'invalid_key' ? issue.issues.map((i) => i.message).join('; ') : issue.message;
    return path ? `${path}: ${message}` : message;
  });
  return `invalid ${what}: ${issues.join('; ')}`;
}

/** A key as is when it reads plainly (`parameters.region`), quoted otherwise (`parameters."AI Prompt"`). */
function pathSegment(key: PropertyKey): string {
  const text = String(key);
  return /^[\w-]+$/.test(text) ? text : JSON.stringify(text);
}

/** Thrown at the edge (producer, CLI) for input that does not validate; nothing was enqueued. */
export class ValidationError extends Error {
  override name = 'ValidationError';
}

export function parseOrThrow<S extends z.ZodType>(schema: S, what: string, input: unknown): z.infer<S> {
  const parsed = schema.safeParse(input);
  if (!parsed.success) throw new ValidationError(describeIssues(what, parsed.error));
  return parsed.data;
}
