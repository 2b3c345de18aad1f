// The live chat page: lists chats, starts or creates a chat's workspace through the dashboard's API, and
// follows the chat's job events over Server-Sent Events (GET chats/<id>/events), rendered as a timeline per
// job with its result. Plain DOM, no framework, no inline script (the page is served with a strict CSP).
// Every piece of data goes into the page with textContent, never as HTML.
/* global document, window, fetch, EventSource, URLSearchParams */

const $ = (id) => document.getElementById(id);

/** h('div', { class: 'x' }, child, 'text', ...): a DOM element; null/false children are skipped. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof window.Node ? child : String(child));
  }
  return el;
}

const short = (id) => (typeof id === 'string' ? id.slice(0, 8) : '');

function clock(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: body === undefined ? {} : { 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let json;
  try {
    json = await res.json();
  } catch {
    json = undefined;
  }
  if (!res.ok) throw new Error(json?.error ?? `${res.status} ${res.statusText}`);
  return json;
}

/** An optional JSON object from a text field; throws a readable error. */
function parseParameters(text, what) {
  const trimmed = text.trim();
  if (trimmed === '') return undefined;
  try {
    return JSON.parse(trimmed);
  } catch {
    throw new Error(`${what} must be JSON, e.g. {"region": "eu-west-1"}`);
  }
}

// ---------------------------------------------------------------------------------------------------
// State

const state = {
  chats: [],
  templates: [],
  chatId: undefined,
  /** The open EventSource of the selected chat. */
  source: undefined,
  /** jobId -> { name, card, rows, status, attempt, resultEl } */
  jobs: new Map(),
  seen: new Set(),
};

// ---------------------------------------------------------------------------------------------------
// Chats and templates

/** A chat's workspace state in words, from its latest build's transition and job status. */
function chatState(chat) {
  if (!chat.workspace_id) return { label: 'no workspace', tone: 'muted' };
  if (chat.workspace_deleted) return { label: 'deleted', tone: 'muted' };
  if (!chat.transition) return { label: 'never built', tone: 'muted' };
  const verb = { start: 'starting', stop: 'stopping', delete: 'deleting' }[chat.transition];
  switch (chat.job_status) {
    case 'succeeded':
      return chat.transition === 'start'
        ? { label: 'running', tone: 'ok' }
        : { label: chat.transition === 'stop' ? 'stopped' : 'deleted', tone: 'muted' };
    case 'pending':
    case 'running':
      return { label: verb, tone: 'busy' };
    case 'failed':
      return { label: `${chat.transition} failed`, tone: 'bad' };
    default:
      return { label: `${chat.transition} ${chat.job_status}`, tone: 'warn' };
  }
}

function renderChats() {
  const list = $('chat-list');
  list.replaceChildren(
    ...state.chats.map((chat) => {
      const s = chatState(chat);
      const workspace = chat.workspace_name
        ? `${chat.owner_username}/${chat.workspace_name}`
        : `${chat.owner_username} · no workspace`;
      const build = chat.build_number ? `#${chat.build_number} ${chat.transition} · ${chat.job_status}` : '';
      return h(
        'li',
        {},
        h(
          'button',
          {
            type: 'button',
            class: `chat-item${chat.id === state.chatId ? ' selected' : ''}`,
            'data-chat-id': chat.id,
            onclick: () => selectChat(chat.id),
          },
          h(
            'span',
            { class: 'chat-item-top' },
            h('span', { class: 'chat-title' }, chat.title || short(chat.id)),
            h('span', { class: `badge ${s.tone}` }, s.label),
          ),
          h('span', { class: 'chat-sub' }, workspace),
          h('span', { class: 'chat-sub mono' }, [chat.template_name, build].filter(Boolean).join(' · ')),
        ),
      );
    }),
  );
  if (state.chats.length === 0) {
    list.append(h('li', { class: 'empty small' }, 'No chats yet: run `npx workspace-jobs seed`.'));
  }
}

async function loadChats() {
  try {
    const { chats } = await api('GET', 'api/chats');
    state.chats = chats;
    $('chats-error').hidden = true;
    renderChats();
    renderChatHead();
  } catch (error) {
    $('chats-error').textContent = `Could not load chats: ${error.message}`;
    $('chats-error').hidden = false;
  }
}

async function loadTemplates() {
  try {
    const { templates } = await api('GET', 'api/templates');
    state.templates = templates;
    const select = $('create-template');
    select.replaceChildren(...templates.map((t) => h('option', { value: t.id }, t.name)));
    preselectTemplate();
  } catch (error) {
    showError(`Could not load templates: ${error.message}`);
  }
}

function templateById(id) {
  return state.templates.find((t) => t.id === id);
}

function preselectTemplate() {
  const chat = currentChat();
  if (chat?.template_id && templateById(chat.template_id)) $('create-template').value = chat.template_id;
  describeTemplate();
}

/** One line about the chosen template's active version parameters, under the select. */
function describeTemplate() {
  const template = templateById($('create-template').value);
  if (!template) {
    $('template-params').textContent = '';
    return;
  }
  const params = template.parameters.map((p) => {
    const options = p.options?.length ? ` (${p.options.map((o) => o.value).join(' | ')})` : '';
    if (p.required && !p.default_value) return `${p.name}: required${options}`;
    return `${p.name}: default ${JSON.stringify(p.default_value)}${options}`;
  });
  $('template-params').textContent =
    `Active version ${template.active_version_name ?? '?'}` +
    (template.require_active_version ? ' (required)' : '') +
    (params.length ? ` · parameters: ${params.join(', ')}` : ' · no parameters');
}

/** One reload of the chat list for a burst of results (a replay can hold many). */
let refreshTimer;
function refreshChatsSoon() {
  window.clearTimeout(refreshTimer);
  refreshTimer = window.setTimeout(() => void loadChats(), 250);
}

function currentChat() {
  return state.chats.find((c) => c.id === state.chatId);
}

function renderChatHead() {
  const chat = currentChat();
  if (!chat) return;
  $('chat-title').textContent = chat.title || 'Untitled chat';
  const s = chatState(chat);
  const parts = [
    `chat ${chat.id}`,
    chat.workspace_name ? `workspace ${chat.owner_username}/${chat.workspace_name}` : 'no workspace',
    chat.template_name ? `template ${chat.template_name}` : undefined,
    s.label,
  ];
  $('chat-meta').textContent = parts.filter(Boolean).join(' · ');
}

// ---------------------------------------------------------------------------------------------------
// Selecting a chat and following its events

function setConnection(text, tone) {
  const conn = $('conn');
  conn.textContent = text;
  conn.className = `conn ${tone}`;
}

function selectChat(chatId) {
  if (state.source) state.source.close();
  state.chatId = chatId;
  state.jobs.clear();
  state.seen.clear();
  $('jobs').replaceChildren();
  $('no-jobs').hidden = false;
  hideMessages();
  $('empty').hidden = true;
  $('chat').hidden = false;
  if (window.location.hash !== `#chat=${chatId}`) window.history.replaceState(null, '', `#chat=${chatId}`);
  renderChats();
  renderChatHead();
  preselectTemplate();

  // since=0: replay everything the chat's stream still holds, then live. On a reconnect the browser sends
  // Last-Event-ID (the last seq it got), which the server prefers over ?since=, so nothing repeats.
  const source = new EventSource(`chats/${encodeURIComponent(chatId)}/events?since=0`);
  state.source = source;
  setConnection('connecting…', 'busy');
  source.onopen = () => setConnection('live', 'ok');
  source.onerror = () => {
    if (state.source !== source) return;
    setConnection(source.readyState === EventSource.CLOSED ? 'disconnected' : 'reconnecting…', 'warn');
  };
  source.onmessage = (message) => {
    if (state.source !== source) return;
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    onEvent(event);
  };
}

function onEvent(event) {
  if (state.seen.has(event.seq)) return;
  state.seen.add(event.seq);
  $('no-jobs').hidden = true;
  const job = jobCard(event.job);
  job.attempt = Math.max(job.attempt, event.job.attempt);
  job.rows.append(timelineRow(event));
  if (event.type === 'result') {
    job.status = event.stage;
    job.resultEl.replaceChildren(renderResult(event));
    refreshChatsSoon(); // the workspace's state changed
  } else if (job.status !== 'completed' && job.status !== 'failed') {
    job.status = event.stage === 'queued' || event.stage === 'deduplicated' ? 'queued' : 'running';
  }
  renderJobHead(job);
}

function jobCard(ref) {
  let job = state.jobs.get(ref.id);
  if (job) return job;
  const head = h('div', { class: 'job-head' });
  const rows = h('ol', { class: 'timeline' });
  const resultEl = h('div', { class: 'job-result' });
  const card = h('article', { class: 'card job', 'data-job-id': ref.id }, head, rows, resultEl);
  job = { id: ref.id, name: ref.name, card, head, rows, resultEl, status: 'queued', attempt: ref.attempt };
  state.jobs.set(ref.id, job);
  // Newest job first: replayed events arrive oldest first, so each new job goes on top.
  $('jobs').prepend(card);
  return job;
}

function renderJobHead(job) {
  const tone = { queued: 'muted', running: 'busy', completed: 'ok', failed: 'bad' }[job.status];
  const parts = [
    h('span', { class: 'job-name' }, job.name),
    h('span', { class: 'mono muted-text', title: job.id }, `job ${short(job.id)}`),
    job.attempt > 1 ? h('span', { class: 'muted-text' }, `attempt ${job.attempt}`) : null,
    h('span', { class: `badge ${tone} job-status` }, job.status),
  ];
  job.head.replaceChildren(...parts.filter(Boolean));
}

const AGENT_STATE = { agent_connecting: 'connecting', agent_starting: 'starting', agent_ready: 'ready' };

function timelineRow(event) {
  const data = event.data ?? {};
  const build =
    typeof data.build_number === 'number'
      ? `#${data.build_number}${data.transition ? ` ${data.transition}` : ''}`
      : '';
  const agent = AGENT_STATE[event.stage] ? `${data.agent_name ?? 'agent'}: ${AGENT_STATE[event.stage]}` : '';
  const tone =
    event.type === 'result'
      ? event.stage === 'completed'
        ? 'ok'
        : 'bad'
      : event.stage === 'retrying'
        ? 'warn'
        : 'stage';
  return h(
    'li',
    { class: `event event-${event.type}`, 'data-stage': event.stage, title: `seq ${event.seq}` },
    h('time', { class: 'mono', datetime: event.at }, clock(event.at)),
    h('span', { class: `badge ${tone}` }, event.stage),
    h('span', { class: 'message' }, event.message),
    h(
      'span',
      { class: 'meta-cell' },
      build ? h('span', { class: 'mono build', title: 'build' }, build) : null,
      agent ? h('span', { class: 'agent', title: 'agent state' }, agent) : null,
    ),
  );
}

// ---------------------------------------------------------------------------------------------------
// Results

function field(label, value, { mono = false } = {}) {
  if (value === undefined || value === null || value === '') return null;
  return h(
    'div',
    { class: 'kv' },
    h('dt', {}, label),
    h('dd', { class: mono ? 'mono' : undefined }, String(value)),
  );
}

function renderResult(event) {
  const result = event.data ?? {};
  const failed = 'error' in result;
  const box = h('div', { class: `result ${failed ? 'result-failed' : 'result-ok'}` });
  if (failed) {
    box.append(
      h(
        'div',
        { class: 'result-title' },
        h('span', { class: 'badge bad' }, result.code ?? 'error'),
        'Failed',
      ),
      h('p', { class: 'result-error' }, result.error),
      h(
        'dl',
        { class: 'kvs' },
        field('detail', result.detail),
        field('build', result.build_id, { mono: true }),
        field('template', result.template_id, { mono: true }),
      ),
    );
    if (Array.isArray(result.validations) && result.validations.length > 0) {
      box.append(
        h(
          'ul',
          { class: 'validations' },
          result.validations.map((v) => h('li', {}, h('strong', { class: 'mono' }, v.field), ` ${v.detail}`)),
        ),
        retryForm(event, result),
      );
    }
    if (result.settings_url) {
      box.append(
        h(
          'p',
          {},
          h('a', { href: result.settings_url, target: '_blank', rel: 'noreferrer' }, 'Workspace settings'),
        ),
      );
    }
  } else {
    const title =
      'started' in result
        ? result.no_build
          ? 'Already running (no build)'
          : 'Started'
        : result.created
          ? 'Created'
          : `Not created (${result.status ?? 'exists'})`;
    box.append(
      h(
        'div',
        { class: 'result-title' },
        h(
          'span',
          { class: 'badge ok' },
          'started' in result ? `started: ${result.started}` : `created: ${result.created}`,
        ),
        title,
      ),
      h(
        'dl',
        { class: 'kvs' },
        field('workspace', result.workspace_name),
        field('build', result.build_id, { mono: true }),
        field('message', result.message),
        field(
          'agent',
          result.agent_status
            ? `${result.agent_status}${result.agent_error ? `: ${result.agent_error}` : ''}`
            : undefined,
        ),
        field(
          'startup scripts',
          result.startup_scripts
            ? `${result.startup_scripts}${result.lifecycle_state ? ` (${result.lifecycle_state})` : ''}`
            : undefined,
        ),
      ),
    );
    if (result.updated_to_active_version) {
      box.append(
        h(
          'div',
          { class: 'update' },
          h('div', { class: 'update-title' }, 'Updated to the active template version'),
          h(
            'dl',
            { class: 'kvs' },
            field('reason', result.update_reason),
            field('from version', result.previous_template_version_id, { mono: true }),
            field('to version', result.template_version_id, { mono: true }),
          ),
        ),
      );
    }
  }
  box.append(
    h(
      'details',
      { class: 'raw' },
      h('summary', {}, 'Result JSON'),
      h('pre', {}, JSON.stringify(result, null, 2)),
    ),
  );
  return box;
}

/** One input per failing parameter (options from the template when known), then a retry of the same kind. */
function retryForm(event, result) {
  const template = templateById(result.template_id);
  const inputs = result.validations.map((v, index) => {
    const param = template?.parameters.find((p) => p.name === v.field);
    const listId = `retry-${short(event.job.id)}-${index}`;
    const options = param?.options ?? [];
    return h(
      'label',
      {},
      h('span', { class: 'mono' }, v.field),
      h('input', {
        name: v.field,
        list: options.length ? listId : undefined,
        placeholder: options[0]?.value ?? 'value',
        autocomplete: 'off',
        required: true,
      }),
      options.length
        ? h(
            'datalist',
            { id: listId },
            options.map((o) => h('option', { value: o.value }, o.name)),
          )
        : null,
    );
  });
  const kind = event.job.name === 'create-workspace' ? 'create' : 'start';
  const form = h(
    'form',
    { class: 'retry' },
    h('div', { class: 'retry-fields' }, inputs),
    h('button', { type: 'submit' }, `Retry ${kind} with these parameters`),
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const parameters = Object.fromEntries(new window.FormData(form).entries());
    const body = kind === 'create' ? { templateId: result.template_id, parameters } : { parameters };
    void act(kind, body);
  });
  return form;
}

// ---------------------------------------------------------------------------------------------------
// Actions

function hideMessages() {
  $('action-error').hidden = true;
  $('action-info').hidden = true;
}

function showError(message) {
  $('action-info').hidden = true;
  $('action-error').textContent = message;
  $('action-error').hidden = false;
}

function showInfo(message) {
  $('action-error').hidden = true;
  $('action-info').textContent = message;
  $('action-info').hidden = false;
}

async function act(kind, body) {
  if (!state.chatId) return;
  hideMessages();
  try {
    const job = await api('POST', `api/chats/${encodeURIComponent(state.chatId)}/${kind}`, body);
    showInfo(
      job.deduplicated
        ? `A ${kind} is already queued for this ${kind === 'start' ? 'workspace' : 'chat'}: job ${short(job.jobId)} (deduplicated).`
        : `Queued ${kind} job ${short(job.jobId)}; its events follow below.`,
    );
  } catch (error) {
    showError(error.message);
  }
}

$('start-form').addEventListener('submit', (e) => {
  e.preventDefault();
  try {
    const parameters = parseParameters($('start-params').value, 'Parameters');
    void act('start', parameters === undefined ? {} : { parameters });
  } catch (error) {
    showError(error.message);
  }
});

$('create-form').addEventListener('submit', (e) => {
  e.preventDefault();
  try {
    const parameters = parseParameters($('create-params').value, 'Parameters');
    const name = $('create-name').value.trim();
    void act('create', {
      templateId: $('create-template').value,
      ...(name && { name }),
      ...(parameters !== undefined && { parameters }),
    });
  } catch (error) {
    showError(error.message);
  }
});

$('create-template').addEventListener('change', describeTemplate);
$('refresh').addEventListener('click', () => void loadChats());

// ---------------------------------------------------------------------------------------------------
// Start: load chats and templates, reopen the chat named in the URL (#chat=<id>).

await Promise.all([loadChats(), loadTemplates()]);
const fromHash = new URLSearchParams(window.location.hash.slice(1)).get('chat');
if (fromHash && state.chats.some((c) => c.id === fromHash)) selectChat(fromHash);
