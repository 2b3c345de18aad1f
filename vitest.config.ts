import { configDefaults, defineConfig } from 'vitest/config';

const CLUSTER_TESTS = 'test/**/*.cluster.test.ts';

export default defineConfig({
  test: {
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // Two cores: more forks only contend for Postgres and Redis.
    maxWorkers: 2,
    projects: [
      {
        extends: true,
        test: {
          name: 'main',
          include: ['test/**/*.test.ts'],
          exclude: [...configDefaults.exclude, CLUSTER_TESTS],
          globalSetup: ['test/helpers/global-setup.ts'],
        },
      },
      {
        // The same helpers on a Redis Cluster (test/helpers/redis-cluster-setup.ts), started only when one
        // of these files runs.
        extends: true,
        test: {
          name: 'cluster',
          include: [CLUSTER_TESTS],
          globalSetup: ['test/helpers/global-setup.ts', 'test/helpers/redis-cluster-setup.ts'],
        },
      },
    ],
  },
});
