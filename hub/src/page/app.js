'use strict';
// VWED hub monitoring page. It talks to the hub only through the public WebSocket API:
//   grid: endpoint 3, /ws/storage-location/{scene}: filtered storage state (authoritative)
//   feed: endpoint 4, /ws/storage-location-broadcast/{scene}: every change as it happens
//   task: endpoint 1, /ws/task-execution/{task}: one task's full result list
// No framework: the grid is updated in place, one reused element per location id.

const $ = (selector) => document.querySelector(selector);

const PING_EVERY_MS = 30_000;
const SILENT_LIMIT_MS = 2 * PING_EVERY_MS + 5_000; // no pong by then: the connection is dead
const NOT_TASKS_LIMIT = 500; // lockers remembered as not tasks (follow mode skips them)
const STABLE_AFTER_MS = 10_000; // a socket open this long resets its backoff
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 30_000;
const FEED_LIMIT = 200;
const ROOMY_UP_TO = 160; // up to this many locations the grid draws bigger cells
const FOLLOW_AFTER_END_MS = 3_000; // how long an ended task stays on screen in follow mode
const TEXT_FILTERS = ['storage_area_id', 'station_name', 'layer_name'];
const BOOL_FILTERS = ['is_occupied', 'is_locked', 'is_disabled'];
const RECENT_KEY = 'vwed-hub.scenes'; // localStorage: recently watched scenes, newest first

// Location states: grid cell class, record field, the letter shown in the cell (so a state is
// never told by colour alone) and the words used in tooltips and the feed.
const STATES = [
  { cls: 'occupied', field: 'is_occupied', letter: 'O', words: 'occupied 占用' },
  { cls: 'locked', field: 'is_locked', letter: 'L', words: 'locked 锁定' },
  { cls: 'disabled', field: 'is_disabled', letter: 'D', words: 'disabled 禁用' },
  { cls: 'empty-tray', field: 'is_empty_tray', letter: 'E', words: 'empty tray 空托盘' },
];

const clock = new Intl.DateTimeFormat(undefined,
  { hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' });
function timeOf(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso ?? '') : clock.format(date);
}

function el(tag, className = '', text = '') {
  const node = document.createElement(tag);
  node.className = className;
  node.textContent = text;
  return node;
}

function nest(tag, className, ...children) {
  const node = el(tag, className);
  node.append(...children);
  return node;
}

function showText(selector, text) {
  const node = $(selector);
  node.textContent = text || '';
  node.hidden = !text;
}

// ---- Connections -----------------------------------------------------------------------------

/**
 * One WebSocket that reconnects after drops. Every socket it creates gets a new generation and
 * all of that socket's handlers check it first, so late events of a replaced or stopped socket
 * never reach the current view.
 */
class Channel {
  constructor(name, onMessage, onRejected) {
    Object.assign(this, { stateEl: $(`#state-${name}`), onMessage, onRejected });
    Object.assign(this, { gen: 0, ws: null, attempt: 0, retryTimer: 0, cleanup: () => {} });
  }

  /** Replaces any current socket with one to `url`, at once (no backoff). */
  open(url) {
    this.stop('opening');
    this.url = url;
    this.connect();
  }

  /** Closes the socket (1000) and cancels any pending reconnect; no label means idle. */
  stop(label) {
    this.gen += 1;
    clearTimeout(this.retryTimer);
    this.cleanup();
    const { ws } = this;
    // Closing a socket that is still connecting makes the browser log a warning; close it as
    // soon as it opens instead (its handlers are stale by then and ignore everything else).
    if (ws?.readyState === WebSocket.CONNECTING) ws.onopen = () => ws.close(1000);
    else ws?.close(1000);
    this.ws = null;
    this.attempt = 0;
    this.setState('closed', label ?? 'idle', label === undefined);
  }

  setState(state, label, idle = false) {
    this.stateEl.dataset.state = state;
    this.stateEl.toggleAttribute('data-idle', idle);
    this.stateEl.querySelector('.conn-label').textContent = label;
  }

  connect() {
    const gen = ++this.gen;
    const live = () => gen === this.gen;
    let ws;
    try {
      // A token travels as a subprotocol, so it stays out of proxies' access logs; `vwed` is
      // the one the hub selects.
      ws = TOKEN ? new WebSocket(this.url, ['vwed', `bearer.${TOKEN}`]) : new WebSocket(this.url);
    } catch (error) { // a malformed ?hub= address: retrying cannot help
      this.setState('closed', 'bad address');
      this.onRejected(`Cannot connect to ${this.url}: ${error.message}.`);
      return;
    }
    this.ws = ws;
    this.setState('connecting', this.attempt ? `retry #${this.attempt}` : 'opening');
    let [stableTimer, pingTimer] = [0, 0];
    const cleanup = () => { clearTimeout(stableTimer); clearInterval(pingTimer); };
    this.cleanup = cleanup;
    let heardAt = Date.now();
    ws.onopen = () => {
      if (!live()) return;
      // What the hub agreed to, e.g. permessage-deflate (compressed state messages).
      this.stateEl.dataset.extensions = ws.extensions;
      this.setState('open', 'live');
      heardAt = Date.now();
      stableTimer = setTimeout(() => { this.attempt = 0; }, STABLE_AFTER_MS);
      pingTimer = setInterval(() => {
        // A network that drops silently (Wi-Fi, NAT) leaves the socket "open" for many minutes:
        // when even the pongs stop, close it and reconnect rather than show a frozen view.
        // The close handshake cannot finish on a dead network, so reconnect without waiting.
        if (Date.now() - heardAt <= SILENT_LIMIT_MS) return ws.send('ping');
        ws.onclose = null;
        ws.close(4000, 'no reply to ping');
        closed({ code: 4000 });
      }, PING_EVERY_MS);
    };
    ws.onmessage = (event) => {
      if (!live()) return;
      heardAt = Date.now();
      this.stateEl.title = `last message ${clock.format(new Date())}`;
      if (event.data === 'pong') return;
      let msg = null;
      try { msg = JSON.parse(event.data); } catch { return; } // not JSON: nothing to show
      if (!msg || typeof msg !== 'object' || msg.type === 'pong') return;
      // The backoff resets only once the socket has stayed open (STABLE_AFTER_MS): a hub that
      // sends one message and then closes must not be retried in a tight loop.
      try {
        this.onMessage(msg);
      } catch (error) { // one bad message must not stop the page
        console.error('vwed monitor: could not handle message', msg.type, error);
      }
    };
    const closed = (event) => {
      cleanup();
      if (!live()) return;
      this.ws = null;
      if (event.code === 1008) { // invalid parameter: retrying would only fail again
        this.setState('closed', 'stopped');
        this.onRejected(event.reason);
        return;
      }
      // Exponential backoff with full jitter, so many panels do not reconnect in step.
      const delay = Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
      this.attempt += 1;
      this.setState('closed', `retry ${Math.max(1, Math.round(delay / 1000))}s`);
      this.retryTimer = setTimeout(() => { if (live()) this.connect(); }, delay);
    };
    ws.onclose = closed;
  }
}

// ---- View state and URL ----------------------------------------------------------------------

const params = new URLSearchParams(location.search);
const hubOverride = params.get('hub');
/** A connection token (JWT) for hubs that require one: `/?token=...`. */
const TOKEN = params.get('token');
const HUB = (hubOverride || `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}`)
  .replace(/\/+$/, '');

const view = { scene: '', task: '', interval: 1, filters: {} };
const filterForm = $('#filters');
const followBox = $('#follow-tasks');
const sceneInput = $('#scene-input');
const taskInput = $('#task-input');
const gridEl = $('#grid');

/** The interval the hub accepts (an integer 1..=30), from whatever was typed. */
const clampInterval = (value) => Math.min(30, Math.max(1, Math.round(Number(value)) || 1));

/** Accepts what the hub accepts (true/false/1/0, any case); anything else means "any". */
function normalBool(value) {
  const v = String(value ?? '').trim().toLowerCase();
  return v === 'true' || v === '1' ? 'true' : v === 'false' || v === '0' ? 'false' : '';
}

/** Keeps the address bar shareable: the scene, the chosen task and the filters. */
function syncUrl() {
  const q = new URLSearchParams();
  if (hubOverride) q.set('hub', hubOverride);
  if (TOKEN) q.set('token', TOKEN);
  if (view.scene) q.set('scene', view.scene);
  // A followed task is not the user's choice: it stays out (follow is the default without task).
  if (!followBox.checked) q.set(view.task ? 'task' : 'follow', view.task || '0');
  if (view.interval !== 1) q.set('interval', String(view.interval));
  for (const [name, value] of Object.entries(view.filters)) q.set(name, value);
  const query = q.toString();
  history.replaceState(null, '', query ? `?${query}` : location.pathname);
}

function recentScenes() {
  let list = [];
  try { list = JSON.parse(localStorage.getItem(RECENT_KEY) || '[]'); } catch { /* disabled or corrupt */ }
  return Array.isArray(list) ? list.filter((s) => typeof s === 'string' && s) : [];
}

/** Puts `scene` (when given) first in the recent scenes, which the scene chooser suggests. */
function rememberScene(scene) {
  const list = recentScenes();
  if (scene) {
    list.splice(0, list.length, scene, ...list.filter((s) => s !== scene).slice(0, 11));
    try { localStorage.setItem(RECENT_KEY, JSON.stringify(list)); } catch { /* storage disabled */ }
  }
  $('#scene-list').replaceChildren(...list.map((s) => new Option(s, s)));
}

// ---- Storage grid (endpoint 3), grouped by area, then station, in the server's order ---------

const grid = {
  records: new Map(), // location id → last known record (status changes merged in)
  cells: new Map(), // location id → cell element
  stations: new Map(), // area id + station name → station element
  areas: new Map(), // area id → area element
  received: false, // a state arrived for the current scene and filters
};

function matchesFilters(loc) {
  return Object.entries(view.filters).every(([name, value]) => (
    BOOL_FILTERS.includes(name) ? loc[name] === (value === 'true') : loc[name] === value));
}

function stateWords(loc) {
  const on = STATES.filter((s) => loc[s.field]).map((s) => s.words);
  return on.length ? on.join(' · ') : 'free 空闲';
}

/** Brings one cell up to date with `loc`, touching the DOM only where something changed. */
function paintCell(cell, loc) {
  const on = STATES.filter((s) => loc[s.field]);
  const className = ['cell', ...on.map((s) => s.cls)].join(' ');
  if (cell.className !== className) cell.className = className;
  const flags = on.map((s) => s.letter).join('');
  if (cell.dataset.flags !== flags) cell.dataset.flags = flags;
  const label = String(loc.layer_index ?? loc.layer_name ?? '');
  if (cell.textContent !== label) cell.textContent = label;
  const title = [
    loc.id, `${loc.layer_name ?? ''}  ${loc.storage_location_name ?? ''}`.trim(), stateWords(loc),
    `goods 货物: ${loc.goods_content || '—'}`, `locked by 锁定者: ${loc.locked_by ?? '—'}`,
  ].join('\n');
  if (cell.title !== title) cell.title = title;
  // A locked cell that names its locker opens that task (click, or Enter when focused).
  const task = loc.is_locked && loc.locked_by ? String(loc.locked_by) : '';
  if ((cell.dataset.task ?? '') !== task) {
    if (task) cell.dataset.task = task;
    else delete cell.dataset.task;
    cell.tabIndex = task ? 0 : -1;
  }
}

function keyed(map, key, make) {
  let node = map.get(key);
  if (!node) map.set(key, node = make());
  return node;
}

/** Puts `wanted` into `parent` in order, moving only elements that are out of place. */
function placeChildren(parent, wanted) {
  const keep = new Set(wanted);
  for (const child of [...parent.children]) if (!keep.has(child)) child.remove();
  let cursor = parent.firstElementChild;
  for (const node of wanted) {
    if (node === cursor) cursor = cursor.nextElementSibling;
    else parent.insertBefore(node, cursor);
  }
}

function renderGrid(data) {
  const locations = Array.isArray(data.storage_locations) ? data.storage_locations : [];
  const groups = new Map(); // area id → { name, stations: Map(station name → locations) }
  for (const loc of locations) {
    if (!loc || loc.id == null) continue;
    const area = keyed(groups, loc.storage_area_id, () => ({ name: loc.area_name, stations: new Map() }));
    keyed(area.stations, loc.station_name, () => []).push(loc);
  }

  const seen = { records: new Map(), cells: new Map(), stations: new Map(), areas: new Map() };
  const areaEls = [];
  for (const [areaId, area] of groups) {
    const areaEl = keyed(grid.areas, areaId, () => nest('section', 'area', el('h3'), el('div', 'stations')));
    const heading = area.name ? `${area.name} · ${areaId}` : String(areaId ?? '—');
    if (areaEl.firstChild.textContent !== heading) areaEl.firstChild.textContent = heading;
    seen.areas.set(areaId, areaEl);

    const stationEls = [];
    for (const [station, locs] of area.stations) {
      const key = `${areaId}\u0000${station}`;
      const stationEl = keyed(grid.stations, key, () => Object.assign(
        nest('div', 'station', el('div', 'layers'), el('div', 'station-name', String(station ?? '—'))),
        { title: String(station ?? '') },
      ));
      seen.stations.set(key, stationEl);
      const cells = locs.map((loc) => {
        const cell = keyed(grid.cells, loc.id, () => el('div', 'cell'));
        cell.dataset.locationId ??= loc.id; // written once, when the cell is new
        paintCell(cell, loc);
        seen.cells.set(loc.id, cell);
        seen.records.set(loc.id, loc);
        return cell;
      });
      placeChildren(stationEl.firstChild, cells);
      stationEls.push(stationEl);
    }
    placeChildren(areaEl.lastChild, stationEls);
    areaEls.push(areaEl);
  }
  placeChildren(gridEl, areaEls);
  Object.assign(grid, seen); // forget what left the view
  gridEl.classList.toggle('roomy', locations.length <= ROOMY_UP_TO); // bigger cells when few

  grid.received = true;
  $('#grid-total').textContent = String(data.total ?? locations.length);
  const pages = Number(data.total_pages) || 1;
  showText('#grid-note', pages > 1
    ? `Showing first ${locations.length} of ${data.total} locations (page 1 of ${pages}). Narrow the filters to see the rest.`
    : '');
  updateCounts();
  noteGridLocker();
}

function updateCounts() {
  const counts = { free: 0, occupied: 0, locked: 0, disabled: 0, 'empty-tray': 0 };
  for (const loc of grid.records.values()) {
    const on = STATES.filter((s) => loc[s.field]);
    if (!on.length) counts.free += 1;
    for (const s of on) counts[s.cls] += 1;
  }
  for (const [name, n] of Object.entries(counts)) $(`#count-${name}`).textContent = String(n);
  updateGridEmpty();
}

/** The grid's empty state: an invitation to choose a scene, waiting, or nothing matches. */
function updateGridEmpty() {
  $('#grid-empty').classList.toggle('invite', !view.scene);
  showText('#grid-empty', !view.scene
    ? 'Which warehouse do you want to watch? Type a scene id (场景ID) above, for example scene-1, and press Enter.'
    : !grid.received ? `Waiting for the state of scene ${view.scene}…`
      : grid.records.size ? '' : 'No storage location matches these filters. 无匹配库位');
}

/**
 * Applies a change pushed between realtime updates to a location already on screen, if it still
 * matches the filters; anything else waits for the next realtime update, which replaces the grid.
 */
function applyToGrid(id, patch) {
  const old = grid.records.get(id);
  const cell = grid.cells.get(id);
  if (!old || !cell) return;
  const loc = { ...old, ...patch };
  if (!matchesFilters(loc)) return;
  // A location that moved to another area or station needs the realtime update's regrouping.
  if (loc.storage_area_id !== old.storage_area_id || loc.station_name !== old.station_name) return;
  grid.records.set(id, loc);
  paintCell(cell, loc);
  updateCounts();
}

function applyStatusChange(msg) {
  const status = msg.new_status;
  if (!status || status.id == null) return;
  applyToGrid(status.id, msg.layer_name ? { ...status, layer_name: msg.layer_name } : status);
}

function clearGrid() {
  for (const map of [grid.records, grid.cells, grid.stations, grid.areas]) map.clear();
  grid.received = false;
  gridEl.replaceChildren();
  $('#grid-total').textContent = '–';
  $('#grid-updated').textContent = '';
  showText('#grid-note', '');
  showText('#grid-error', '');
  updateCounts();
}

function onGridMessage(msg) {
  if (msg.type === 'storage_location_update' && msg.data) {
    showText('#grid-error', '');
    renderGrid(msg.data);
    $('#grid-updated').textContent = `updated ${timeOf(msg.timestamp)}`;
  } else if (msg.type === 'storage_location_status_change') {
    applyStatusChange(msg);
  } else if (msg.type === 'error') {
    showText('#grid-error', msg.message || 'Error from the hub');
  }
}

// ---- Live feed (endpoint 4) ------------------------------------------------------------------

function addFeedItem(time, action, subject, detail) {
  const li = nest('li', '', el('time', '', timeOf(time)), el('b', 'action', action),
    el('span', 'subject', subject), el('span', 'detail', detail));
  li.dataset.action = action;
  const feed = $('#feed');
  feed.prepend(li);
  while (feed.children.length > FEED_LIMIT) feed.lastElementChild.remove();
}

function onFeedMessage(msg) {
  if (msg.type === 'storage_location_status_change') {
    const status = msg.new_status || {};
    const by = status.locked_by ? ` · by ${status.locked_by}` : '';
    const subject = String(msg.layer_name ?? status.id ?? '');
    addFeedItem(msg.timestamp, String(msg.action ?? '?'), subject, stateWords(status) + by);
    applyStatusChange(msg);
    if (msg.action === 'LOCK' && status.locked_by) {
      noteLocker(status.locked_by, status.updated_at || msg.timestamp);
    }
  } else if (msg.type === 'storage_location_update') {
    // On the broadcast endpoint this carries the full records of changed locations.
    const all = Array.isArray(msg.data?.storage_locations) ? msg.data.storage_locations : [];
    const locations = all.filter((l) => l && l.id != null);
    const names = locations.slice(0, 5).map((l) => l.layer_name ?? l.id).join(', ');
    addFeedItem(msg.timestamp, 'UPSERT', `${locations.length} location(s)`,
      names + (locations.length > 5 ? ', …' : ''));
    for (const loc of locations) applyToGrid(loc.id, loc);
  } else if (msg.type === 'error') {
    showText('#feed-error', msg.message || 'Error from the hub');
  }
}

// ---- Task log (endpoint 1) and follow mode ---------------------------------------------------

const taskView = { endedAt: 0 }; // when the followed task was first seen ended (0: not ended)
const locker = { id: '', at: '' }; // the most recent locked_by seen, and when it locked
const notTasks = new Set(); // lockers the hub knew no task for (people, systems): follow skips them

function renderTaskLog(results) {
  const log = $('#task-log');
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
  results.forEach((r, i) => {
    const key = `${r.created_at}\u0000${r.status}\u0000${r.context}`;
    let li = log.children[i];
    if (!li) log.append(li = el('li'));
    if (li.dataset.key === key) return;
    li.dataset.key = key;
    const time = el('time', '', timeOf(r.created_at));
    time.dateTime = r.created_at ?? '';
    const badge = el('span', 'badge', String(r.status ?? ''));
    badge.dataset.status = String(r.status ?? '');
    li.replaceChildren(time, badge, el('span', 'context', String(r.context ?? '')));
  });
  while (log.children.length > results.length) log.lastElementChild.remove();
  if (atBottom) log.scrollTop = log.scrollHeight;

  const status = String(results.at(-1)?.status ?? '');
  showStatus(status);
  if (status !== 'SUCCESS' && status !== 'FAILED') taskView.endedAt = 0;
  else taskView.endedAt ||= Date.now();
}

function showStatus(status) {
  $('#task-status').textContent = status;
  $('#task-status').dataset.status = status;
}

function onTaskMessage(msg) {
  if (msg.type === 'task_execution_update') {
    showText('#task-error', '');
    notTasks.delete(view.task);
    renderTaskLog(Array.isArray(msg.data) ? msg.data.filter((r) => r && typeof r === 'object') : []);
  } else if (msg.type === 'error') {
    showText('#task-error', msg.message || 'Error from the hub');
    // An unknown task (the hub says "不存在", not found) shows nothing: follow mode may move on
    // at once, and not come back to it. Other errors (owner unavailable) are passing.
    if ($('#task-log').children.length || !String(msg.message ?? '').includes('不存在')) return;
    if (notTasks.size >= NOT_TASKS_LIMIT) notTasks.clear();
    notTasks.add(view.task);
    taskView.endedAt ||= Date.now() - FOLLOW_AFTER_END_MS;
  }
}

function setTask(id) {
  view.task = id;
  taskView.endedAt = 0;
  $('#task-id').textContent = id;
  showStatus('');
  $('#task-log').replaceChildren();
  showText('#task-error', '');
  $('#task-empty').hidden = Boolean(id);
  if (document.activeElement !== taskInput) taskInput.value = id;
  if (id) taskChannel.open(`${HUB}/ws/task-execution/${encodeURIComponent(id)}?interval=1`);
  else taskChannel.stop();
  syncUrl();
}

/** A task the user picked: it stays on screen, so follow mode is switched off. */
function chooseTask(id) {
  followBox.checked = false;
  setTask(id.trim());
}

function noteLocker(id, at) {
  const [key, when] = [String(id), String(at ?? '')];
  if (notTasks.has(key)) return;
  if (!locker.id || notTasks.has(locker.id) || when >= locker.at) Object.assign(locker, { id: key, at: when });
  followTick();
}

/** The most recently updated locked cell of a realtime update is a locker seen in the grid. */
function noteGridLocker() {
  let best = null;
  for (const loc of grid.records.values()) {
    if (!loc.is_locked || !loc.locked_by || notTasks.has(String(loc.locked_by))) continue;
    if (!best || (loc.updated_at ?? '') > (best.updated_at ?? '')) best = loc;
  }
  if (best) noteLocker(best.locked_by, best.updated_at);
}

/** Follow mode: once no task is shown, or the shown one ended a while ago, show the latest locker. */
function followTick() {
  if (!followBox.checked || !locker.id || locker.id === view.task) return;
  const idle = !view.task || (taskView.endedAt && Date.now() - taskView.endedAt >= FOLLOW_AFTER_END_MS);
  if (idle) setTask(locker.id);
}

// ---- Wiring ----------------------------------------------------------------------------------

/** A channel stopped for good: keep the hub's error message (sent just before) and say so. */
function stopped(selector) {
  return (reason) => {
    const shown = $(selector).hidden ? '' : $(selector).textContent;
    showText(selector, `${shown || reason || 'Rejected by the hub'} (stopped: change the input to retry)`);
  };
}
const gridChannel = new Channel('grid', onGridMessage, stopped('#grid-error'));
const feedChannel = new Channel('feed', onFeedMessage, stopped('#feed-error'));
const taskChannel = new Channel('task', onTaskMessage, stopped('#task-error'));

function connectGrid() {
  clearGrid();
  const q = new URLSearchParams({ interval: String(view.interval), ...view.filters });
  if (view.scene) gridChannel.open(`${HUB}/ws/storage-location/${encodeURIComponent(view.scene)}?${q}`);
  else gridChannel.stop();
}

function setScene(scene) {
  view.scene = scene;
  sceneInput.value = scene;
  rememberScene(scene);
  Object.assign(locker, { id: '', at: '' }); // lockers of another scene are not interesting
  $('#feed').replaceChildren();
  showText('#feed-error', '');
  connectGrid();
  if (scene) feedChannel.open(`${HUB}/ws/storage-location-broadcast/${encodeURIComponent(scene)}`);
  else feedChannel.stop();
  syncUrl();
}

function readFilterForm() {
  const fields = filterForm.elements;
  const filters = {};
  for (const name of [...TEXT_FILTERS, ...BOOL_FILTERS]) {
    const value = fields[name].value.trim();
    if (value) filters[name] = value;
  }
  const interval = clampInterval(fields.interval.value);
  fields.interval.value = String(interval);
  return { filters, interval };
}

/** Reconnects the grid when the filters or the interval really changed. */
function applyFilters() {
  const { filters, interval } = readFilterForm();
  if (interval === view.interval && JSON.stringify(filters) === JSON.stringify(view.filters)) return;
  Object.assign(view, { filters, interval });
  connectGrid();
  syncUrl();
}

const onSubmit = (form, action) => form.addEventListener('submit', (event) => {
  event.preventDefault();
  action();
});
onSubmit($('#scene-form'), () => setScene(sceneInput.value.trim()));
onSubmit($('#task-form'), () => chooseTask(taskInput.value));
onSubmit(filterForm, applyFilters);
filterForm.addEventListener('change', applyFilters);
// The reset event fires before the fields are cleared.
filterForm.addEventListener('reset', () => setTimeout(applyFilters));
followBox.addEventListener('change', () => { syncUrl(); followTick(); });
for (const type of ['click', 'keydown']) {
  gridEl.addEventListener(type, (event) => {
    const task = event.target.closest('.cell')?.dataset.task;
    if (!task || (type === 'keydown' && event.key !== 'Enter')) return;
    chooseTask(task);
  });
}

function init() {
  const fields = filterForm.elements;
  for (const name of TEXT_FILTERS) fields[name].value = (params.get(name) || '').trim();
  for (const name of BOOL_FILTERS) fields[name].value = normalBool(params.get(name));
  fields.interval.value = String(clampInterval(params.get('interval') ?? 1));
  Object.assign(view, readFilterForm());
  const task = (params.get('task') || '').trim();
  followBox.checked = params.has('follow') ? params.get('follow') !== '0' : !task;
  rememberScene('');
  setScene((params.get('scene') || '').trim() || recentScenes()[0] || '');
  setTask(task);
  setInterval(followTick, 1000);
  document.body.dataset.ready = '1';
}

init();
