import { describe, expect, it } from 'vitest';
import type { Agent } from '../../src/worker/ports.js';
import {
  agentConnectionStatus,
  CHAT_AGENT_SUFFIX,
  isAgentConnected,
  selectChatAgent,
} from '../../src/worker/agent-selection.js';

let nextId = 0;

function agent(name: string, displayOrder = 0, overrides: Partial<Agent> = {}): Agent {
  nextId += 1;
  return {
    id: `00000000-0000-0000-0000-${String(nextId).padStart(12, '0')}`,
    name,
    parentId: null,
    displayOrder,
    lifecycleState: 'ready',
    firstConnectedAt: null,
    lastConnectedAt: null,
    disconnectedAt: null,
    createdAt: new Date('2026-01-01T00:00:00Z'),
    connectionTimeoutSeconds: 0,
    ...overrides,
  };
}

function child(name: string, displayOrder = 0): Agent {
  return agent(name, displayOrder, { parentId: 'parent-agent-id' });
}

function selectedName(agents: Agent[]): string {
  const selection = selectChatAgent(agents);
  if (!selection.ok) throw new Error(`expected a selection, got: ${selection.error}`);
  return selection.agent.name;
}

function selectionError(agents: Agent[]): string {
  const selection = selectChatAgent(agents);
  if (selection.ok) throw new Error(`expected an error, got agent ${selection.agent.name}`);
  return selection.error;
}

describe('selectChatAgent', () => {
  it('exports Coder’s suffix', () => {
    expect(CHAT_AGENT_SUFFIX).toBe('-coderd-chat');
  });

  it('when there is a single root agent › chooses it', () => {
    expect(selectedName([agent('solo', 5)])).toBe('solo');
  });

  it('returns the agent object itself', () => {
    const dev = agent('dev');
    const selection = selectChatAgent([dev]);
    expect(selection).toEqual({ ok: true, agent: dev });
  });

  describe('when no agent has the chat suffix', () => {
    it('chooses the lowest display_order', () => {
      expect(selectedName([agent('zeta', 2), agent('bravo', 1), agent('alpha', 1)])).toBe('alpha');
    });

    it('breaks a display_order tie by case-insensitive name', () => {
      expect(selectedName([agent('Bravo', 3), agent('alpha', 3), agent('charlie', 3)])).toBe('alpha');
    });

    it('breaks a case-insensitive name tie by exact name (upper case first, byte order)', () => {
      expect(selectedName([agent('dev', 0), agent('Dev', 0)])).toBe('Dev');
    });

    it('breaks an exact name tie by id', () => {
      const second = agent('dev', 0, { id: '00000000-0000-0000-0000-000000000002' });
      const first = agent('dev', 0, { id: '00000000-0000-0000-0000-000000000001' });
      const selection = selectChatAgent([second, first]);
      expect(selection).toEqual({ ok: true, agent: first });
    });

    it('does not depend on the input order', () => {
      const agents = [
        agent('b', 1),
        agent('a', 1),
        agent('A', 1),
        agent('c', 0, { parentId: 'x' }),
        agent('z', 2),
      ];
      const expected = selectedName(agents);
      expect(expected).toBe('A');
      expect(selectedName([...agents].reverse())).toBe(expected);
    });

    it('does not reorder the caller’s array', () => {
      const agents = [agent('b', 1), agent('a', 0)];
      selectChatAgent(agents);
      expect(agents.map((a) => a.name)).toEqual(['b', 'a']);
    });
  });

  describe('when agents use the chat suffix', () => {
    it('exactly one match › chooses it over agents that sort earlier', () => {
      expect(selectedName([agent('alpha', 0), agent('dev-coderd-chat', 5), agent('beta', 1)])).toBe(
        'dev-coderd-chat',
      );
    });

    it('matches the suffix case-insensitively', () => {
      expect(selectedName([agent('alpha', 0), agent('Dev-Coderd-Chat', 2), agent('zeta', 1)])).toBe(
        'Dev-Coderd-Chat',
      );
    });

    it('a name that only contains the suffix in the middle › does not match', () => {
      expect(selectedName([agent('alpha', 0), agent('x-coderd-chat-y', 1)])).toBe('alpha');
    });

    it('two or more matches › fails with Coder’s message listing the names in sorted order', () => {
      const error = selectionError([
        agent('gamma-coderd-chat', 3),
        agent('alpha-coderd-chat', 2),
        agent('beta-coderd-chat', 1),
        agent('plain', 0),
      ]);
      expect(error).toBe(
        'multiple agents match the chat suffix "-coderd-chat": ' +
          'beta-coderd-chat, alpha-coderd-chat, gamma-coderd-chat; only one agent should use this suffix',
      );
    });

    it('two matches differing only in case › both count, exact name order', () => {
      expect(selectionError([agent('dev-coderd-chat'), agent('DEV-CODERD-CHAT')])).toBe(
        'multiple agents match the chat suffix "-coderd-chat": DEV-CODERD-CHAT, dev-coderd-chat; ' +
          'only one agent should use this suffix',
      );
    });
  });

  describe('sub-agents', () => {
    it('are never chosen, even when they sort first', () => {
      expect(selectedName([agent('alpha', 1), child('aaa', 0), agent('bravo', 0)])).toBe('bravo');
    });

    it('are ignored for the chat suffix', () => {
      expect(selectedName([agent('alpha', 1), child('child-coderd-chat', 0), agent('bravo', 0)])).toBe(
        'bravo',
      );
    });

    it('do not make a root suffix match ambiguous', () => {
      expect(
        selectedName([agent('alpha', 0), child('child-coderd-chat', 1), agent('root-coderd-chat', 2)]),
      ).toBe('root-coderd-chat');
    });

    it('when every agent is a sub-agent › fails with no eligible agents', () => {
      expect(selectionError([child('alpha', 0), child('beta-coderd-chat', 1)])).toBe(
        'no eligible workspace agents found',
      );
    });
  });

  it('when there are no agents at all › fails with no eligible agents (the caller reports no_agent first)', () => {
    expect(selectionError([])).toBe('no eligible workspace agents found');
  });
});

describe('isAgentConnected', () => {
  const t0 = new Date('2026-01-01T00:00:00Z');
  const t1 = new Date('2026-01-01T00:01:00Z');
  const t2 = new Date('2026-01-01T00:02:00Z');

  it('when the agent never connected › is false', () => {
    expect(isAgentConnected(agent('dev'))).toBe(false);
  });

  it('when the agent connected and never disconnected › is true', () => {
    expect(isAgentConnected(agent('dev', 0, { firstConnectedAt: t0, lastConnectedAt: t0 }))).toBe(true);
  });

  it('when the agent disconnected after its last connection › is false', () => {
    expect(
      isAgentConnected(agent('dev', 0, { firstConnectedAt: t0, lastConnectedAt: t1, disconnectedAt: t2 })),
    ).toBe(false);
  });

  it('when the agent disconnected at the same instant as its last connection › is false', () => {
    expect(
      isAgentConnected(agent('dev', 0, { firstConnectedAt: t0, lastConnectedAt: t1, disconnectedAt: t1 })),
    ).toBe(false);
  });

  it('when the agent reconnected after a disconnection › is true', () => {
    expect(
      isAgentConnected(agent('dev', 0, { firstConnectedAt: t0, lastConnectedAt: t2, disconnectedAt: t1 })),
    ).toBe(true);
  });

  it('when only a disconnection is recorded › is false', () => {
    expect(isAgentConnected(agent('dev', 0, { disconnectedAt: t1 }))).toBe(false);
  });
});

describe('agentConnectionStatus', () => {
  const created = new Date('2026-01-01T00:00:00Z');
  const at = (seconds: number) => new Date(created.getTime() + seconds * 1000);

  it('when the agent never connected › connecting, until its connection timeout passes', () => {
    const waiting = agent('dev', 0, { createdAt: created, connectionTimeoutSeconds: 60 });
    expect(agentConnectionStatus(waiting, at(30))).toBe('connecting');
    expect(agentConnectionStatus(waiting, at(61))).toBe('timeout');
  });

  it('when the agent has no connection timeout › connecting forever', () => {
    expect(agentConnectionStatus(agent('dev', 0, { createdAt: created }), at(86_400))).toBe('connecting');
  });

  it('when connected and not disconnected since › connected; disconnected since › disconnected', () => {
    const connected = agent('dev', 0, { firstConnectedAt: at(1), lastConnectedAt: at(5) });
    expect(agentConnectionStatus(connected, at(10))).toBe('connected');
    expect(agentConnectionStatus({ ...connected, disconnectedAt: at(6) }, at(10))).toBe('disconnected');
  });
});
