// Test-only: a worker process, as `workspace-jobs worker` (same configuration from the environment), that
// stops for a while between a job's result event and BullMQ's record of its outcome, so that a test can kill
// it in exactly that window. Run by CliProcess with this file as its script.
import { loadConfig } from '../../src/shared/config.js';
import { createLogger } from '../../src/shared/logger.js';
import { WorkspaceWorker } from '../../src/worker/worker.js';

/** Long enough for any test to kill it; bounded so that a forgotten process carries on and can be stopped. */
const HOLD_MS = 60_000;

const HELD_AFTER_RESULT = 'result published; holding before BullMQ records it';

const config = loadConfig();
const log = createLogger(config.logLevel, 'workspace-jobs-worker');
const worker = await WorkspaceWorker.start(config, log, {
  processor: {
    afterResultPublished: async (jobId) => {
      log.info({ jobId }, HELD_AFTER_RESULT);
      await new Promise((resolve) => setTimeout(resolve, HOLD_MS));
    },
  },
});
process.once('SIGTERM', () => void worker.close(1_000));
