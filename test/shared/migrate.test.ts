import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { migrate, readMigrations } from '../../src/shared/migrate.js';
import { dropDatabase, testDatabaseUrl } from '../helpers/database.js';

describe('migrate', () => {
  const created: string[] = [];
  afterEach(async () => {
    await Promise.all(created.splice(0).map(dropDatabase));
  });

  function freshName(): string {
    const name = `wsjobs_test_migrate_${randomBytes(4).toString('hex')}`;
    created.push(name);
    return name;
  }

  it('creates a missing database, applies every migration once, and is idempotent', async () => {
    const url = testDatabaseUrl(freshName());
    const all = (await readMigrations()).map((m) => m.version);
    expect(all.length).toBeGreaterThan(0);

    const first = await migrate(url);
    expect(first).toEqual({ createdDatabase: true, applied: all, alreadyApplied: [] });

    const second = await migrate(url);
    expect(second).toEqual({ createdDatabase: false, applied: [], alreadyApplied: all });
  });

  it('when several processes migrate at once › each migration is applied exactly once', async () => {
    const url = testDatabaseUrl(freshName());
    const results = await Promise.all([migrate(url), migrate(url), migrate(url)]);
    const applied = results.flatMap((r) => r.applied);
    expect(applied.sort()).toEqual((await readMigrations()).map((m) => m.version).sort());
  });

  it('refuses to continue when an applied migration was edited', async () => {
    const url = testDatabaseUrl(freshName());
    await migrate(url);
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    await client.query(`UPDATE schema_migrations SET checksum = 'edited'`);
    await client.end();
    await expect(migrate(url)).rejects.toThrow(/was changed after it was applied/);
  });
});
