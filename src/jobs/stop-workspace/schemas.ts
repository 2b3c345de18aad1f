// The stop-workspace job's zod schemas: the payload the worker parses, what the producer accepts, and the
// success result. The types are derived from them, so the two cannot drift.
import { z } from 'zod';
import { idSchema, requestIdSchema } from '../../shared/schemas.js';

/** A stop takes no parameters: Coder's stop builds with the last build's values. */
export const stopWorkspacePayloadSchema = z.strictObject({
  chatId: idSchema,
  ownerId: idSchema,
  workspaceId: idSchema,
  requestId: requestIdSchema.optional(),
});

export type StopWorkspacePayload = z.output<typeof stopWorkspacePayloadSchema>;

/** What the chat backend passes to `stopWorkspace()`: the workspace is looked up from the chat when omitted. */
export const stopWorkspaceInputSchema = stopWorkspacePayloadSchema.extend({
  workspaceId: idSchema.optional(),
});

export type StopWorkspaceInput = z.input<typeof stopWorkspaceInputSchema>;

/** The payload fields a deduplicated stop is compared on (not `workspaceId`, the deduplication id). */
export type StopWorkspaceField = 'chatId' | 'ownerId';

/** Coder's stop_workspace result: the stop build it waited for, or `no_build` when already stopped. */
export const stopWorkspaceSuccessSchema = z.object({
  kind: z.literal('stop-workspace'),
  ok: z.literal(true),
  stopped: z.literal(true),
  /** The bare workspace name. */
  workspace_name: z.string(),
  build_id: z.string().optional(),
  no_build: z.literal(true).optional(),
});

export type StopWorkspaceSuccess = z.output<typeof stopWorkspaceSuccessSchema>;
