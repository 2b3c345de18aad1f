// The named prepared statements of src/ (src/shared/postgres.ts, prepared). pg prepares a name once per
// connection and fails a query that brings the same name with another text, so every name must have exactly
// one text; and since a statement is parsed on its first use, each text must prepare on the migrated schema.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { declaredStatements, prepared } from '../../src/shared/postgres.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';

const SRC = fileURLToPath(new URL('../../src/', import.meta.url));

/** Every `prepared(...)` call in src/, by file, with its name when it is a literal (as each must be). */
function declarations(): { file: string; names: (string | undefined)[] }[] {
  return (readdirSync(SRC, { recursive: true }) as string[])
    .filter((file) => file.endsWith('.ts'))
    .map((file) => {
      const text = readFileSync(join(SRC, file), 'utf8');
      const calls = [...text.matchAll(/= prepared\(\s*(?:'([^']*)')?/g)];
      return { file, names: calls.map((call) => call[1]) };
    })
    .filter(({ names }) => names.length > 0);
}

describe('the prepared statements of src/', () => {
  const found = declarations();
  const names = found.flatMap((d) => d.names);
  let db: TestDatabase;

  beforeAll(async () => {
    for (const { file } of found) await import(pathToFileURL(join(SRC, file)).href);
    db = await createTestDatabase();
  });

  afterAll(async () => {
    await db.drop();
  });

  it('when all of them are imported › each has a literal name of its own, declared with one text', () => {
    // The worker's store, the daemon, its log writer and the build log reads at least.
    expect(found.length).toBeGreaterThanOrEqual(4);
    expect(names).not.toContain(undefined);
    expect(names.filter((name, i) => names.indexOf(name) !== i)).toEqual([]);
    const declared = declaredStatements();
    for (const name of names) expect(declared.has(name!), name).toBe(true);
    for (const name of names) expect(name).toMatch(/^[a-z_]+\.[a-z_]+$/);
  });

  it('when all of them are imported › each prepares on the migrated schema', async () => {
    const client = await db.pool.connect();
    try {
      for (const name of names) {
        const text = declaredStatements().get(name!)!;
        await client.query(`PREPARE ${pg.escapeIdentifier(name!)} AS ${text}`).catch((error: Error) => {
          throw new Error(`statement ${name} does not prepare: ${error.message}`, { cause: error });
        });
      }
    } finally {
      await client.query('DEALLOCATE ALL');
      client.release();
    }
  });
});

describe('prepared', () => {
  it('when a name is declared again with the same text › returns the same statement', () => {
    const first = prepared('test.same_text', 'SELECT 1');
    expect(prepared('test.same_text', 'SELECT 1')).toEqual(first);
  });

  it('when a name is declared again with another text › throws, naming it', () => {
    prepared('test.other_text', 'SELECT 1');
    expect(() => prepared('test.other_text', 'SELECT 2')).toThrow(
      'prepared statement "test.other_text" is already declared with another text',
    );
  });
});
