// Recovery from a dead worker: real worker processes (`workspace-jobs worker`, default lock settings), one
// job at a time started and its worker SIGKILLed while the build runs; measured from the kill to the moment
// another worker's attempt holds the job's chat lock (its `lock_acquired` event on the replay stream), then
// the job must still complete with the build its first attempt made. A replacement worker is started after
// each kill, so that two are always running.
import { insertBuild, insertChat, insertTemplate, insertUser, insertWorkspace } from '../src/cli/fixtures.js';
import { WorkspaceJobsProducer } from '../src/producer/producer.js';
import { loadProvisionerConfig, startProvisioner } from '../src/provisioner/index.js';
import { loadConfig } from '../src/shared/config.js';
import { readChatEvents } from '../src/shared/events.js';
import type { StartWorkspaceSuccess } from '../src/shared/contract.js';
import { createLogger } from '../src/shared/logger.js';
import { CliProcess, killAll } from '../test/helpers/cli-process.js';
import {
  REDIS_URL,
  benchDatabase,
  benchRedis,
  check,
  report,
  runBench,
  stats,
  uniquePrefix,
  until,
} from './lib.js';

const KILLS = 6;
/** Longer than a takeover, so that the re-run finds the build still running or just finished. */
const SIM = { SIM_BUILD_MS: '4000', SIM_AGENT_CONNECT_MS: '10', SIM_STARTUP_MS: '10' };

await runBench('recovery', 150_000, async (cleanup) => {
  const db = await benchDatabase(cleanup, 4);
  const prefix = uniquePrefix('recovery');
  const redis = benchRedis(cleanup, prefix);
  const log = createLogger('silent');
  const env = {
    REDIS_URL,
    DATABASE_URL: db.url,
    QUEUE_PREFIX: prefix,
    LOG_LEVEL: 'debug',
    WORKER_CONCURRENCY: '10',
  };
  const config = loadConfig({ ...env, LOG_LEVEL: 'silent' });

  cleanup.add('worker processes', killAll);
  const startWorker = async () => {
    const worker = new CliProcess('worker', ['worker'], env);
    await worker.waitForLog('worker started', (l) => l.msg === 'worker started', 30_000);
    return worker;
  };
  const alive = [await startWorker(), await startWorker()];

  const provisioner = await startProvisioner(
    config,
    loadProvisionerConfig({ ...SIM, PROVISIONER_CONCURRENCY: '4' }),
    log,
  );
  cleanup.add('provisioner', () => provisioner.stop(5_000));
  const producer = new WorkspaceJobsProducer({ connection: redis, pool: db.pool, prefix, log });
  cleanup.add('producer', () => producer.close());

  const { userId } = await insertUser(db.pool);
  const template = await insertTemplate(db.pool, { versions: [{}] });
  const recoveries: number[] = [];
  for (let kill = 0; kill < KILLS; kill++) {
    const { workspaceId } = await insertWorkspace(db.pool, {
      ownerId: userId,
      templateId: template.templateId,
    });
    const common = { workspaceId, templateVersionId: template.versionIds[0]!, initiatorId: userId } as const;
    await insertBuild(db.pool, {
      ...common,
      status: 'succeeded',
      transition: 'start',
      agents: [{ name: 'main' }],
    });
    const stop = await insertBuild(db.pool, { ...common, status: 'succeeded', transition: 'stop' });
    const { chatId } = await insertChat(db.pool, { ownerId: userId, workspaceId, buildId: stop.buildId });
    const { jobId } = await producer.startWorkspace({ chatId, ownerId: userId, workspaceId });

    const jobEvents = async () =>
      (await readChatEvents(redis, prefix, chatId, '0')).filter((e) => e.job.id === jobId);
    const queued = await until(
      'build_queued',
      async () => (await jobEvents()).find((e) => e.stage === 'build_queued'),
      15_000,
    );
    const holder = alive.find((w) =>
      w.logs().some((l) => l.msg === 'chat lock acquired' && l.jobId === jobId),
    );
    check(holder, `no worker logged holding the chat lock of job ${jobId}`);
    holder.kill();
    const killedAt = Date.now();
    await holder.exited;
    alive.splice(alive.indexOf(holder), 1);

    const resumed = await until(
      'a second lock_acquired',
      async () => (await jobEvents()).filter((e) => e.stage === 'lock_acquired')[1],
      30_000,
    );
    recoveries.push(Number(resumed.seq.split('-')[0]) - killedAt);
    const result = (await producer.waitForResult(jobId, { timeoutMs: 30_000 })) as StartWorkspaceSuccess;
    check(
      result.started === true && result.build_id === queued.data?.build_id,
      `job ${jobId} ended with ${JSON.stringify(result)}, expected its first attempt's build ${String(queued.data?.build_id)}`,
    );
    alive.push(await startWorker());
  }

  const s = stats(recoveries);
  report({
    case: 'worker killed -> job resumed (SIGKILL mid-build, default locks)',
    n: recoveries.length,
    latency: s,
    notes: `p50 ${(s.p50 / 1000).toFixed(1)} s, max ${(s.max / 1000).toFixed(1)} s; every job completed with its first build`,
  });
});
