// The zod building blocks of everything that crosses a process boundary (ids, parameters, names), and how a
// validation error reads. The job kinds' payload schemas (src/jobs/<kind>/schemas.ts) are made of them; the
// result and event schemas (src/jobs/contract-schemas.ts) are built above the registry. Nothing here imports
// a job kind, so that the kinds can import this module without a cycle.
import { z } from 'zod';

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
export const parametersSchema = z
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
export const requestIdSchema = z.string().min(1).max(200);

/** A cancel's reason (who or why), carried into the job's result as `canceled: <reason>`: one short line. */
export const cancelReasonSchema = z
  .string()
  .trim()
  .min(1, { message: 'a reason must not be empty' })
  .max(200, { message: 'a reason must be at most 200 characters' })
  .regex(/^\P{Cc}*$/u, { message: 'a reason must be one line, without control characters' });

// Workspace names follow Coder's rule: letters, digits and single hyphens, at most 32 characters.
export const workspaceNameSchema = z.string().regex(/^[a-zA-Z0-9](?:[a-zA-Z0-9]|-(?=[a-zA-Z0-9])){0,31}$/, {
  message: 'must be 1-32 letters, digits or single hyphens, starting and ending with a letter or digit',
});

/** The agent fields a start's or a create's success carries (docs/design.md §7). */
export const agentReadinessShape = {
  agent_status: z.enum(['no_agent', 'selection_error', 'not_ready']).optional(),
  agent_error: z.string().optional(),
  startup_scripts: z
    .enum(['startup_scripts_failed', 'startup_scripts_timeout', 'startup_scripts_unknown'])
    .optional(),
  lifecycle_state: z.string().optional(),
};

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
