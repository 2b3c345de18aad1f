// The usual setting of a start-workspace test: a user, a template, a workspace with a build history, and
// a chat bound to the workspace's latest build. Inserted with src/cli/fixtures.ts, so it is real rows.
import {
  insertBuild,
  insertChat,
  insertTemplate,
  insertUser,
  insertWorkspace,
  type AgentInput,
  type BuildStatus,
  type ParameterInput,
} from '../../src/cli/fixtures.js';
import type { StartWorkspacePayload } from '../../src/shared/contract.js';
import type { WorkspaceTransition } from '../../src/worker/ports.js';
import type { TestDatabase } from './database.js';
import { READY_AGENT } from './start-context.js';

export interface World {
  ownerId: string;
  username: string;
  templateId: string;
  versionIds: string[];
  workspaceId: string;
  workspaceName: string;
  chatId: string;
  payload: StartWorkspacePayload;
  latest: { buildId: string; jobId: string; agentIds: string[] };
}

export interface LaterBuild {
  transition: WorkspaceTransition;
  status: BuildStatus;
  agents?: AgentInput[];
}

export interface WorldOptions {
  /** Builds after #1, oldest first; the last is the latest. */
  then?: LaterBuild | LaterBuild[];
  /** Agents of build #1 (a succeeded start). Default: one ready agent `dev`. */
  firstAgents?: AgentInput[];
  /** Parameters of each template version, oldest first. Default: one version without parameters. */
  versions?: ParameterInput[][];
  /** Which version is active. Default: the last. */
  activeVersionIndex?: number;
  requireActiveVersion?: boolean;
  automaticUpdates?: 'always' | 'never';
  /** Parameter values of every build. */
  buildParameters?: Record<string, string>;
  /** Mark the workspace deleted. */
  deleted?: boolean;
}

/** Build #1 succeeded `start` on the first version; then the `then` builds on the same version. */
export async function createWorld(db: TestDatabase, options: WorldOptions = {}): Promise<World> {
  const user = await insertUser(db.pool);
  const template = await insertTemplate(db.pool, {
    requireActiveVersion: options.requireActiveVersion,
    versions: (options.versions ?? [[]]).map((parameters) => ({ parameters })),
    activeVersionIndex: options.activeVersionIndex,
  });
  const ws = await insertWorkspace(db.pool, {
    ownerId: user.userId,
    templateId: template.templateId,
    automaticUpdates: options.automaticUpdates,
    deleted: options.deleted,
  });
  const common = {
    workspaceId: ws.workspaceId,
    templateVersionId: template.versionIds[0]!,
    initiatorId: user.userId,
    parameters: options.buildParameters,
  };
  let latest = await insertBuild(db.pool, {
    ...common,
    transition: 'start',
    status: 'succeeded',
    agents: options.firstAgents ?? READY_AGENT,
  });
  for (const later of [options.then ?? []].flat())
    latest = await insertBuild(db.pool, { ...common, ...later });
  const { chatId } = await insertChat(db.pool, {
    ownerId: user.userId,
    workspaceId: ws.workspaceId,
    buildId: latest.buildId,
  });
  return {
    ownerId: user.userId,
    username: user.username,
    templateId: template.templateId,
    versionIds: template.versionIds,
    workspaceId: ws.workspaceId,
    workspaceName: ws.name,
    chatId,
    payload: { chatId, ownerId: user.userId, workspaceId: ws.workspaceId },
    latest,
  };
}
