import { describe, expect, it } from 'vitest';
import { CommandExecutor } from '../../src/provisioner/command-executor.js';
import { createExecutor, loadProvisionerConfig } from '../../src/provisioner/provisioner-config.js';
import { SimExecutor } from '../../src/provisioner/sim-executor.js';
import { ConfigError } from '../../src/shared/config.js';
import type { Pool } from '../../src/shared/postgres.js';

describe('loadProvisionerConfig', () => {
  it('when nothing is set › uses the sim executor with its defaults', () => {
    expect(loadProvisionerConfig({})).toEqual({
      executor: 'sim',
      command: undefined,
      commandTimeoutMs: 600_000,
      concurrency: 4,
      heartbeatMs: 2_000,
      staleAfterMs: 10_000,
      maxReruns: 2,
      sim: {
        buildMs: 3_000,
        buildJitterMs: 0,
        failureRate: 0,
        seed: undefined,
        agentNames: ['main'],
        agentConnectMs: 1_000,
        startupMs: 2_000,
        startupFailureRate: 0,
        quotaBudget: undefined,
        workspaceCost: 1,
        logLines: 0,
      },
    });
  });

  it('when every variable is set › reads each of them', () => {
    const config = loadProvisionerConfig({
      PROVISIONER_EXECUTOR: 'command',
      PROVISIONER_COMMAND: './build.sh',
      PROVISIONER_COMMAND_TIMEOUT_MS: '1000',
      PROVISIONER_CONCURRENCY: '8',
      PROVISIONER_HEARTBEAT_MS: '1000',
      PROVISIONER_STALE_AFTER_MS: '60000',
      PROVISIONER_MAX_RERUNS: '0',
      SIM_BUILD_MS: '0',
      SIM_BUILD_JITTER_MS: '500',
      SIM_FAILURE_RATE: '0.25',
      SIM_SEED: '42',
      SIM_AGENT_NAMES: 'main, dev-coderd-chat',
      SIM_AGENT_CONNECT_MS: '10',
      SIM_STARTUP_MS: '20',
      SIM_STARTUP_FAILURE_RATE: '1',
      SIM_QUOTA_BUDGET: '3',
      SIM_WORKSPACE_COST: '2',
      SIM_LOG_LINES: '10000',
    });

    expect(config).toEqual({
      executor: 'command',
      command: './build.sh',
      commandTimeoutMs: 1000,
      concurrency: 8,
      heartbeatMs: 1_000,
      staleAfterMs: 60_000,
      maxReruns: 0,
      sim: {
        buildMs: 0,
        buildJitterMs: 500,
        failureRate: 0.25,
        seed: 42,
        agentNames: ['main', 'dev-coderd-chat'],
        agentConnectMs: 10,
        startupMs: 20,
        startupFailureRate: 1,
        quotaBudget: 3,
        workspaceCost: 2,
        logLines: 10_000,
      },
    });
  });

  it('when SIM_AGENT_NAMES is none › start builds have no agents', () => {
    expect(loadProvisionerConfig({ SIM_AGENT_NAMES: 'none' }).sim.agentNames).toEqual([]);
  });

  it.each([
    [{ PROVISIONER_EXECUTOR: 'docker' }, 'PROVISIONER_EXECUTOR'],
    [{ PROVISIONER_EXECUTOR: 'command' }, 'PROVISIONER_COMMAND'],
    [{ PROVISIONER_CONCURRENCY: '0' }, 'PROVISIONER_CONCURRENCY'],
    [{ PROVISIONER_COMMAND_TIMEOUT_MS: '1m' }, 'PROVISIONER_COMMAND_TIMEOUT_MS'],
    [{ PROVISIONER_STALE_AFTER_MS: '5000' }, 'PROVISIONER_STALE_AFTER_MS'],
    [{ PROVISIONER_HEARTBEAT_MS: '10000', PROVISIONER_STALE_AFTER_MS: '20000' }, 'PROVISIONER_HEARTBEAT_MS'],
    [{ PROVISIONER_HEARTBEAT_MS: '50' }, 'PROVISIONER_HEARTBEAT_MS'],
    [{ PROVISIONER_MAX_RERUNS: '-1' }, 'PROVISIONER_MAX_RERUNS'],
    [{ SIM_BUILD_MS: '-1' }, 'SIM_BUILD_MS'],
    [{ SIM_FAILURE_RATE: '1.5' }, 'SIM_FAILURE_RATE'],
    [{ SIM_FAILURE_RATE: 'half' }, 'SIM_FAILURE_RATE'],
    [{ SIM_STARTUP_FAILURE_RATE: '-0.1' }, 'SIM_STARTUP_FAILURE_RATE'],
    [{ SIM_SEED: '4294967296' }, 'SIM_SEED'],
    [{ SIM_AGENT_NAMES: 'main,bad name' }, 'SIM_AGENT_NAMES'],
    [{ SIM_AGENT_NAMES: 'main,main' }, 'SIM_AGENT_NAMES'],
    [{ SIM_AGENT_CONNECT_MS: 'soon' }, 'SIM_AGENT_CONNECT_MS'],
    [{ SIM_STARTUP_MS: '1.5' }, 'SIM_STARTUP_MS'],
    [{ SIM_QUOTA_BUDGET: '-1' }, 'SIM_QUOTA_BUDGET'],
    [{ SIM_WORKSPACE_COST: '2147483648' }, 'SIM_WORKSPACE_COST'],
    [{ SIM_LOG_LINES: 'many' }, 'SIM_LOG_LINES'],
  ])('when a value is bad (%o) › throws a ConfigError naming %s', (env, variable) => {
    expect(() => loadProvisionerConfig(env)).toThrow(ConfigError);
    expect(() => loadProvisionerConfig(env)).toThrow(variable);
  });
});

describe('createExecutor', () => {
  const pool = {} as Pool;

  it('when the executor is sim › builds a SimExecutor', () => {
    expect(createExecutor(loadProvisionerConfig({}), { pool })).toBeInstanceOf(SimExecutor);
  });

  it('when the executor is command › builds a CommandExecutor', () => {
    const config = loadProvisionerConfig({ PROVISIONER_EXECUTOR: 'command', PROVISIONER_COMMAND: 'true' });
    expect(createExecutor(config, { pool })).toBeInstanceOf(CommandExecutor);
  });
});
