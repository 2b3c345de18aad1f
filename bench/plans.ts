// Query plans of the hot and periodic paths on a long history (issue 11): seeds 1M provisioner jobs, 100k
// builds, 1M log lines and 10k chats in a throwaway database, then runs EXPLAIN (ANALYZE, FORMAT JSON) for
// every query the provisioner daemon sends on each poll, claim, heartbeat and completion, the worker on each
// start and the dashboard on each page, and prints each plan's nodes and time. The SQL is the code's own: exported
// constants, or what the real functions send to a pool that records it. Fails when a plan reads a big table
// with a Seq Scan. Each plan is also run with migration 0008's indexes dropped (inside a transaction that is
// rolled back), so the figures before and after the migration stand side by side. EXPLAIN shows a call of a
// SQL function (create_start_build) as one node, so every case also runs as often again per side on a
// connection with auto_explain, whose plans of the statements inside functions, triggers and foreign-key checks
// get the same printing and Seq Scan check.
import pg from 'pg';
import { getBuild, listChats, parseChatsQuery } from '../src/dashboard/chats.js';
import { JobLogWriter } from '../src/provisioner/job-log-writer.js';
import {
  CLAIM,
  COMPLETE,
  DEFAULT_MAX_RERUNS,
  DEFAULT_STALE_AFTER_MS,
  HEARTBEAT,
  REAP_STALE,
  SETTLE_CANCELED_PENDING,
  STALE_JOB_ERROR,
} from '../src/provisioner/provisioner.js';
import { readBuildLogs } from '../src/shared/build-logs.js';
import { readMigrations } from '../src/shared/migrate.js';
import type { Pool } from '../src/shared/postgres.js';
import { PgWorkspaceStore } from '../src/worker/pg-store.js';
import type { JobContext } from '../src/worker/ports.js';
import { createStartBuild } from '../src/worker/start-build.js';
import { BenchFailure, benchDatabase, check, ms, now, report, runBench, stats } from './lib.js';

/** A table with at least this many rows is big: a Seq Scan of it fails the benchmark. */
const BIG_TABLE_ROWS = 10_000;
/** Measured runs of each plan per side (after one warm-up run); the median is reported. */
const RUNS = 3;
/** The migration whose indexes the "before" side drops. */
const MIGRATION = '0008';

// Deterministic ids (md5 of a name and a number, as a uuid), so the seed needs no lookups and the queries
// below can name rows. 1,000 users, 10 templates of 10 versions, 10,000 workspaces each with one chat and
// 10 builds (alternately start and stop), 900,000 old template-import jobs and 100,000 build jobs. The newest
// 200 builds are the live ones, 100 running and 100 pending; as between failures and cancels, no running job
// is stale and no pending one canceled, so the reaper and the sweep find nothing, as on almost every poll.
const id = (name: string, n: number | string) => `md5('${name}' || ${n})::uuid`;
const SEED_SQL = [
  // Seed-only: no per-row NOTIFY triggers and no foreign-key checks (the ids are consistent by construction),
  // and no statement timeout (the pool's 30 s; one INSERT of 1M rows takes longer on a loaded machine).
  `SET session_replication_role = replica`,
  `SET statement_timeout = 0`,
  `INSERT INTO users (id, username, email)
   SELECT ${id('user', 'i')}, 'user-' || i, 'user-' || i || '@example.com' FROM generate_series(1, 1000) i`,
  `INSERT INTO templates (id, name, active_version_id)
   SELECT ${id('template', 't')}, 'template-' || t, ${id('version', 't * 10')} FROM generate_series(1, 10) t`,
  `INSERT INTO template_versions (id, template_id, name)
   SELECT ${id('version', 'v')}, ${id('template', '(v - 1) / 10 + 1')}, 'v' || v FROM generate_series(1, 100) v`,
  `INSERT INTO workspaces (id, owner_id, template_id, name)
   SELECT ${id('workspace', 'w')}, ${id('user', 'w % 1000 + 1')}, ${id('template', 'w % 10 + 1')}, 'ws-' || w
   FROM generate_series(1, 10000) w`,
  `INSERT INTO provisioner_jobs (id, type, created_at, updated_at, started_at, completed_at)
   SELECT ${id('job', 'i')}, 'template_version_import', ts, ts + interval '20 s', ts + interval '1 s',
          ts + interval '20 s'
   FROM generate_series(1, 900000) i, LATERAL (SELECT now() - interval '400 days' + i * interval '10 s' AS ts) t`,
  // Build b's job is job 900000 + b; one build a minute, the newest 200 not completed.
  `INSERT INTO provisioner_jobs (id, type, created_at, updated_at, started_at, canceled_at, completed_at, error,
                                 worker_id, claim_id)
   SELECT ${id('job', '900000 + b')}, 'workspace_build', ts,
          -- Running jobs heart-beaten an hour ahead: still fresh for the reaper when the plans run.
          CASE WHEN b <= 99800 THEN ts + interval '30 s' ELSE now() + interval '1 hour' END,
          CASE WHEN b <= 99900 THEN ts + interval '1 s' END,
          CASE WHEN b <= 99800 AND b % 97 = 0 THEN ts + interval '5 s' END,
          CASE WHEN b <= 99800 THEN ts + (21 + b % 40) * interval '1 s' END,
          CASE WHEN b <= 99800 AND b % 50 = 0 THEN 'build failed' END,
          CASE WHEN b <= 99900 THEN ${id('daemon', 'b % 4')} END,
          CASE WHEN b <= 99900 THEN ${id('claim', 'b')} END
   FROM generate_series(1, 100000) b, LATERAL (SELECT now() - (100001 - b) * interval '1 min' AS ts) t`,
  `INSERT INTO workspace_builds (id, created_at, workspace_id, template_version_id, build_number, transition,
                                 initiator_id, job_id)
   SELECT ${id('build', 'b')}, now() - (100001 - b) * interval '1 min', ${id('workspace', 'w')},
          ${id('version', '(w % 10) * 10 + (n - 1) % 10 + 1')}, n,
          CASE WHEN n % 2 = 1 THEN 'start' ELSE 'stop' END::workspace_transition,
          ${id('user', 'w % 1000 + 1')}, ${id('job', '900000 + b')}
   FROM generate_series(1, 100000) b, LATERAL (SELECT (b - 1) % 10000 + 1 AS w, (b - 1) / 10000 + 1 AS n) x`,
  `INSERT INTO workspace_build_parameters (workspace_build_id, name, value)
   SELECT ${id('build', 'b')}, 'region', 'eu' FROM generate_series(1, 100000) b`,
  // Completed start builds (odd build numbers) have a resource and a ready agent.
  `INSERT INTO workspace_resources (id, job_id, transition, type, name)
   SELECT ${id('resource', 'b')}, ${id('job', '900000 + b')}, 'start', 'workspace', 'dev'
   FROM generate_series(1, 99800) b WHERE ((b - 1) / 10000) % 2 = 0`,
  `INSERT INTO workspace_agents (resource_id, name, lifecycle_state, first_connected_at, ready_at)
   SELECT ${id('resource', 'b')}, 'main', 'ready', ts + interval '40 s', ts + interval '50 s'
   FROM generate_series(1, 99800) b, LATERAL (SELECT now() - (100001 - b) * interval '1 min' AS ts) t
   WHERE ((b - 1) / 10000) % 2 = 0`,
  `INSERT INTO provisioner_job_logs (job_id, created_at, source, level, stage, output)
   SELECT ${id('job', '900000 + (n - 1) / 10 + 1')}, now() - (100001 - (n - 1) / 10 - 1) * interval '1 min',
          'provisioner', 'info', 'Starting workspace', 'line ' || n
   FROM generate_series(1, 1000000) n`,
  `INSERT INTO chats (owner_id, title, workspace_id, build_id, created_at)
   SELECT ${id('user', 'w % 1000 + 1')}, 'chat ' || w, ${id('workspace', 'w')}, ${id('build', '90000 + w')},
          now() - (10001 - w) * interval '1 min'
   FROM generate_series(1, 10000) w`,
  `RESET session_replication_role`,
  `ANALYZE`,
  `RESET statement_timeout`,
];

interface Statement {
  text: string;
  values: unknown[];
}

type Row = Record<string, unknown>;

/**
 * A pool that keeps the statements it is asked to run and answers each with `answer` (default no rows): what
 * the code sends, verbatim. Transactions (connect, BEGIN, COMMIT) are played along and not kept.
 */
function recordingPool(): { pool: Pool; take: () => Statement[]; answerWith: (rows: Row[]) => void } {
  let kept: Statement[] = [];
  let answer: Row[] = [];
  const query = async (text: string | { text: string; values?: unknown[] }, values?: unknown[]) => {
    const statement =
      typeof text === 'string'
        ? { text, values: values ?? [] }
        : { text: text.text, values: text.values ?? values ?? [] };
    if (!/^(BEGIN|COMMIT|ROLLBACK)$/i.test(statement.text.trim())) kept.push(statement);
    return { rows: answer, rowCount: answer.length };
  };
  const client = { query, release: () => {} };
  const pool = { query, connect: async () => client } as unknown as Pool;
  return {
    pool,
    answerWith: (rows) => {
      answer = rows;
    },
    take: () => {
      const taken = kept;
      kept = [];
      return taken;
    },
  };
}

interface PlanNode {
  'Node Type': string;
  'Relation Name'?: string;
  'Index Name'?: string;
  Plans?: PlanNode[];
}

interface Explained {
  ms: number;
  nodes: string[];
  seqScans: string[];
}

/** A statement that ran inside another (in a function, trigger or foreign-key check), as auto_explain saw it. */
interface Inner extends Explained {
  text: string;
}

function nodesOf(plan: PlanNode): { nodes: string[]; seqScans: string[] } {
  const nodes: string[] = [];
  const seqScans: string[] = [];
  const walk = (node: PlanNode) => {
    const type = node['Node Type'];
    const on = node['Relation Name'];
    const using = node['Index Name'];
    nodes.push(`${type}${using ? ` using ${using}` : ''}${on ? ` on ${on}` : ''}`);
    if (type === 'Seq Scan' && on) seqScans.push(on);
    node.Plans?.forEach(walk);
  };
  walk(plan);
  return { nodes, seqScans };
}

void runBench('plans', 150_000, async (cleanup) => {
  const db = await benchDatabase(cleanup, 2);
  const seedStarted = now();
  // One connection: the seed's SET applies to its session.
  const seeding = await db.pool.connect();
  try {
    for (const sql of SEED_SQL) await seeding.query(sql);
  } finally {
    seeding.release();
  }
  const seedMs = now() - seedStarted;
  const { rows: sizes } = await db.pool.query<{ relname: string; rows: number }>(
    `SELECT relname, reltuples::bigint::int AS rows FROM pg_class
      WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace ORDER BY reltuples DESC`,
  );
  const big = new Set(sizes.filter((s) => s.rows >= BIG_TABLE_ROWS).map((s) => s.relname));
  report({
    case: 'seed: INSERT ... SELECT generate_series, then ANALYZE',
    n: sizes.reduce((sum, s) => sum + Math.max(0, s.rows), 0),
    notes: `${(seedMs / 1000).toFixed(1)} s; ${sizes
      .filter((s) => big.has(s.relname))
      .map((s) => `${s.relname} ${s.rows.toLocaleString('en-US')}`)
      .join(', ')}`,
  });

  const migration = (await readMigrations()).find((m) => m.version.startsWith(MIGRATION));
  check(migration, `no migration ${MIGRATION}`);
  const dropped = [...migration.sql.matchAll(/CREATE INDEX (\w+)/gi)].map((m) => m[1]!);
  check(dropped.length > 0, `migration ${migration.version} creates no index`);

  // ---------------------------------------------------------------------------------------------------
  // The statements, from the code
  const rec = recordingPool();
  /** What `call` sends, each statement answered with `answer` (what the code needs to go on). */
  const sqlOf = async (call: (pool: Pool) => Promise<unknown>, answer: Row[] = []): Promise<Statement[]> => {
    rec.answerWith(answer);
    try {
      await call(rec.pool);
    } finally {
      rec.answerWith([]);
    }
    const taken = rec.take();
    check(taken.length > 0, 'a call sent no query');
    return taken;
  };
  const daemon = `md5('daemon' || 0)::uuid`;
  const ids = await db.pool.query<Record<string, string>>(
    `SELECT ${daemon}::text AS daemon,
            md5('build' || 99950)::uuid::text AS pending_build,
            md5('job' || 999950)::uuid::text AS pending_job,
            md5('workspace' || 1)::uuid::text AS workspace,
            md5('build' || 90001)::uuid::text AS build,
            md5('job' || 990001)::uuid::text AS job,
            md5('user' || 123)::uuid::text AS user,
            md5('template' || 1)::uuid::text AS template,
            (SELECT id::text FROM chats ORDER BY created_at DESC LIMIT 1) AS chat,
            (SELECT id::text FROM chats WHERE workspace_id = md5('workspace' || 1)::uuid) AS workspace_chat,
            (SELECT id::text FROM workspace_agents LIMIT 1) AS agent`,
  );
  const at = ids.rows[0]!;
  // Every pending build's job (builds 99901–100000), as one worker's waits follow them all.
  const pendingJobs = await db.pool.query<{ ids: string[] }>(
    `SELECT array_agg(${id('job', '900000 + b')}::text) AS ids FROM generate_series(99901, 100000) b`,
  );
  const running = await db.pool.query<{ id: string; claim_id: string }>(
    `SELECT id, claim_id FROM provisioner_jobs WHERE worker_id = ${daemon} AND completed_at IS NULL LIMIT 4`,
  );
  const store = (pool: Pool) => new PgWorkspaceStore(pool);
  // The estimate reads by the build's template version and transition, which the caller has at hand.
  const pendingBuild = await store(db.pool).getBuild(at.pending_build!);
  check(pendingBuild !== null, `no pending build ${at.pending_build}`);
  // A burst's batch (the store's reads of a waiting job's end, ReadBatcher's 500 keys): the newest builds.
  const { rows: burst } = await db.pool.query<{ build: string; workspace: string; job: string }>(
    `SELECT id::text AS build, workspace_id::text AS workspace, job_id::text AS job
       FROM workspace_builds ORDER BY created_at DESC LIMIT 500`,
  );
  const { rows: burstAgents } = await db.pool.query<{ id: string }>(
    'SELECT id::text FROM workspace_agents LIMIT 500',
  );
  /** One store's reads asked all at once: one batched statement. */
  const batchOf = <T>(keys: T[], read: (s: PgWorkspaceStore, key: T) => Promise<unknown>) =>
    sqlOf(async (pool) => {
      const s = store(pool);
      await Promise.all(keys.map((key) => read(s, key)));
    });
  // A start of workspace 1 (its latest build a completed stop), planned by the worker's own code on what the
  // job reads; create_start_build creates it (the traced run checks that) and binds the chat.
  const startState = await store(db.pool).getStartState(at.workspace!);
  check(startState?.latestBuild, `workspace ${at.workspace} has no build`);
  const firstPage = await listChats(db.pool, {});
  check(firstPage.next_cursor, 'the first chats page has no next page');

  const cases: { name: string; statements: Statement[]; tracedRow?: Row }[] = [
    // The provisioner daemon: every poll (5 s) and wake-up, every heartbeat (2 s), every batch of log lines.
    { name: 'provisioner: claim', statements: [{ text: CLAIM.text, values: [at.daemon, []] }] },
    {
      name: 'provisioner: heartbeat of 4 running jobs',
      statements: [
        {
          text: HEARTBEAT.text,
          values: [running.rows.map((r) => r.id), at.daemon, running.rows.map((r) => r.claim_id)],
        },
      ],
    },
    {
      name: 'provisioner: stale reaper (none stale)',
      statements: [
        {
          text: REAP_STALE.text,
          values: [DEFAULT_STALE_AFTER_MS, STALE_JOB_ERROR, at.daemon, DEFAULT_MAX_RERUNS, []],
        },
      ],
    },
    {
      name: 'provisioner: canceled-pending sweep (none to settle)',
      statements: [{ text: SETTLE_CANCELED_PENDING.text, values: [] }],
    },
    {
      name: 'provisioner: log lines INSERT',
      statements: await sqlOf(async (pool) => {
        const writer = new JobLogWriter({
          pool,
          jobId: running.rows[0]!.id,
          claim: { workerId: at.daemon!, claimId: running.rows[0]!.claim_id },
        });
        await writer.append('provisioner', 'info', 'a line', 'Starting workspace');
      }),
    },
    {
      name: 'provisioner: completion of a start build (job, resource, agent, last log line)',
      statements: [
        {
          text: COMPLETE.text,
          values: [
            running.rows[0]!.id,
            at.daemon,
            running.rows[0]!.claim_id,
            null,
            null,
            null,
            null,
            'workspace',
            ['main'],
            ['provisioner_daemon'],
            ['info'],
            ['Cleaning Up'],
            ['Build succeeded'],
          ],
        },
      ],
    },
    // The worker, on each start and each wake-up of a build wait.
    {
      name: 'worker: chat with its owner, chat, workspace',
      statements: await sqlOf(async (pool) => {
        await store(pool).getChatWithOwner(at.chat!);
        await store(pool).getChat(at.chat!);
        await store(pool).getWorkspace(at.workspace!);
      }),
    },
    {
      name: 'worker: latest build',
      statements: await sqlOf((pool) => store(pool).getLatestBuild(at.workspace!)),
    },
    {
      name: 'worker: build (wait check)',
      statements: await sqlOf((pool) => store(pool).getBuild(at.build!)),
    },
    {
      name: 'worker: agents of latest build',
      statements: await sqlOf((pool) => store(pool).getAgentsOfLatestBuild(at.workspace!)),
    },
    { name: 'worker: agent', statements: await sqlOf((pool) => store(pool).getAgent(at.agent!)) },
    {
      name: 'worker: start state (workspace, latest build, template, parameters)',
      statements: await sqlOf((pool) => store(pool).getStartState(at.workspace!)),
    },
    {
      name: 'worker: build transaction reads (stop, create)',
      statements: await sqlOf((pool) =>
        store(pool).transaction(async (tx) => {
          await tx.lockWorkspace(at.workspace!);
          await tx.getLatestBuild(at.workspace!);
          await tx.getTemplate(at.template!);
          await tx.getBuildParameters(at.build!);
          await tx.workspaceNameTaken(at.user!, 'ws-123');
        }),
      ),
    },
    {
      name: 'worker: start build (create_start_build: lock, checks, job, build, parameters; chat bound)',
      statements: await sqlOf(
        (pool) =>
          // The store and the signal: what createStartBuild needs of the job's context (its observer is optional).
          createStartBuild(
            { store: store(pool), signal: new AbortController().signal } as unknown as JobContext,
            {
              workspace: startState.workspace,
              previousBuild: startState.latestBuild,
              chatId: at.workspace_chat!,
              inputs: startState.inputs,
              initiatorId: at.user!,
              parameters: {},
            },
          ),
        [{ outcome: 'changed' }],
      ),
      tracedRow: { outcome: 'created' },
    },
    {
      name: 'worker: bind chat',
      statements: await sqlOf((pool) => store(pool).bindChat(at.chat!, at.workspace!, at.build!)),
    },
    {
      name: 'worker: queue positions (100 pending, all followed)',
      statements: await sqlOf((pool) => store(pool).getQueuePositions(pendingJobs.rows[0]!.ids)),
    },
    {
      name: 'worker: build estimate',
      statements: await sqlOf((pool) => store(pool).getBuildEstimate(pendingBuild!)),
    },
    {
      name: 'worker: newest build log lines',
      statements: await sqlOf((pool) => store(pool).getNewestBuildLogs(at.job!, '0', 20)),
    },
    {
      name: 'worker: a burst of 500 builds (wait checks, one batch)',
      statements: await batchOf(burst, (s, r) => s.getBuild(r.build)),
    },
    {
      name: "worker: a burst of 500 workspaces' agents of latest build (one batch)",
      statements: await batchOf(burst, (s, r) => s.getAgentsOfLatestBuild(r.workspace)),
    },
    {
      name: 'worker: a burst of 500 agents (one batch)',
      statements: await batchOf(burstAgents, (s, r) => s.getAgent(r.id)),
    },
    {
      name: "worker: a burst of 500 builds' newest log lines (one batch)",
      statements: await batchOf(burst, (s, r) => s.getNewestBuildLogs(r.job, '0', 20)),
    },
    {
      name: 'worker: cancel a pending build job',
      statements: await sqlOf((pool) => store(pool).cancelProvisionerJob(at.pending_job!)),
    },
    // The dashboard, on each page load, search and log read.
    { name: 'dashboard: /api/chats first page', statements: await sqlOf((pool) => listChats(pool, {})) },
    {
      name: 'dashboard: /api/chats next page',
      statements: await sqlOf((pool) => listChats(pool, parseChatsQuery({ cursor: firstPage.next_cursor! }))),
    },
    {
      name: 'dashboard: /api/chats search, owner username',
      statements: await sqlOf((pool) => listChats(pool, { q: 'user-123' })),
    },
    {
      name: 'dashboard: /api/chats search, workspace name',
      statements: await sqlOf((pool) => listChats(pool, { q: 'ws-9950' })),
    },
    // The first keystrokes of a search: prefixes that match a tenth of the chats, and all of them.
    {
      name: 'dashboard: /api/chats search, 1,111 of the workspaces',
      statements: await sqlOf((pool) => listChats(pool, { q: 'ws-1' })),
    },
    {
      name: 'dashboard: /api/chats search, every owner',
      statements: await sqlOf((pool) => listChats(pool, { q: 'u' })),
    },
    {
      name: 'dashboard: /api/chats search, chat id prefix',
      statements: await sqlOf((pool) => listChats(pool, { q: at.chat!.slice(0, 8) })),
    },
    { name: 'dashboard: /api/builds/:id', statements: await sqlOf((pool) => getBuild(pool, at.build!)) },
    {
      name: 'dashboard: build log page (/builds/:id/logs)',
      statements: await sqlOf((pool) => readBuildLogs(pool, at.build!, '0', 500)),
    },
  ];

  // ---------------------------------------------------------------------------------------------------
  // EXPLAIN ANALYZE each, before (0008's indexes dropped) and after; writes are rolled back.
  const connect = async (what: string) => {
    const connection = new pg.Client({ connectionString: db.url });
    connection.on('error', () => {});
    await connection.connect();
    cleanup.add(what, () => connection.end());
    return connection;
  };
  const client = await connect('explain connection');
  // EXPLAIN shows a SQL function's call as one Function Scan and a trigger's or foreign-key check's statements
  // not at all: auto_explain plans every statement that runs inside one (sent to the client as NOTICEs), on a
  // connection of its own, so that its instrumentation is not in the figures measured on `client`.
  const tracer = await connect('auto_explain connection');
  const notices: string[] = [];
  tracer.on('notice', (notice) => notices.push(notice.message ?? ''));
  try {
    await tracer.query(`LOAD 'auto_explain'`);
  } catch (error) {
    throw new BenchFailure(
      `LOAD 'auto_explain' failed (${(error as Error).message}): the plans inside SQL functions need it ` +
        `(PostgreSQL's contrib modules) and a superuser`,
    );
  }
  for (const setting of [
    'auto_explain.log_min_duration = 0',
    'auto_explain.log_analyze = on',
    'auto_explain.log_nested_statements = on',
    'auto_explain.log_format = json',
    'auto_explain.log_level = notice',
    'client_min_messages = notice',
  ])
    await tracer.query(`SET ${setting}`);

  /** `fn` in a transaction that is rolled back, 0008's indexes dropped in it unless `withIndexes`. */
  const inTransaction = async <T>(on: pg.Client, withIndexes: boolean, fn: () => Promise<T>): Promise<T> => {
    await on.query('BEGIN');
    try {
      if (!withIndexes) for (const index of dropped) await on.query(`DROP INDEX ${index}`);
      return await fn();
    } finally {
      await on.query('ROLLBACK');
    }
  };
  const rolledBack = async <T>(on: pg.Client, fn: () => Promise<T>): Promise<T> => {
    await on.query('SAVEPOINT plan');
    try {
      return await fn();
    } finally {
      await on.query('ROLLBACK TO SAVEPOINT plan');
    }
  };
  const explain = (statement: Statement): Promise<Explained> =>
    rolledBack(client, async () => {
      const { rows } = await client.query<{ 'QUERY PLAN': [{ Plan: PlanNode; 'Execution Time': number }] }>(
        `EXPLAIN (ANALYZE, FORMAT JSON) ${statement.text}`,
        statement.values,
      );
      const [{ Plan, 'Execution Time': time }] = rows[0]!['QUERY PLAN'];
      return { ms: time, ...nodesOf(Plan) };
    });
  /** Runs `statement` on the tracer: the plans of what ran inside it, and the first row it returned. */
  const trace = async (statement: Statement): Promise<{ inner: Inner[]; row: Row | undefined }> => {
    notices.length = 0;
    const { rows } = await rolledBack(tracer, () => tracer.query<Row>(statement.text, statement.values));
    const inner = notices.flatMap((notice) => {
      const logged = /^duration: ([\d.]+) ms\s+plan:\n([\s\S]*)$/.exec(notice);
      check(logged, `a NOTICE that is not auto_explain's: ${notice.slice(0, 200)}`);
      const plan = JSON.parse(logged[2]!) as { 'Query Text': string; Plan: PlanNode };
      // The statement's own plan (logged as its portal closes, with the ROLLBACK TO) is EXPLAIN's.
      if (plan['Query Text'] === statement.text) return [];
      return [{ text: plan['Query Text'], ms: Number(logged[1]), ...nodesOf(plan.Plan) }];
    });
    return { inner, row: rows[0] };
  };
  /** Each statement of a case once: the summed time and every node. */
  const runCase = (statements: Statement[], withIndexes: boolean): Promise<Explained[]> =>
    inTransaction(client, withIndexes, async () => {
      const runs: Explained[] = [];
      for (let run = 0; run <= RUNS; run++) {
        const parts: Explained[] = [];
        for (const statement of statements) parts.push(await explain(statement));
        if (run > 0)
          runs.push({
            ms: parts.reduce((sum, p) => sum + p.ms, 0),
            nodes: parts.flatMap((p) => p.nodes),
            seqScans: parts.flatMap((p) => p.seqScans),
          });
      }
      return runs;
    });
  /**
   * What runs inside a case's statements, as often as runCase runs them: each inner statement's p50 and last
   * plan, and the row the case's last statement returned.
   */
  const traceCase = (statements: Statement[], withIndexes: boolean) =>
    inTransaction(tracer, withIndexes, async () => {
      const runs: Inner[][] = [];
      let row: Row | undefined;
      for (let run = 0; run <= RUNS; run++) {
        const inner: Inner[] = [];
        for (const statement of statements) {
          const traced = await trace(statement);
          inner.push(...traced.inner);
          row = traced.row;
        }
        if (run > 0) runs.push(inner);
      }
      const last = runs.at(-1)!;
      check(
        runs.every((r) => r.map((s) => s.text).join() === last.map((s) => s.text).join()),
        'the statements inside a case differ from run to run',
      );
      return { row, inner: last.map((s, i) => ({ ...s, ms: stats(runs.map((r) => r[i]!.ms)).p50 })) };
    });
  const scans = (e: Explained) =>
    e.nodes.filter((n) => /Scan/.test(n) && !/^(CTE|Subquery|Function|Values) Scan/.test(n));
  const bigSeqScans = (e: Explained) => [...new Set(e.seqScans.filter((t) => big.has(t)))];
  /** Both sides' lines; true when the plan before differs. */
  const printSides = (indent: string, bMs: number, aMs: number, before: Explained, after: Explained) => {
    const changed = scans(before).join(', ') !== scans(after).join(', ');
    console.log(
      `${indent}before ${ms(bMs).padStart(7)} ms  ${changed ? scans(before).join(', ') : '(same plan)'}`,
    );
    console.log(`${indent}after  ${ms(aMs).padStart(7)} ms  ${after.nodes.join(' > ')}`);
    return changed;
  };

  const failures: string[] = [];
  for (const { name, statements, tracedRow } of cases) {
    const before = await runCase(statements, false);
    const after = await runCase(statements, true);
    const innerBefore = await traceCase(statements, false);
    const innerAfter = await traceCase(statements, true);
    for (const traced of [innerBefore, innerAfter])
      for (const [column, value] of Object.entries(tracedRow ?? {}))
        check(
          traced.row?.[column] === value,
          `${name}: returned ${JSON.stringify(traced.row)}, not ${column} ${JSON.stringify(value)}`,
        );
    check(
      innerBefore.inner.map((s) => s.text).join() === innerAfter.inner.map((s) => s.text).join(),
      `${name}: other statements ran inside it without ${MIGRATION}'s indexes`,
    );
    const b = stats(before.map((r) => r.ms));
    const a = stats(after.map((r) => r.ms));
    const last = after.at(-1)!;
    const seq = bigSeqScans(last);
    if (seq.length > 0) failures.push(`${name}: Seq Scan on ${seq.join(', ')}`);
    console.log(`plans: ${name}`);
    const changed = printSides('  ', b.p50, a.p50, before.at(-1)!, last);
    const innerSeq: string[] = [];
    innerAfter.inner.forEach((inside, i) => {
      const text = inside.text.replace(/\s+/g, ' ').trim();
      console.log(`  inside: ${text.length > 100 ? `${text.slice(0, 99)}…` : text}`);
      printSides('    ', innerBefore.inner[i]!.ms, inside.ms, innerBefore.inner[i]!, inside);
      const insideSeq = bigSeqScans(inside);
      if (insideSeq.length > 0) failures.push(`${name}, inside ${text}: Seq Scan on ${insideSeq.join(', ')}`);
      innerSeq.push(...insideSeq);
    });
    const allSeq = [...new Set([...seq, ...innerSeq])];
    report({
      case: name,
      n: RUNS,
      latency: a,
      notes:
        `before ${MIGRATION} p50 ${ms(b.p50)} ms${
          changed
            ? ` (${
                bigSeqScans(before.at(-1)!)
                  .map((t) => `Seq Scan on ${t}`)
                  .join(', ') || 'another plan'
              })`
            : ''
        }; ` +
        (innerAfter.inner.length
          ? `${innerAfter.inner.length} statement${innerAfter.inner.length === 1 ? '' : 's'} inside; `
          : '') +
        `${allSeq.length ? `SEQ SCAN on ${allSeq.join(', ')}` : 'no Seq Scan on a big table'}`,
    });
  }
  check(failures.length === 0, `plans with a Seq Scan on a big table:\n  ${failures.join('\n  ')}`);
});
