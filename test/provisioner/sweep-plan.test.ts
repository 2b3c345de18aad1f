// The provisioner's canceled-pending sweep runs every poll on a table that only grows: its plan must be able
// to read migration 0008's partial index instead of every job. A plan, not a timing: with sequential scans
// priced out the planner takes the index only when the query's predicate implies the index's, so editing
// either alone fails here. (bench/plans.ts measures the same plan on 1M jobs.)
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SETTLE_CANCELED_PENDING } from '../../src/provisioner/provisioner.js';
import { withTransaction } from '../../src/shared/postgres.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});

interface PlanNode {
  'Node Type': string;
  'Relation Name'?: string;
  'Index Name'?: string;
  Plans?: PlanNode[];
}

function scans(node: PlanNode): string[] {
  const own = node['Relation Name']
    ? [`${node['Node Type']} ${node['Index Name'] ?? node['Relation Name']}`]
    : [];
  return [...own, ...(node.Plans ?? []).flatMap(scans)];
}

describe('canceled-pending sweep plan', () => {
  it('when sequential scans are priced out › reads provisioner_jobs through provisioner_jobs_canceled_pending_idx', async () => {
    const plan = await withTransaction(db.pool, async (client) => {
      await client.query('SET LOCAL enable_seqscan = off');
      const { rows } = await client.query<{ 'QUERY PLAN': [{ Plan: PlanNode }] }>(
        `EXPLAIN (FORMAT JSON) ${SETTLE_CANCELED_PENDING.text}`,
      );
      return rows[0]!['QUERY PLAN'][0].Plan;
    });
    const found = scans(plan);
    expect(found).toContainEqual(expect.stringMatching(/ provisioner_jobs_canceled_pending_idx$/));
    expect(found).not.toContainEqual(expect.stringMatching(/^Seq Scan provisioner_jobs$/));
  });
});
