// The start-workspace job kind: start the chat's workspace (a port of Coder's start_workspace chat tool),
// at most one per workspace while one is waiting, delayed or active.
import type {
  StartWorkspaceField,
  StartWorkspacePayload,
  StartWorkspaceSuccess,
} from '../../shared/contract.js';
import { resolveChatWorkspace, type JobKind } from '../job-kind.js';
import {
  startWorkspaceInputSchema,
  startWorkspacePayloadSchema,
  startWorkspaceSuccessSchema,
  type StartWorkspaceInput,
} from './schemas.js';
import { startWorkspace } from './start-workspace.js';

export const startWorkspaceJob: JobKind<{
  name: 'start-workspace';
  command: 'start';
  input: StartWorkspaceInput;
  parsed: Omit<StartWorkspacePayload, 'workspaceId'> & { workspaceId?: string };
  payload: StartWorkspacePayload;
  field: StartWorkspaceField;
  success: StartWorkspaceSuccess;
}> = {
  name: 'start-workspace',
  command: 'start',
  summary: "start the chat's workspace",
  inputSchema: startWorkspaceInputSchema,
  payloadSchema: startWorkspacePayloadSchema,
  dedupeBy: 'workspaceId',
  comparedFields: ['chatId', 'ownerId', 'parameters'],
  resolve: resolveChatWorkspace,
  queuedMessage: (payload) => `Start of workspace ${payload.workspaceId} queued`,
  alreadyQueued: 'A start of this workspace is already queued',
  successSchema: startWorkspaceSuccessSchema,
  run: startWorkspace,
  describe(success) {
    if (success.no_build) return `Workspace ${success.workspace_name} is already running`;
    return success.message ?? `Workspace ${success.workspace_name} started`;
  },
};
