// The start-workspace job's zod schemas (docs/design.md §4 and §7): the payload the worker parses, what
// the producer accepts, and the success result.
import { z } from 'zod';
import type { StartWorkspacePayload, StartWorkspaceSuccess } from '../../shared/contract.js';
import { agentReadinessShape, idSchema, parametersSchema, requestIdSchema } from '../../shared/schemas.js';

export const startWorkspacePayloadSchema = z.strictObject({
  chatId: idSchema,
  ownerId: idSchema,
  workspaceId: idSchema,
  parameters: parametersSchema.optional(),
  requestId: requestIdSchema.optional(),
}) satisfies z.ZodType<StartWorkspacePayload>;

/** What the chat backend passes to `startWorkspace()`: the workspace is looked up from the chat when omitted. */
export const startWorkspaceInputSchema = startWorkspacePayloadSchema.extend({
  workspaceId: idSchema.optional(),
});

/** The argument of `startWorkspace()`, derived from the schema that validates it so that the two cannot drift. */
export type StartWorkspaceInput = z.input<typeof startWorkspaceInputSchema>;

export const startWorkspaceSuccessSchema = z.object({
  kind: z.literal('start-workspace'),
  ok: z.literal(true),
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
}) satisfies z.ZodType<StartWorkspaceSuccess>;
