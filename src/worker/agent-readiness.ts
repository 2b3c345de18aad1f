// Agent readiness after a start (Coder's waitForAgentAndRespond + waitForAgentReady): choose the chat
// agent, wait for it to connect, then for its startup scripts. Problems are reported in the result,
// never as a failure: the workspace did start. So is a cancel that comes during these waits: too late to
// stop the start (its build succeeded), it ends the wait, not the job (docs/start-workspace.md D19).
import { WaitTimeoutError } from '../shared/errors.js';
import type { AgentReadiness } from '../shared/contract.js';
import { topics, type Agent, type JobContext } from './ports.js';
import { isAgentConnected, selectChatAgent } from './agent-selection.js';
import { JobCancelRequestedError } from './cancel-requested.js';

/** Lifecycle states in which the startup scripts are still running. */
const STARTING = new Set(['created', 'starting']);
/**
 * The connect wait's timed re-check: an agent that reconnects by moving only `last_connected_at` past its
 * `disconnected_at` raises no notification (migrations/0001: heartbeats do not notify).
 */
export const AGENT_CONNECT_RECHECK_MS = 10_000;

export async function agentReadiness(ctx: JobContext, workspaceId: string): Promise<AgentReadiness> {
  let agents: Agent[];
  try {
    agents = await ctx.store.getAgentsOfLatestBuild(workspaceId);
  } catch {
    // Coder reports a failed agent lookup as no agent too.
    agents = [];
  }
  if (agents.length === 0) return { agent_status: 'no_agent' };
  const selection = selectChatAgent(agents);
  if (!selection.ok) return { agent_status: 'selection_error', agent_error: selection.error };
  const chosen = selection.agent;
  const data = { agent_id: chosen.id, agent_name: chosen.name };

  // The agent as last read, first by the agents read: when it ends a wait (`ends`), the wait is answered from
  // it without subscribing (10,000 builds ending at once with their agents ready: no hub listener, timer or
  // admission slot for either phase, issue 11). Otherwise the wait's checks read the agent, the first one
  // too, since a change made before the wait subscribed would not wake it.
  let lastRead: Agent | null = chosen;
  const wait = async <T>(
    ends: (agent: Agent) => boolean,
    check: (agent: Agent) => Promise<T | undefined>,
    timeouts: { timeoutMs: number; recheckMs?: number },
  ): Promise<T | 'gone'> => {
    ctx.signal.throwIfAborted();
    if (lastRead && ends(lastRead)) {
      const known = await check(lastRead);
      // As in a wait: an abort that came during the check wins over its answer.
      ctx.signal.throwIfAborted();
      if (known !== undefined) return known;
    }
    return ctx.waiter.waitFor<T | 'gone'>(
      [topics.agent(chosen.id)],
      async () => {
        const agent = await ctx.store.getAgent(chosen.id);
        lastRead = agent;
        return agent ? check(agent) : 'gone';
      },
      { ...timeouts, signal: ctx.signal },
    );
  };
  // Made only when it is the answer: 10,000 ready agents at once would build as many unused ones.
  const gone = (): AgentReadiness => ({
    agent_status: 'not_ready',
    agent_error: `agent "${chosen.name}" no longer exists`,
  });

  // Phase 1: reachability.
  let announced = false;
  try {
    const connected = await wait(
      isAgentConnected,
      async (agent) => {
        if (isAgentConnected(agent)) return true;
        if (!announced) {
          announced = true;
          await ctx.progress(
            'agent_connecting',
            `Waiting for agent "${chosen.name}" to connect`,
            data,
            workspaceId,
          );
        }
        return undefined;
      },
      // Re-checked on a timer too: a reconnect can come without a notification (AGENT_CONNECT_RECHECK_MS).
      {
        timeoutMs: ctx.timeouts.agentConnectTimeoutMs,
        recheckMs: ctx.timeouts.agentConnectRecheckMs ?? AGENT_CONNECT_RECHECK_MS,
      },
    );
    if (connected === 'gone') return gone();
  } catch (error) {
    if (error instanceof JobCancelRequestedError) {
      return {
        agent_status: 'not_ready',
        agent_error: `canceled while waiting for agent "${chosen.name}" to connect: ${error.request.reason ?? 'cancel requested'}`,
      };
    }
    if (!(error instanceof WaitTimeoutError)) throw error;
    return {
      agent_status: 'not_ready',
      agent_error: `agent "${chosen.name}" did not connect within ${ctx.timeouts.agentConnectTimeoutMs} ms`,
    };
  }

  // Phase 2: startup scripts, through the agent's lifecycle.
  let lastState: string | undefined;
  try {
    const outcome = await wait<AgentReadiness>(
      (agent) => !STARTING.has(agent.lifecycleState),
      async (agent) => {
        const state = agent.lifecycleState;
        if (state !== lastState) {
          lastState = state;
          if (state === 'starting') {
            await ctx.progress(
              'agent_starting',
              `Agent "${chosen.name}" is running its startup scripts`,
              data,
              workspaceId,
            );
          } else if (state === 'ready') {
            await ctx.progress('agent_ready', `Agent "${chosen.name}" is ready`, data, workspaceId);
          }
        }
        if (STARTING.has(state)) return undefined;
        if (state === 'ready') return {};
        return { startup_scripts: 'startup_scripts_failed', lifecycle_state: state };
      },
      // No timed re-check: the check looks only at lifecycle_state, and every change of it notifies.
      { timeoutMs: ctx.timeouts.startupScriptTimeoutMs },
    );
    return outcome === 'gone' ? gone() : outcome;
  } catch (error) {
    if (error instanceof WaitTimeoutError) return { startup_scripts: 'startup_scripts_timeout' };
    if (!(error instanceof JobCancelRequestedError)) throw error;
    // Coder's answer to any other end of this wait: the agent is connected, its scripts' outcome unknown. No
    // result field carries the reason here (agent_error goes with agent_status); the cancel's marker keeps it.
    return { startup_scripts: 'startup_scripts_unknown' };
  }
}
