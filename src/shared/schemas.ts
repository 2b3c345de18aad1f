// zod schemas of everything that crosses a process boundary: job payloads (CONTRACT.md section 4) and
// events (section 6). The producer validates with them at the edge; the worker validates again because
// anyone with Redis access can add a job.
import { z } from 'zod';
import { PROGRESS_STAGES } from './interfaces.js';
import type { CreateWorkspacePayload, StartWorkspacePayload, WorkspaceJobEvent } from './interfaces.js';

const id = z.uuid();
const parameters = z.record(z.string().min(1).max(128), z.string().max(4096));
const requestId = z.string().min(1).max(200);

export const startWorkspacePayloadSchema = z.strictObject({
  chatId: id,
  ownerId: id,
  workspaceId: id,
  parameters: parameters.optional(),
  requestId: requestId.optional(),
}) satisfies z.ZodType<StartWorkspacePayload>;

/** What the chat backend passes to `startWorkspace()`: the workspace is looked up from the chat when omitted. */
export const startWorkspaceInputSchema = startWorkspacePayloadSchema.extend({
  workspaceId: id.optional(),
});

// Workspace names follow Coder's rule: letters, digits and single hyphens, at most 32 characters.
export const workspaceNameSchema = z.string().regex(/^[a-zA-Z0-9](?:[a-zA-Z0-9]|-(?=[a-zA-Z0-9])){0,31}$/, {
  message: 'must be 1-32 letters, digits or single hyphens, starting and ending with a letter or digit',
});

export const createWorkspacePayloadSchema = z.strictObject({
  chatId: id,
  ownerId: id,
  templateId: id,
  name: workspaceNameSchema.optional(),
  parameters: parameters.optional(),
  requestId: requestId.optional(),
}) satisfies z.ZodType<CreateWorkspacePayload>;

export const workspaceJobEventSchema = z.object({
  v: z.literal(1),
  seq: z.string(),
  type: z.enum(['progress', 'result']),
  stage: z.enum([...PROGRESS_STAGES, 'completed', 'failed']),
  job: z.object({
    id: z.string(),
    name: z.enum(['start-workspace', 'create-workspace']),
    attempt: z.number().int(),
  }),
  chatId: z.string(),
  workspaceId: z.string().optional(),
  at: z.string(),
  message: z.string(),
  data: z.record(z.string(), z.unknown()).optional(),
}) satisfies z.ZodType<WorkspaceJobEvent>;

/** `invalid start-workspace payload: chatId: Invalid UUID; parameters.x: …` — names every bad field. */
export function describeIssues(what: string, error: z.ZodError): string {
  const issues = error.issues.map((issue) => {
    const path = issue.path.map(String).join('.');
    return path ? `${path}: ${issue.message}` : issue.message;
  });
  return `invalid ${what}: ${issues.join('; ')}`;
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
