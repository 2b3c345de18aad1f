// Postgres pools. Statement and connection timeouts bound every query, so no wait is unbounded.
import pg from 'pg';
import type { Logger } from './logger.js';

export type Pool = pg.Pool;
export type PoolClient = pg.PoolClient;

/** A pool, a pool client (e.g. inside a transaction) or a client: anything that runs a query. */
export interface Queryable {
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(
    textOrConfig: string | pg.QueryConfig,
    values?: unknown[],
  ): Promise<pg.QueryResult<R>>;
}

/**
 * A named prepared statement: each connection parses and plans it once, on its first use, then only binds and
 * executes it (issue 11: about a third less Postgres CPU per start than the same text unnamed).
 */
export interface Prepared {
  readonly name: string;
  readonly text: string;
}

/** Every name declared in this process, with its text: pg refuses a name it prepared with another text. */
const preparedTexts = new Map<string, string>();

/**
 * Declares a named prepared statement, once, at module level next to the code that runs it. A name already
 * declared with another text throws, so a clash fails on import instead of on some connection's second query.
 * Only for fixed texts: a text built per call (e.g. an IN list) would need a name per variant.
 */
export function prepared(name: string, text: string): Prepared {
  const known = preparedTexts.get(name);
  if (known !== undefined && known !== text) {
    throw new Error(`prepared statement ${JSON.stringify(name)} is already declared with another text`);
  }
  preparedTexts.set(name, text);
  return Object.freeze({ name, text });
}

/** The prepared statements declared so far (by the modules imported so far), name → text. */
export function declaredStatements(): ReadonlyMap<string, string> {
  return preparedTexts;
}

/** pg's query config that runs a prepared statement by its name, for anything that takes one. */
export function preparedQuery(statement: Prepared, values: unknown[]): pg.QueryConfig {
  return { name: statement.name, text: statement.text, values };
}

/** Runs a prepared statement by its name. */
export function runPrepared<R extends pg.QueryResultRow = pg.QueryResultRow>(
  db: Queryable,
  statement: Prepared,
  values: unknown[],
): Promise<pg.QueryResult<R>> {
  return db.query<R>(preparedQuery(statement, values));
}

export interface PoolOptions {
  /** Default 10. */
  max?: number;
  /** A name shown in pg_stat_activity. */
  applicationName?: string;
  /** Where an idle client's lost connection is logged. Default: nowhere (the error is still handled). */
  log?: Logger;
}

export function createPool(databaseUrl: string, options: PoolOptions = {}): pg.Pool {
  const pool = new pg.Pool({
    connectionString: databaseUrl,
    max: options.max ?? 10,
    application_name: options.applicationName ?? 'workspace-jobs',
    connectionTimeoutMillis: 10_000,
    idleTimeoutMillis: 30_000,
    statement_timeout: 30_000,
    query_timeout: 35_000,
  });
  // An idle client that loses its connection (e.g. pg_terminate_backend) emits here; without a listener the
  // process would crash. The pool drops that client and opens a new one on the next query.
  pool.on('error', (err) => {
    options.log?.warn(
      { err, pool: options.applicationName },
      'idle Postgres connection lost; the pool replaces it',
    );
  });
  // pg-pool listens on idle clients only: a checked-out client (a transaction, or one held between queries)
  // that loses its backend would emit 'error' with no listener and crash the process. Each client gets a
  // listener of its own; its queries fail with the cause and its release (withTransaction) discards it.
  const checkedOut = new WeakSet<pg.PoolClient>();
  pool.on('acquire', (client) => checkedOut.add(client));
  pool.on('release', (_err, client) => checkedOut.delete(client));
  pool.on('connect', (client) => {
    let lost = false;
    client.on('error', (err) => {
      if (lost || !checkedOut.has(client)) return;
      lost = true;
      options.log?.warn(
        { err, pool: options.applicationName },
        'Postgres connection lost while in use; its query fails and the pool replaces it',
      );
    });
  });
  return pool;
}

/** Runs `fn` in a transaction on one client: COMMIT when it resolves, ROLLBACK when it throws. */
export async function withTransaction<T>(
  pool: pg.Pool,
  fn: (client: pg.PoolClient) => Promise<T>,
): Promise<T> {
  const client = await pool.connect();
  // Set when ROLLBACK fails: the connection is broken (or mid-transaction), so the pool must not reuse it.
  let broken: Error | undefined;
  try {
    await client.query('BEGIN');
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (error) {
    await client.query('ROLLBACK').catch((rollbackError: Error) => {
      broken = rollbackError;
    });
    throw error;
  } finally {
    client.release(broken);
  }
}
