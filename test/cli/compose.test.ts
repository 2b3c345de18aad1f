// docker-compose.yml as docker-compose resolves it (offline: `config` needs no Docker engine): with nothing
// set and no .env, as a fresh checkout has it, the file is valid, so that `--scale worker=N` and
// `run --rm migrate seed` work; the dashboard, the one service that needs a password, then gets none and
// refuses to start rather than serve without auth. Skipped where docker-compose is not installed (.ci/run
// installs it). Its output is YAML, read with the PyYAML that docker-compose v1 itself runs on.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT, runCli } from '../helpers/cli-process.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { TEST_REDIS_URL } from '../helpers/redis.js';

const hasCompose = spawnSync('docker-compose', ['version'], { stdio: 'ignore' }).status === 0;

interface Service {
  environment?: Record<string, string>;
  healthcheck?: { test: string[] };
  image?: string;
  logging?: { driver: string; options?: Record<string, string> };
}

describe.skipIf(!hasCompose)('docker-compose.yml', () => {
  let dir: string;
  let emptyEnvFile: string;
  let db: TestDatabase;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'wsjobs-compose-'));
    emptyEnvFile = join(dir, 'empty.env');
    writeFileSync(emptyEnvFile, '');
    db = await createTestDatabase();
  });

  afterAll(async () => {
    rmSync(dir, { recursive: true, force: true });
    await db.drop();
  });

  /** The services as `docker-compose config` resolves them, with only `env` set and no .env file. */
  function resolve(env: Record<string, string> = {}): Record<string, Service> {
    const config = spawnSync('docker-compose', ['--env-file', emptyEnvFile, 'config'], {
      cwd: REPO_ROOT,
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env },
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(config.status, config.stderr).toBe(0);
    const json = spawnSync(
      'python3',
      ['-c', 'import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)'],
      { input: config.stdout, encoding: 'utf8', timeout: 30_000 },
    );
    expect(json.status, json.stderr).toBe(0);
    return (JSON.parse(json.stdout) as { services: Record<string, Service> }).services;
  }

  it('is valid with nothing set; the dashboard then gets no password and refuses to start (exit 2)', async () => {
    const services = resolve();
    const dashboard = services.dashboard!.environment!;
    expect(dashboard.DASHBOARD_PASSWORD).toBe('');
    expect(dashboard.DASHBOARD_HOST).toBe('0.0.0.0');

    // Its environment as compose gives it, pointed at the test's Redis and Postgres.
    const run = await runCli(
      ['dashboard'],
      { ...dashboard, REDIS_URL: TEST_REDIS_URL, DATABASE_URL: db.url },
      20_000,
    );
    expect(run.exit, JSON.stringify(run)).toEqual({ code: 2, signal: null });
    expect(run.stderr).toEqual([expect.stringMatching(/^workspace-jobs: .*DASHBOARD_PASSWORD/)]);
  }, 60_000);

  it('passes DASHBOARD_PASSWORD from the environment to the dashboard alone', () => {
    const services = resolve({ DASHBOARD_PASSWORD: 'from-the-env' });
    for (const [name, service] of Object.entries(services)) {
      expect(service.environment?.DASHBOARD_PASSWORD, name).toBe(
        name === 'dashboard' ? 'from-the-env' : undefined,
      );
    }
  }, 60_000);

  it("rotates every workspace-jobs service's logs", () => {
    const ours = Object.entries(resolve()).filter(([, service]) => service.image === 'workspace-jobs:local');
    expect(ours.map(([name]) => name).sort()).toEqual(['dashboard', 'migrate', 'provisioner', 'worker']);
    for (const [name, service] of ours) {
      expect(service.logging, name).toEqual({
        driver: 'json-file',
        options: { 'max-size': '10m', 'max-file': '5' },
      });
    }
  }, 60_000);

  it('health-checks the provisioner with the healthcheck command, which reads the file it writes', () => {
    const provisioner = resolve().provisioner!;
    expect(provisioner.healthcheck?.test).toEqual(['CMD', 'node', 'bin/workspace-jobs.js', 'healthcheck']);
    expect(provisioner.environment?.PROVISIONER_HEALTH_FILE).toMatch(/^\/tmp\/.+\.json$/);
  }, 60_000);
});
