// Builds the template database once per test run: every test file clones it (CREATE DATABASE … TEMPLATE),
// which is much faster than migrating, and isolates LISTEN/NOTIFY channels between files.
import { randomBytes } from 'node:crypto';
import type { TestProject } from 'vitest/node';
import { migrate } from '../../src/shared/migrate.js';
import { adminUrl, dropDatabase, testDatabaseUrl } from './database.js';

declare module 'vitest' {
  export interface ProvidedContext {
    templateDatabase: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  // Unique per run, so that several test runs on one machine do not trip over each other.
  const TEMPLATE_DATABASE = `wsjobs_test_template_${randomBytes(4).toString('hex')}`;
  project.provide('templateDatabase', TEMPLATE_DATABASE);
  await dropDatabase(TEMPLATE_DATABASE);
  await migrate(testDatabaseUrl(TEMPLATE_DATABASE));
  // Nobody may be connected to a template while it is cloned.
  const { default: pg } = await import('pg');
  const admin = new pg.Client({ connectionString: adminUrl() });
  await admin.connect();
  await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1`, [
    TEMPLATE_DATABASE,
  ]);
  await admin.end();
  return async () => {
    await dropDatabase(TEMPLATE_DATABASE);
  };
}
