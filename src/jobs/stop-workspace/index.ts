// The stop-workspace job kind: stop the chat's workspace (a port of Coder's stop_workspace chat tool, which
// shares start's and create's mutex: here the chat lock), at most one per workspace while one is waiting,
// delayed or active.
import { resolveChatWorkspace, type JobKind } from '../job-kind.js';
import {
  stopWorkspaceInputSchema,
  stopWorkspacePayloadSchema,
  stopWorkspaceSuccessSchema,
  type StopWorkspaceField,
  type StopWorkspaceInput,
  type StopWorkspacePayload,
  type StopWorkspaceSuccess,
} from './schemas.js';
import { stopWorkspace } from './stop-workspace.js';

export const stopWorkspaceJob: JobKind<{
  name: 'stop-workspace';
  command: 'stop';
  input: StopWorkspaceInput;
  parsed: Omit<StopWorkspacePayload, 'workspaceId'> & { workspaceId?: string };
  payload: StopWorkspacePayload;
  field: StopWorkspaceField;
  success: StopWorkspaceSuccess;
}> = {
  name: 'stop-workspace',
  command: 'stop',
  summary: "stop the chat's workspace (a build in flight is waited for first)",
  inputSchema: stopWorkspaceInputSchema,
  payloadSchema: stopWorkspacePayloadSchema,
  dedupeBy: 'workspaceId',
  comparedFields: ['chatId', 'ownerId'],
  resolve: resolveChatWorkspace,
  queuedMessage: (payload) => `Stop of workspace ${payload.workspaceId} queued`,
  alreadyQueued: 'A stop of this workspace is already queued',
  successSchema: stopWorkspaceSuccessSchema,
  run: stopWorkspace,
  describe: (success) =>
    success.no_build
      ? `Workspace ${success.workspace_name} is already stopped`
      : `Workspace ${success.workspace_name} stopped`,
};
