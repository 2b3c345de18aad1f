// Result and database helpers for create-workspace tests: typed success/failure accessors (start-context's
// are typed for start results) and a snapshot of everything a create may write, so that "nothing was
// persisted" is one equality.
import {
  isFailure,
  type CreateWorkspaceResult,
  type CreateWorkspaceSuccess,
  type JobFailure,
} from '../../src/shared/contract.js';
import type { TestDatabase } from './database.js';

/** The result as a create success, or a test failure that shows what came back instead. */
export function created(result: CreateWorkspaceResult): CreateWorkspaceSuccess {
  if (isFailure(result)) throw new Error(`expected a create success, got ${JSON.stringify(result)}`);
  return result;
}

/** The result as a failure, or a test failure that shows what came back instead. */
export function createFailure(result: CreateWorkspaceResult): JobFailure {
  if (!isFailure(result)) throw new Error(`expected a failure, got ${JSON.stringify(result)}`);
  return result;
}

export interface PersistedState {
  workspaces: { id: string; owner_id: string; name: string; deleted: boolean }[];
  builds: { id: string; workspace_id: string; build_number: number; transition: string }[];
  jobs: number;
  parameters: number;
  chats: { id: string; workspace_id: string | null; build_id: string | null }[];
}

/** Every row a create may write (workspaces, builds, jobs, parameters, chat bindings), in a stable order. */
export async function persistedState(db: TestDatabase): Promise<PersistedState> {
  const q = async <R extends object>(sql: string) =>
    (await db.pool.query<R & Record<string, unknown>>(sql)).rows;
  const [workspaces, builds, counts, chats] = await Promise.all([
    q<PersistedState['workspaces'][number]>('SELECT id, owner_id, name, deleted FROM workspaces ORDER BY id'),
    q<PersistedState['builds'][number]>(
      'SELECT id, workspace_id, build_number, transition FROM workspace_builds ORDER BY id',
    ),
    q<{ jobs: number; parameters: number }>(
      `SELECT (SELECT count(*)::int FROM provisioner_jobs) AS jobs,
              (SELECT count(*)::int FROM workspace_build_parameters) AS parameters`,
    ),
    q<PersistedState['chats'][number]>('SELECT id, workspace_id, build_id FROM chats ORDER BY id'),
  ]);
  return { workspaces, builds, jobs: counts[0]!.jobs, parameters: counts[0]!.parameters, chats };
}

/** A workspace row with its builds, to show that a job left it untouched. */
export async function workspaceSnapshot(db: TestDatabase, workspaceId: string) {
  const { rows: workspace } = await db.pool.query(
    'SELECT id, owner_id, template_id, name, deleted, automatic_updates, updated_at FROM workspaces WHERE id = $1',
    [workspaceId],
  );
  const { rows: builds } = await db.pool.query(
    `SELECT b.id, b.build_number, b.transition, j.job_status, j.updated_at
       FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
      WHERE b.workspace_id = $1 ORDER BY b.build_number`,
    [workspaceId],
  );
  return { workspace, builds };
}
