// The create-workspace job kind: give the chat a workspace from a template (a port of Coder's
// create_workspace chat tool), at most one per chat while one is waiting, delayed or active.
import type {
  CreateWorkspaceField,
  CreateWorkspacePayload,
  CreateWorkspaceSuccess,
} from '../../shared/contract.js';
import type { JobKind } from '../job-kind.js';
import { createWorkspace } from './create-workspace.js';
import {
  createWorkspacePayloadSchema,
  createWorkspaceSuccessSchema,
  type CreateWorkspaceInput,
} from './schemas.js';

export const createWorkspaceJob: JobKind<{
  name: 'create-workspace';
  command: 'create';
  input: CreateWorkspaceInput;
  parsed: CreateWorkspacePayload;
  payload: CreateWorkspacePayload;
  field: CreateWorkspaceField;
  success: CreateWorkspaceSuccess;
}> = {
  name: 'create-workspace',
  command: 'create',
  summary: 'create a workspace for the chat from a template (a chat with a usable one keeps it)',
  inputSchema: createWorkspacePayloadSchema,
  payloadSchema: createWorkspacePayloadSchema,
  dedupeBy: 'chatId',
  comparedFields: ['ownerId', 'templateId', 'name', 'parameters'],
  queuedMessage: (payload) =>
    `Creation of ${payload.name === undefined ? 'a workspace' : `workspace ${payload.name}`} queued`,
  alreadyQueued: 'A creation of a workspace for this chat is already queued',
  successSchema: createWorkspaceSuccessSchema,
  run: createWorkspace,
  describe: (success) =>
    success.message ?? `Workspace ${success.workspace_name} ${success.created ? 'created' : 'exists'}`,
};
