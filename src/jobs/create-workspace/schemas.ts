// The create-workspace job's zod schemas (docs/design.md §4 and §7): the payload (what the producer
// accepts and the worker parses) and the success result.
import { z } from 'zod';
import type { CreateWorkspacePayload, CreateWorkspaceSuccess } from '../../shared/contract.js';
import {
  agentReadinessShape,
  idSchema,
  parametersSchema,
  requestIdSchema,
  workspaceNameSchema,
} from '../../shared/schemas.js';

export const createWorkspacePayloadSchema = z.strictObject({
  chatId: idSchema,
  ownerId: idSchema,
  templateId: idSchema,
  name: workspaceNameSchema.optional(),
  parameters: parametersSchema.optional(),
  requestId: requestIdSchema.optional(),
}) satisfies z.ZodType<CreateWorkspacePayload>;

/** The argument of `createWorkspace()`: the create-workspace payload as the caller writes it. */
export type CreateWorkspaceInput = z.input<typeof createWorkspacePayloadSchema>;

export const createWorkspaceSuccessSchema = z.object({
  kind: z.literal('create-workspace'),
  ok: z.literal(true),
  ...agentReadinessShape,
  created: z.boolean(),
  workspace_name: z.string(),
  status: z.enum(['already_exists', 'stopped']).optional(),
  message: z.string().optional(),
  build_id: z.string().optional(),
}) satisfies z.ZodType<CreateWorkspaceSuccess>;
