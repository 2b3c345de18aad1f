// The live chat page: lists chats, starts, stops or creates a chat's workspace through the dashboard's API,
// and follows the chat's job events over Server-Sent Events (GET chats/<id>/events), rendered as a timeline
// per job with its result. Plain DOM, no framework, no inline script (the page is served with a strict CSP).
// Every piece of data goes into the page with textContent, never as HTML, and only an http(s) URL from the
// data becomes a link.
/* global document, window, fetch, EventSource, URLSearchParams, URL */

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

/** `text` when it is an absolute http(s) URL, else undefined: a `javascript:` or `data:` URL is never a link. */
function httpUrl(text) {
  try {
    const url = new URL(text);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : undefined;
  } catch {
    return undefined;
  }
}

/** How long a stage took: "312 ms", "1.2 s", "2 min 05 s". Clocks of two hosts may disagree by a little. */
function duration(ms) {
  const t = Math.max(0, ms);
  if (t < 1000) return `${Math.round(t)} ms`;
  if (t < 60_000) return `${(t / 1000).toFixed(1)} s`;
  const s = Math.round(t / 1000);
  return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
}

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
// Job kinds: one entry per kind the page can enqueue (the API's `api/chats/<id>/<command>`), keyed by its job
// name (a result's `kind`). `form`: its form in index.html, or none: the page then adds a card with just the
// button (a kind without input). `body`: the request body from the form; `retryBody`: the body of a retry with
// the parameters a failure asked for (none: no retry form). `badge` and `title`: how its success reads. A
// new kind is one entry here.
const KINDS = {
  'start-workspace': {
    command: 'start',
    heading: 'Start the workspace',
    label: 'Start',
    form: 'start-form',
    /** What a second one is deduplicated by. */
    per: 'workspace',
    body: () => {
      const parameters = parseParameters($('start-params').value, 'Parameters');
      return parameters === undefined ? {} : { parameters };
    },
    retryBody: (_result, parameters) => ({ parameters }),
    badge: (result) => `started: ${result.started}`,
    title: (result) => (result.no_build ? 'Already running (no build)' : 'Started'),
  },
  'create-workspace': {
    command: 'create',
    heading: 'Create a workspace',
    label: 'Create',
    form: 'create-form',
    per: 'chat',
    body: () => {
      const parameters = parseParameters($('create-params').value, 'Parameters');
      const name = $('create-name').value.trim();
      return {
        templateId: $('create-template').value,
        ...(name && { name }),
        ...(parameters !== undefined && { parameters }),
      };
    },
    retryBody: (result, parameters) => ({ templateId: result.template_id, parameters }),
    badge: (result) => `created: ${result.created}`,
    title: (result) => (result.created ? 'Created' : `Not created (${result.status ?? 'exists'})`),
  },
  'stop-workspace': {
    command: 'stop',
    heading: 'Stop the workspace',
    label: 'Stop',
    per: 'workspace',
    body: () => ({}),
    badge: (result) => `stopped: ${result.stopped}`,
    title: (result) => (result.no_build ? 'Already stopped (no build)' : 'Stopped'),
  },
};

/** A kind's form: its own in index.html, or a card with only its button. */
function actionForm(kind) {
  if (kind.form) return $(kind.form);
  const form = h(
    'form',
    { id: `${kind.command}-form`, class: 'card action' },
    h('h3', {}, kind.heading),
    h('button', { id: kind.command, type: 'submit', class: 'secondary' }, kind.label),
  );
  document.querySelector('.actions').append(form);
  kind.form = form.id;
  return form;
}

// ---------------------------------------------------------------------------------------------------
// State

const state = {
  /** The chats listed so far (one or more pages of the current search). */
  chats: [],
  /** The next page's cursor, null after the last page. */
  nextCursor: null,
  /** Pages shown, so that a reload fetches as many again. */
  pages: 1,
  /** The search text (server-side: chat id, owner or workspace name prefix). */
  query: '',
  templates: [],
  chatId: undefined,
  /** The selected chat's row (it may not be in the list any more, e.g. after a search). */
  chat: undefined,
  /** An action's request (start, create, stop, …) in flight. */
  acting: false,
  /** buildId -> Promise of the build's details (template version name, parameters), or null. */
  builds: new Map(),
  /** template version id -> its name, from the builds loaded. */
  versions: new Map(),
  /** The open EventSource of the selected chat. */
  source: undefined,
  /** jobId -> { name, card, rows, status, attempt, resultEl, buildEl, buildId, firstAt, lastAt, ... } */
  jobs: new Map(),
  seen: new Set(),
  /** The one build log followed: { job, buildId, source, lastId, failed } (the chat's newest build). */
  log: undefined,
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
            onclick: () => selectChat(chat),
          },
          h(
            'span',
            { class: 'chat-item-top' },
            h('span', { class: 'chat-title' }, chat.title || short(chat.id)),
            h('span', { class: `badge ${s.tone}` }, s.label),
          ),
          h('span', { class: 'chat-sub' }, workspace),
          h(
            'span',
            { class: 'chat-sub mono' },
            [chat.template_name, chat.template_version_name, build].filter(Boolean).join(' · '),
          ),
        ),
      );
    }),
  );
  if (state.chats.length === 0) {
    list.append(
      h(
        'li',
        { class: 'empty small' },
        state.query ? `No chat matches "${state.query}".` : 'No chats yet: run `npx workspace-jobs seed`.',
      ),
    );
  }
  $('load-more').hidden = !state.nextCursor;
}

/** Counts list requests, so that the answer to an older search never replaces a newer one. */
let listRequest = 0;

/** Reloads the pages shown (or, with `more`, appends the next page) for the current search. */
async function loadChats({ more = false } = {}) {
  const request = ++listRequest;
  const chats = more ? [...state.chats] : [];
  let cursor = more ? state.nextCursor : null;
  const pages = more ? 1 : state.pages;
  try {
    for (let page = 0; page < pages; page++) {
      const params = new URLSearchParams();
      if (state.query) params.set('q', state.query);
      if (cursor) params.set('cursor', cursor);
      const query = params.toString();
      const answer = await api('GET', `api/chats${query ? `?${query}` : ''}`);
      if (request !== listRequest) return;
      chats.push(...answer.chats);
      cursor = answer.next_cursor;
      if (!cursor) break;
    }
    state.chats = chats;
    state.nextCursor = cursor;
    if (more) state.pages += 1;
    state.chat = chats.find((c) => c.id === state.chatId) ?? state.chat;
    $('chats-error').hidden = true;
    renderChats();
    renderChatHead();
  } catch (error) {
    if (request !== listRequest) return;
    $('chats-error').textContent = `Could not load chats: ${error.message}`;
    $('chats-error').hidden = false;
  }
}

let searchTimer;
function searchSoon() {
  window.clearTimeout(searchTimer);
  searchTimer = window.setTimeout(() => {
    const query = $('chat-search').value.trim();
    if (query === state.query) return;
    state.query = query;
    state.pages = 1;
    $('chat-scroll').scrollTop = 0;
    void loadChats();
  }, 250);
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
  return state.chat;
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
    chat.workspace_id ? s.label : undefined, // "no workspace" is said once
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

function selectChat(chat) {
  if (state.source) state.source.close();
  closeLog();
  const chatId = chat.id;
  state.chatId = chatId;
  state.chat = chat;
  state.jobs.clear();
  state.seen.clear();
  $('jobs').replaceChildren();
  $('no-jobs').hidden = false;
  hideMessages();
  // Nothing typed for the previous chat carries over to this one.
  for (const kind of Object.values(KINDS)) actionForm(kind).reset();
  $('empty').hidden = true;
  $('chat').hidden = false;
  $('detail').scrollTop = 0;
  if (window.location.hash !== `#chat=${chatId}`) window.history.replaceState(null, '', `#chat=${chatId}`);
  renderChats();
  renderChatHead();
  preselectTemplate();
  renderBusy();

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
  const row = timelineRow(event);
  job.rows.append(row);
  timeStage(job, row, event);
  const buildId = event.data?.build_id;
  if (typeof buildId === 'string' && buildId !== state.log?.buildId && job.status !== 'completed') {
    followLog(job, buildId);
  }
  if (event.stage === 'build_log' && state.log?.buildId === buildId && state.log.failed) {
    appendLogLines(state.log, event.data.lines ?? [], { preview: true }); // until the full log can be read
  }
  trackWait(job, event);
  if (typeof buildId === 'string' && buildId !== job.buildId) {
    job.buildId = buildId;
    void loadBuild(buildId).then((build) => {
      if (job.buildId !== buildId) return;
      if (build) renderJobBuild(job, build);
      else job.buildId = undefined; // the next event naming it asks again
    });
  }
  if (event.type === 'result') {
    job.status = event.data?.code === 'canceled' ? 'canceled' : event.stage;
    job.result = event;
    job.resultEl.replaceChildren(renderResult(event));
    refreshChatsSoon(); // the workspace's state changed
  } else if (!job.result) {
    job.status = event.stage === 'queued' || event.stage === 'deduplicated' ? 'queued' : 'running';
  }
  renderJobHead(job);
  renderBusy();
}

/**
 * Elapsed time per stage: a stage lasts until the job's next event, so each event closes the previous row's
 * time; the result's row holds the whole job's time, from its first event.
 */
function timeStage(job, row, event) {
  const at = Date.parse(event.at);
  const cell = row.querySelector('.elapsed');
  if (job.openCell) {
    job.openCell.textContent = duration(at - job.lastAt);
    job.openCell.dataset.ms = String(Math.max(0, at - job.lastAt));
    job.openCell.title = 'time in this stage, until the next event';
  }
  job.firstAt ??= at;
  job.lastAt = at;
  if (event.type === 'result') {
    job.elapsed = at - job.firstAt;
    cell.textContent = `total ${duration(job.elapsed)}`;
    cell.dataset.ms = String(Math.max(0, job.elapsed));
    cell.title = "the job's time, from its first event";
    job.openCell = undefined;
  } else {
    cell.textContent = '…';
    cell.title = 'in this stage now';
    job.openCell = cell;
  }
}

/** A build's details (its template version by name, its parameters) once per build; null if unavailable. */
function loadBuild(buildId) {
  if (!state.builds.has(buildId)) {
    const loading = api('GET', `api/builds/${encodeURIComponent(buildId)}`).then(
      ({ build }) => {
        state.versions.set(build.template_version_id, build.template_version_name);
        if (build.previous_template_version_id) {
          state.versions.set(build.previous_template_version_id, build.previous_template_version_name);
        }
        return build;
      },
      () => {
        state.builds.delete(buildId); // not there (yet): ask again for the next event naming it
        return null;
      },
    );
    state.builds.set(buildId, loading);
  }
  return state.builds.get(buildId);
}

/** The job's build, version and the parameters it ran with, under the job's head. */
function renderJobBuild(job, build) {
  const parameters = build.parameters.length
    ? build.parameters.map((p) => h('span', { class: 'param mono' }, `${p.name}=${p.value}`))
    : [h('span', { class: 'muted-text' }, 'none')];
  job.buildEl.replaceChildren(
    h('span', { class: 'mono' }, `build #${build.build_number} ${build.transition}`),
    h(
      'span',
      { class: 'version', title: `template version ${build.template_version_id}` },
      `${build.template_name ?? 'template'} ${build.template_version_name}`,
    ),
    h('span', { class: 'params' }, h('span', { class: 'muted-text' }, 'parameters'), parameters),
  );
  // The result names template versions by id; now their names are known.
  if (job.result) job.resultEl.replaceChildren(renderResult(job.result));
  renderBusy();
}

function jobCard(ref) {
  let job = state.jobs.get(ref.id);
  if (job) return job;
  const head = h('div', { class: 'job-head' });
  const rows = h('ol', { class: 'timeline' });
  const resultEl = h('div', { class: 'job-result' });
  const buildEl = h('div', { class: 'job-build' });
  const waitEl = h('p', { class: 'job-wait', hidden: true });
  const logEl = h('div', { class: 'log', hidden: true });
  const cancelEl = h('span', { class: 'cancel-answer small', role: 'status' });
  const cancel = h('button', { type: 'button', class: 'ghost cancel' }, 'Cancel');
  cancel.addEventListener('click', () => void cancelJob(job));
  const card = h(
    'article',
    { class: 'card job', 'data-job-id': ref.id },
    head,
    buildEl,
    rows,
    waitEl,
    logEl,
    resultEl,
  );
  job = {
    id: ref.id,
    name: ref.name,
    card,
    head,
    buildEl,
    rows,
    resultEl,
    waitEl,
    logEl,
    cancel,
    cancelEl,
    status: 'queued',
    attempt: ref.attempt,
  };
  state.jobs.set(ref.id, job);
  // Newest job first: replayed events arrive oldest first, so each new job goes on top.
  $('jobs').prepend(card);
  return job;
}

function renderJobHead(job) {
  const tone = { queued: 'muted', running: 'busy', completed: 'ok', failed: 'bad', canceled: 'warn' }[
    job.status
  ];
  const parts = [
    h('span', { class: 'job-name' }, job.name),
    h('span', { class: 'mono muted-text', title: job.id }, `job ${short(job.id)}`),
    job.attempt > 1 ? h('span', { class: 'muted-text' }, `attempt ${job.attempt}`) : null,
    job.elapsed !== undefined
      ? h('span', { class: 'muted-text job-elapsed', title: "the job's time" }, duration(job.elapsed))
      : null,
    h('span', { class: `badge ${tone} job-status` }, job.status),
    job.cancel,
    job.cancelEl,
  ];
  job.cancel.disabled = job.result !== undefined || job.canceling === true;
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
        : data.code === 'canceled'
          ? 'warn'
          : 'bad'
      : event.stage === 'retrying'
        ? 'warn'
        : 'stage';
  return h(
    'li',
    { class: `event event-${event.type}`, 'data-stage': event.stage, title: `seq ${event.seq}` },
    h('time', { class: 'mono', datetime: event.at }, clock(event.at)),
    h('span', { class: 'elapsed mono' }),
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
// The build log, queue position and countdown of a waiting job

/** Lines a log pane keeps: the newest; the whole log stays on the server (GET builds/<id>/logs). */
const LOG_LINES = 500;

function closeLog() {
  state.log?.source?.close();
  state.log = undefined;
}

/**
 * Follows the build's log into its job's pane (one build at a time: the chat's newest). The stream's event
 * ids are line ids, so EventSource's own reconnect resumes with Last-Event-ID; when the browser gives up
 * (a 429 at the cap, the dashboard restarting) it is reopened from the last line seen, and meanwhile the
 * build_log previews fill the pane.
 */
function followLog(job, buildId) {
  closeLog();
  // lastId: the newest line shown; streamId: the newest line the stream sent (where a reopen resumes).
  // failed: no stream open, so the build_log previews fill the pane meanwhile.
  const log = { job, buildId, source: undefined, lastId: 0n, streamId: 0n, failed: true, retries: 0 };
  state.log = log;
  job.logEl.hidden = false;
  job.logEl.replaceChildren();
  job.logEl.onscroll = null;
  openLogSource(log);
}

function openLogSource(log) {
  const source = new EventSource(
    `builds/${encodeURIComponent(log.buildId)}/logs?follow=1&after=${log.streamId.toString()}`,
  );
  log.source = source;
  source.addEventListener('open', () => {
    log.failed = false;
  });
  source.addEventListener('lines', (message) => {
    if (state.log !== log) return;
    log.retries = 0;
    let lines;
    try {
      lines = JSON.parse(message.data);
    } catch {
      return;
    }
    appendLogLines(log, lines);
  });
  source.addEventListener('end', () => {
    source.close();
    if (state.log === log) log.source = undefined;
  });
  source.addEventListener('error', () => {
    if (state.log !== log || source.readyState !== EventSource.CLOSED) return;
    log.failed = true;
    // At most a few reopens a build, further apart each time; after them, the previews only.
    if (log.retries >= 5) return;
    log.retries += 1;
    window.setTimeout(
      () => {
        if (state.log === log && log.source === source) openLogSource(log);
      },
      1000 * 2 ** log.retries,
    );
  });
}

/**
 * Appends the lines newer than the last one shown (ids are decimal bigints) and keeps the newest LOG_LINES.
 * Previews skip lines, so the stream's lines replace them: no gap once the full log can be read.
 */
function appendLogLines(log, lines, { preview = false } = {}) {
  const pane = log.job.logEl;
  const atBottom = pane.scrollHeight - pane.scrollTop - pane.clientHeight < 8;
  if (!preview && pane.querySelector('.log-preview')) {
    for (const el of pane.querySelectorAll('.log-preview')) el.remove();
    log.lastId = log.streamId;
  }
  for (const line of lines) {
    let id;
    try {
      id = BigInt(line.id);
    } catch {
      continue;
    }
    if (id <= log.lastId) continue; // a line the pane has (a preview, or sent again after a reconnect)
    log.lastId = id;
    if (!preview) log.streamId = id;
    pane.append(
      h(
        'div',
        { class: `log-line log-${line.level}${preview ? ' log-preview' : ''}`, 'data-log-id': line.id },
        h('time', { class: 'mono', datetime: line.at }, clock(line.at)),
        h('span', { class: 'log-stage' }, line.stage),
        h('span', { class: 'log-output' }, line.output),
      ),
    );
  }
  while (pane.childElementCount > LOG_LINES) pane.firstElementChild.remove();
  // Follows the newest line, unless the user scrolled up to read.
  if (atBottom) pane.scrollTop = pane.scrollHeight;
}

function ordinal(n) {
  const tens = n % 100;
  const suffix = tens >= 11 && tens <= 13 ? 'th' : ({ 1: 'st', 2: 'nd', 3: 'rd' }[n % 10] ?? 'th');
  return `${n}${suffix}`;
}

/** The queue position and the estimate that the job's build events carry; a newer one replaces the older. */
function trackWait(job, event) {
  const data = event.data ?? {};
  if (event.type === 'result') {
    job.queue = undefined;
    job.readyAt = undefined;
  } else if (event.stage === 'build_queued' || event.stage === 'queue_position') {
    if (typeof data.position === 'number') job.queue = { position: data.position, pending: data.pending };
  } else if (event.stage === 'build_running') {
    job.queue = undefined;
  } else if (event.stage === 'build_succeeded' || event.stage === 'build_failed') {
    job.readyAt = undefined;
  }
  const estimate = data.estimate;
  if (estimate && event.type !== 'result') {
    const at = Date.parse(estimate.ready_at ?? estimate.done_at);
    job.readyAt = Number.isNaN(at) ? undefined : at;
  }
  renderWait(job);
}

function renderWait(job) {
  const parts = [];
  if (job.queue) {
    parts.push(
      h(
        'span',
        { class: 'queue-position' },
        `${ordinal(job.queue.position)} of ${job.queue.pending} in the build queue`,
      ),
    );
  }
  if (job.readyAt !== undefined) {
    const left = Math.ceil((job.readyAt - Date.now()) / 1000);
    parts.push(
      h(
        'span',
        { class: 'countdown' },
        left <= 0 ? 'any moment now' : `about ${left < 60 ? `${left} s` : duration(left * 1000)} left`,
      ),
    );
  }
  job.waitEl.hidden = parts.length === 0;
  job.waitEl.replaceChildren(...parts);
}

// The countdowns tick each second (only jobs with an estimate re-render).
window.setInterval(() => {
  for (const job of state.jobs.values()) if (job.readyAt !== undefined) renderWait(job);
}, 1000);

/** The server's CancelAnswer (src/producer/producer.ts) as a short text next to the button. */
function cancelText(answer) {
  switch (answer?.outcome) {
    case 'canceled':
      return `Canceled (it was ${answer.was})`;
    case 'cancel_requested':
      return 'Cancel requested: its worker ends it';
    case 'already_finished':
      return 'Already finished: nothing to cancel';
    default:
      // not_found comes as a 404, shown as a failure; anything else is a server newer than this page.
      return `Answered ${JSON.stringify(answer?.outcome)}`;
  }
}

async function cancelJob(job) {
  job.canceling = true;
  renderJobHead(job);
  try {
    // Same-origin JSON, as every action (the server refuses a body-less POST without the type).
    const answer = await api('POST', `api/jobs/${encodeURIComponent(job.id)}/cancel`, {
      reason: 'by the operator on the live chat page',
    });
    job.cancelEl.textContent = cancelText(answer);
    job.cancelEl.className = 'cancel-answer small';
  } catch (error) {
    job.cancelEl.textContent = `Cancel failed: ${error.message}`;
    job.cancelEl.className = 'cancel-answer small error-text';
    job.canceling = false;
  }
  renderJobHead(job);
}

// ---------------------------------------------------------------------------------------------------
// Results

function field(label, value, { mono = false, title } = {}) {
  if (value === undefined || value === null || value === '') return null;
  return h(
    'div',
    { class: 'kv' },
    h('dt', {}, label),
    h('dd', { class: mono ? 'mono' : undefined, title }, String(value)),
  );
}

/** A template version by name (its id on hover), once a build naming it has been loaded. */
function versionField(label, versionId) {
  if (!versionId) return null;
  const name = state.versions.get(versionId);
  return name
    ? field(label, name, { title: versionId })
    : field(label, short(versionId), { mono: true, title: versionId });
}

function renderResult(event) {
  const result = event.data ?? {};
  const failed = result.ok === false;
  const canceled = failed && result.code === 'canceled';
  const box = h('div', {
    class: `result ${failed ? 'result-failed' : 'result-ok'}${canceled ? ' result-canceled' : ''}`,
  });
  if (failed) {
    box.append(
      h(
        'div',
        { class: 'result-title' },
        h('span', { class: `badge ${result.code === 'canceled' ? 'warn' : 'bad'}` }, result.code ?? 'error'),
        result.code === 'canceled' ? 'Canceled' : 'Failed',
      ),
      h('p', { class: 'result-error' }, result.error),
      h(
        'dl',
        { class: 'kvs' },
        field('detail', result.detail),
        field('build', result.build_id, { mono: true }),
        result.template_id
          ? field('template', templateById(result.template_id)?.name ?? result.template_id, {
              title: result.template_id,
            })
          : null,
      ),
    );
    if (Array.isArray(result.validations) && result.validations.length > 0) {
      const kind = KINDS[result.kind];
      box.append(
        h(
          'ul',
          { class: 'validations' },
          result.validations.map((v) => h('li', {}, h('strong', { class: 'mono' }, v.field), ` ${v.detail}`)),
        ),
        kind?.retryBody ? retryForm(event, result, kind) : null,
      );
    }
    if (result.settings_url) {
      const href = httpUrl(result.settings_url);
      box.append(
        href
          ? h(
              'p',
              { class: 'settings' },
              h('a', { href, target: '_blank', rel: 'noopener noreferrer' }, 'Workspace settings'),
            )
          : h(
              'p',
              { class: 'settings' },
              'Workspace settings: ',
              h('span', { class: 'mono' }, result.settings_url),
            ),
      );
    }
  } else {
    const kind = KINDS[result.kind];
    box.append(
      h(
        'div',
        { class: 'result-title' },
        h('span', { class: 'badge ok' }, kind ? kind.badge(result) : `${result.kind ?? 'job'}: ok`),
        kind ? kind.title(result) : 'Succeeded',
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
            versionField('from version', result.previous_template_version_id),
            versionField('to version', result.template_version_id),
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
function retryForm(event, result, kind) {
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
  const form = h(
    'form',
    { class: 'retry' },
    h('div', { class: 'retry-fields' }, inputs),
    h('button', { type: 'submit' }, `Retry ${kind.command} with these parameters`),
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const parameters = Object.fromEntries(new window.FormData(form).entries());
    void act(kind, kind.retryBody(result, parameters));
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

/** The chat's job that is waiting or running, from its events: a job without its result yet. */
function activeJob() {
  for (const job of state.jobs.values()) if (job.status === 'queued' || job.status === 'running') return job;
  return undefined;
}

/** The action buttons and the retry buttons stay disabled while a request is in flight or a job is unfinished. */
function renderBusy() {
  const job = activeJob();
  for (const button of document.querySelectorAll('.action button[type=submit], .retry button')) {
    button.disabled = state.acting || job !== undefined;
  }
  const labels = Object.values(KINDS).map((kind) => kind.label);
  const buttons = labels.length > 1 ? `${labels.slice(0, -1).join(', ')} and ${labels.at(-1)}` : labels[0];
  $('busy').hidden = !job;
  $('busy').textContent = job
    ? `Job ${short(job.id)} (${job.name}) is ${job.status}: ${buttons} are enabled again when its result arrives.`
    : '';
}

async function act(kind, body) {
  if (!state.chatId || state.acting) return;
  hideMessages();
  state.acting = true;
  renderBusy();
  try {
    const job = await api('POST', `api/chats/${encodeURIComponent(state.chatId)}/${kind.command}`, body);
    showInfo(
      job.deduplicated
        ? `A ${kind.command} is already queued for this ${kind.per}: job ${short(job.jobId)} (deduplicated).`
        : `Queued ${kind.command} job ${short(job.jobId)}; its events follow below.`,
    );
  } catch (error) {
    showError(error.message);
  } finally {
    state.acting = false;
    renderBusy();
  }
}

for (const kind of Object.values(KINDS)) {
  actionForm(kind).addEventListener('submit', (e) => {
    e.preventDefault();
    try {
      void act(kind, kind.body());
    } catch (error) {
      showError(error.message);
    }
  });
}

$('create-template').addEventListener('change', describeTemplate);
$('refresh').addEventListener('click', () => void loadChats());
$('load-more').addEventListener('click', () => void loadChats({ more: true }));
$('chat-search').addEventListener('input', searchSoon);

// ---------------------------------------------------------------------------------------------------
// Start: load chats and templates, reopen the chat named in the URL (#chat=<id>).

await Promise.all([loadChats(), loadTemplates()]);
const fromHash = new URLSearchParams(window.location.hash.slice(1)).get('chat')?.toLowerCase();
if (fromHash) {
  // Maybe beyond the first page: a full chat id is also a search.
  const listed = state.chats.find((c) => c.id === fromHash);
  const found =
    listed ??
    (await api('GET', `api/chats?q=${encodeURIComponent(fromHash)}`).then(
      ({ chats }) => chats.find((c) => c.id === fromHash),
      () => undefined,
    ));
  if (found) selectChat(found);
}
