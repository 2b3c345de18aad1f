// A bad setting stops a command at start-up with exit 2 and one line naming the variable.
import { afterEach, describe, expect, it } from 'vitest';
import { killAll, runCli } from '../helpers/cli-process.js';

describe('configuration errors', () => {
  afterEach(killAll);

  it.each([
    ['worker', 'SHUTDOWN_GRACE_MS', 'soon'],
    ['provisioner', 'SHUTDOWN_GRACE_MS', '99999999999'],
    ['worker', 'WORKER_CONCURRENCY', '0'],
    ['dashboard', 'REDIS_URL', 'not a url'],
  ])('%s with %s=%s › exits 2 naming the variable', async (command, name, value) => {
    const { exit, stderr } = await runCli([command], { [name]: value });
    expect(exit).toEqual({ code: 2, signal: null });
    expect(stderr.filter((line) => line.trim())).toHaveLength(1);
    expect(stderr[0]).toContain(name);
  });

  it('worker on a Redis Cluster with a QUEUE_PREFIX without a hash tag › exits 2 saying why', async () => {
    const { exit, stderr } = await runCli(['worker'], { REDIS_CLUSTER: 'true', QUEUE_PREFIX: 'wsjobs' });
    expect(exit).toEqual({ code: 2, signal: null });
    expect(stderr.filter((line) => line.trim())).toEqual([
      expect.stringMatching(/QUEUE_PREFIX "wsjobs" has no hash tag, but REDIS_CLUSTER=true.*"\{wsjobs\}"/),
    ]);
  });
});
