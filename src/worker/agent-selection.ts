// Which agent of a workspace the chat talks to (Coder's agentselect.FindChatAgent, PR #23741;
// docs/start-workspace.md "Agent readiness"), and whether an agent is reachable. Pure: no I/O.

import type { Agent, AgentConnectionStatus } from './ports.js';

/** A template marks the agent meant for chats by giving it a name ending in this (case-insensitive). */
export const CHAT_AGENT_SUFFIX = '-coderd-chat';

export type AgentSelection = { ok: true; agent: Agent } | { ok: false; error: string };

/**
 * agents: all agents of the latest build (may be empty → caller reports no_agent; do not handle that here,
 * return { ok:false, error:'no eligible workspace agents found' } only when there are agents but none is root).
 */
export function selectChatAgent(agents: Agent[]): AgentSelection {
  // Sub-agents (devcontainers) are never chosen, not even when they carry the suffix; Coder's PR #24451
  // that would have preferred them was closed unmerged.
  const roots = agents.filter((agent) => agent.parentId === null);
  if (roots.length === 0) return { ok: false, error: 'no eligible workspace agents found' };

  // The store returns agents in no particular order, so sort them into a deterministic one first:
  // display_order, then lower-cased name, then exact name, then id (Array.prototype.sort is stable).
  roots.sort(compareAgents);

  const matching = roots.filter((agent) => agent.name.toLowerCase().endsWith(CHAT_AGENT_SUFFIX));
  if (matching.length === 1) return { ok: true, agent: matching[0]! };
  if (matching.length === 0) return { ok: true, agent: roots[0]! };
  return {
    ok: false,
    error:
      `multiple agents match the chat suffix ${JSON.stringify(CHAT_AGENT_SUFFIX)}: ` +
      `${matching.map((agent) => agent.name).join(', ')}; only one agent should use this suffix`,
  };
}

/** Reachable = has connected and is not disconnected since (disconnectedAt null or < lastConnectedAt). */
export function isAgentConnected(agent: Agent): boolean {
  // lastConnectedAt is set on every (re)connection, so it alone says "has connected"; Coder's derived status
  // calls an agent whose disconnected_at >= last_connected_at "disconnected".
  if (agent.lastConnectedAt === null) return false;
  return agent.disconnectedAt === null || agent.disconnectedAt.getTime() < agent.lastConnectedAt.getTime();
}

/**
 * Coder's WorkspaceAgent.Status as create_workspace uses it: never connected → `timeout` once its
 * connection timeout has passed, else `connecting`; disconnected since its last connection →
 * `disconnected`; else `connected`. (Coder also calls an agent silent for longer than the inactivity
 * timeout disconnected; agents here do not heartbeat last_connected_at, so that rule is left out.)
 */
export function agentConnectionStatus(agent: Agent, now = new Date()): AgentConnectionStatus {
  if (agent.firstConnectedAt === null && agent.lastConnectedAt === null) {
    const waitedMs = now.getTime() - agent.createdAt.getTime();
    return agent.connectionTimeoutSeconds > 0 && waitedMs > agent.connectionTimeoutSeconds * 1000
      ? 'timeout'
      : 'connecting';
  }
  return isAgentConnected(agent) ? 'connected' : 'disconnected';
}

function compareAgents(a: Agent, b: Agent): number {
  return (
    a.displayOrder - b.displayOrder ||
    compareStrings(a.name.toLowerCase(), b.name.toLowerCase()) ||
    compareStrings(a.name, b.name) ||
    compareStrings(a.id, b.id)
  );
}

/**
 * Go compares strings byte-wise (UTF-8), i.e. by code point; JavaScript's `<` compares UTF-16 code units,
 * which differs above U+FFFF. Not localeCompare: the order must not depend on the host's locale.
 */
function compareStrings(a: string, b: string): number {
  const left = [...a];
  const right = [...b];
  const length = Math.min(left.length, right.length);
  for (let i = 0; i < length; i++) {
    const difference = left[i]!.codePointAt(0)! - right[i]!.codePointAt(0)!;
    if (difference !== 0) return difference;
  }
  return left.length - right.length;
}
