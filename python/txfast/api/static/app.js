/* txfast analyst dashboard: plain JavaScript over the alerts API, charts by Chart.js.
 *
 * - The API key is kept in sessionStorage (this tab only) and sent as
 *   `Authorization: Bearer …` on every call, the live feed included: a browser EventSource
 *   cannot send headers, so GET /alerts/stream is read with fetch() and a ReadableStream
 *   parser of server-sent events.
 * - Every string from the API is inserted as text (textContent), never as HTML.
 * - URLs are relative to the page, so the dashboard also works behind a path prefix.
 */
(() => {
  'use strict';

  const RISKS = ['LOW', 'MEDIUM', 'HIGH', 'CRITICAL'];
  const CHART_RISKS = ['MEDIUM', 'HIGH', 'CRITICAL'];
  const RISK_COLOURS = { LOW: '#9ca3af', MEDIUM: '#f59e0b', HIGH: '#ea580c', CRITICAL: '#991b1b' };
  const KEY_STORAGE = 'txfast.apiKey';
  const PAGE_SIZE = 50;
  const MAX_ROWS = 1000;
  const STATS_EVERY_MS = 5000;
  const HOUR = 3600e3;
  const DAY = 24 * HOUR;
  const WINDOWS = { '1h': HOUR, '24h': DAY, '7d': 7 * DAY, '30d': 30 * DAY };
  const STATUS_TEXT = { open: 'open', confirmed_fraud: 'confirmed fraud', false_positive: 'false positive' };

  const $ = (selector, root = document) => root.querySelector(selector);
  const nf = new Intl.NumberFormat('en');
  const nf2 = new Intl.NumberFormat('en', { maximumFractionDigits: 2, minimumFractionDigits: 2 });
  const nf4 = new Intl.NumberFormat('en', { maximumFractionDigits: 4 });
  const pct = (x) => (x === null || x === undefined || Number.isNaN(x) ? '–' : `${(100 * x).toFixed(2)} %`);

  const state = {
    token: null,
    me: null,
    filters: null,
    anchor: null, // newest alert's transaction time (ms): relative windows end there
    cursor: null,
    rows: new Map(), // transaction id -> <tr>
    listSeq: 0,
    streamGen: 0,
    streamCtrl: null,
    incoming: [],
    flushQueued: false,
    pending: 0,
    statsDirty: false,
    statsSeq: 0,
    statsTimer: null,
    runtime: false,
    lastRuntime: null,
    champion: null,
    charts: {},
    detailId: null,
    detailChart: null,
  };

  // -- small helpers --------------------------------------------------------------------------

  /** An element with attributes (`class`, `text`, `on*` handlers, others as attributes). */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  /** "2026-01-31 14:03:22" from an ISO time (UTC). */
  function fmtTime(iso) {
    if (!iso) return '–';
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return d.toISOString().slice(0, 19).replace('T', ' ');
  }

  function fmtAmount(amount, currency) {
    return `${nf2.format(amount)} ${currency || ''}`.trim();
  }

  const floorDay = (ms) => Math.floor(ms / DAY) * DAY;
  const isoDay = (ms) => new Date(ms).toISOString().slice(0, 10);

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  /** Calls the API; returns the parsed JSON or throws an ApiError (status 0: unreachable). */
  async function api(path, { method = 'GET', params = [], body, token = state.token } = {}) {
    const url = new URL(path, document.baseURI);
    for (const [k, v] of params) url.searchParams.append(k, v);
    const headers = { Accept: 'application/json', Authorization: `Bearer ${token}` };
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (e) {
      throw new ApiError(0, 'the server cannot be reached');
    }
    if (!response.ok) {
      let detail = `${response.status} ${response.statusText}`;
      try {
        const payload = await response.json();
        if (payload && payload.detail) detail = payload.detail;
      } catch (e) {
        /* not JSON: keep the status line */
      }
      if (response.status === 401 && token === state.token && state.token) {
        signOut(`Signed out: ${detail}.`);
      }
      throw new ApiError(response.status, detail);
    }
    return response.json();
  }

  // -- sign in / out --------------------------------------------------------------------------

  function showLogin(message = '') {
    $('#app-view').hidden = true;
    $('#who').hidden = true;
    $('#login-view').hidden = false;
    $('#login-error').textContent = message;
    $('#runtime').replaceChildren();
    setLive('off');
    $('#api-key').focus();
  }

  async function signIn(token) {
    const me = await api('me', { token });
    state.token = token;
    state.me = me;
    sessionStorage.setItem(KEY_STORAGE, token);
    $('#who-name').textContent = `${me.name} (${me.role})`;
    $('#who').hidden = false;
    $('#login-view').hidden = true;
    $('#app-view').hidden = false;
    $('#api-key').value = '';
    startDashboard();
  }

  function signOut(message = '') {
    stopStream();
    clearInterval(state.statsTimer);
    state.statsTimer = null;
    state.token = null;
    state.me = null;
    sessionStorage.removeItem(KEY_STORAGE);
    const dialog = $('#detail');
    if (dialog.open) dialog.close();
    showLogin(message);
  }

  $('#login-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const token = $('#api-key').value.trim();
    const button = $('#login-form button');
    button.disabled = true;
    $('#login-error').textContent = '';
    try {
      await signIn(token);
    } catch (e) {
      $('#login-error').textContent =
        e.status === 401 ? `This key is not accepted: ${e.message}.` : `Cannot sign in: ${e.message}.`;
    } finally {
      button.disabled = false;
    }
  });

  $('#sign-out').addEventListener('click', () => signOut('Signed out.'));

  // -- filters --------------------------------------------------------------------------------

  function readFilters() {
    const form = $('#filters');
    const data = new FormData(form);
    const text = (name) => String(data.get(name) || '').trim();
    const risks = data.getAll('risk').map(String);
    return {
      risks: risks.length === RISKS.length ? [] : risks,
      card: text('card'),
      merchant: text('merchant'),
      country: text('country').toUpperCase(),
      status: text('status'),
      window: text('window') || '30d',
      since: text('since'),
      until: text('until'),
      sort: text('sort') || 'time',
    };
  }

  /** datetime-local value (read as UTC) -> epoch ms, or null. */
  function utcInput(value) {
    if (!value) return null;
    const ms = Date.parse(`${value.length === 16 ? `${value}:00` : value}Z`);
    return Number.isNaN(ms) ? null : ms;
  }

  /** The list's time range: {since, until} in epoch ms (either may be null). */
  function listRange(f = state.filters) {
    if (f.window === 'custom') return { since: utcInput(f.since), until: utcInput(f.until) };
    if (f.window === 'all') return { since: null, until: null };
    const end = state.anchor ?? Date.now();
    return { since: end - WINDOWS[f.window], until: null };
  }

  /** The statistics' window: whole UTC days covering the list's range. */
  function statsRange(f = state.filters) {
    const end = state.anchor ?? Date.now();
    if (f.window === 'custom') {
      const { since, until } = listRange(f);
      const hi = until ?? floorDay(end) + DAY;
      return { since: since ?? hi - 30 * DAY, until: hi };
    }
    const until = floorDay(end) + DAY;
    if (f.window === 'all') return { since: null, until };
    return { since: floorDay(end - WINDOWS[f.window]), until };
  }

  function listParams(f = state.filters) {
    const params = [];
    for (const r of f.risks) params.push(['risk', r]);
    if (f.card) params.push(['card', f.card]);
    if (f.merchant) params.push(['merchant', f.merchant]);
    if (f.country) params.push(['country', f.country]);
    if (f.status) params.push(['status', f.status]);
    const { since, until } = listRange(f);
    if (since !== null) params.push(['since', new Date(since).toISOString()]);
    if (until !== null) params.push(['until', new Date(until).toISOString()]);
    params.push(['sort', f.sort]);
    return params;
  }

  /** Whether a live alert belongs in the list under the current filters. */
  function matches(alert, f = state.filters) {
    if (f.risks.length && !f.risks.includes(alert.risk_level)) return false;
    if (f.card && alert.card_id !== f.card) return false;
    if (f.merchant && alert.merchant_id !== f.merchant) return false;
    if (f.country && (alert.country || '') !== f.country) return false;
    if (f.status && alert.status !== f.status) return false;
    const ts = Date.parse(alert.ts);
    const { since, until } = listRange(f);
    if (since !== null && ts < since) return false;
    if (until !== null && ts >= until) return false;
    return true;
  }

  function syncCustomFields() {
    const custom = $('#filters select[name="window"]').value === 'custom';
    for (const label of document.querySelectorAll('#filters label.custom')) label.hidden = !custom;
  }

  $('#filters select[name="window"]').addEventListener('change', syncCustomFields);

  $('#filters').addEventListener('submit', (event) => {
    event.preventDefault();
    applyFilters();
  });

  $('#filters').addEventListener('reset', () => {
    setTimeout(() => {
      syncCustomFields();
      applyFilters();
    });
  });

  async function applyFilters() {
    const f = readFilters();
    const error = $('#filter-error');
    error.textContent = '';
    if (!document.querySelector('#filters input[name="risk"]:checked')) {
      error.textContent = 'Risk: choose at least one level.';
      return;
    }
    if (f.country && !/^[A-Z]{2}$/.test(f.country)) {
      error.textContent = 'Country: two letters (ISO 3166-1 alpha-2), e.g. FR.';
      return;
    }
    if (f.window === 'custom') {
      const { since, until } = listRange(f);
      if (since !== null && until !== null && until <= since) {
        error.textContent = 'Until must be after since.';
        return;
      }
    }
    const risksChanged = !state.filters || state.filters.risks.join() !== f.risks.join();
    state.filters = f;
    if (f.window !== 'custom' && f.window !== 'all') await refreshAnchor();
    loadAlerts();
    loadStats();
    if (risksChanged && $('#live-toggle').checked) startStream();
  }

  // -- the alert list -------------------------------------------------------------------------

  function alertRow(a, fresh = false) {
    const id = a.transaction_id;
    const tr = el(
      'tr',
      { class: `risk-${a.risk_level}${fresh ? ' fresh' : ''}`, 'data-id': id, 'data-risk': a.risk_level },
      el('td', {}, el('a', { href: `#alert=${encodeURIComponent(id)}`, title: id, 'aria-label': `${fmtTime(a.ts)}, transaction ${id}`, text: fmtTime(a.ts) })),
      el('td', {}, el('span', { class: `badge risk-${a.risk_level}`, text: a.risk_level })),
      el('td', { class: 'num', text: nf4.format(a.score) }),
      el('td', { class: 'mono', text: a.card_id }),
      el('td', { class: 'mono', text: a.merchant_id }),
      el('td', { text: a.country || '–' }),
      el('td', { class: 'num', text: fmtAmount(a.amount, a.currency) }),
      el('td', { text: a.action }),
      el('td', { class: `status status-${a.status}`, text: STATUS_TEXT[a.status] || a.status }),
    );
    return tr;
  }

  function updateSummary() {
    const n = state.rows.size;
    const more = state.cursor ? '; more below' : '';
    $('#alerts-summary').textContent = `${nf.format(n)} shown${more}`;
    $('#alerts-empty').hidden = n > 0;
    $('#more').hidden = !state.cursor;
  }

  async function refreshAnchor() {
    try {
      const page = await api('alerts', { params: [['limit', '1']] });
      const ts = page.items.length ? Date.parse(page.items[0].ts) : null;
      if (ts !== null) state.anchor = Math.max(state.anchor ?? ts, ts);
    } catch (e) {
      /* the list call reports errors */
    }
  }

  async function loadAlerts({ append = false } = {}) {
    const seq = ++state.listSeq;
    const params = listParams();
    params.push(['limit', String(PAGE_SIZE)]);
    if (append && state.cursor) params.push(['cursor', state.cursor]);
    const more = $('#more');
    more.disabled = true;
    try {
      const page = await api('alerts', { params });
      if (seq !== state.listSeq) return;
      const body = $('#alerts-table tbody');
      if (!append) {
        body.replaceChildren();
        state.rows.clear();
        state.pending = 0;
        $('#pending').hidden = true;
      }
      const fragment = document.createDocumentFragment();
      for (const a of page.items) {
        if (state.rows.has(a.transaction_id)) continue;
        const tr = alertRow(a);
        state.rows.set(a.transaction_id, tr);
        fragment.append(tr);
      }
      body.append(fragment);
      state.cursor = page.next_cursor;
      $('#filter-error').textContent = '';
    } catch (e) {
      if (seq === state.listSeq && e.status !== 401) {
        $('#filter-error').textContent = `Alerts could not be loaded: ${e.message}`;
      }
    } finally {
      more.disabled = false;
      if (seq === state.listSeq) {
        updateSummary();
        document.body.dataset.listLoaded = String(seq);
      }
    }
  }

  $('#more').addEventListener('click', () => loadAlerts({ append: true }));

  /** After a reconnection: adds the newest alerts missed meanwhile (first page only). */
  async function catchUp() {
    if (state.filters.sort !== 'time') return;
    try {
      const page = await api('alerts', { params: [...listParams(), ['limit', String(PAGE_SIZE)]] });
      for (const a of page.items.slice().reverse()) enqueue(a);
    } catch (e) {
      /* the next poll or reload will tell */
    }
  }

  function enqueue(alert) {
    if (state.rows.has(alert.transaction_id) || !matches(alert)) return;
    state.incoming.push(alert);
    if (!state.flushQueued) {
      state.flushQueued = true;
      requestAnimationFrame(flushIncoming);
    }
  }

  /** Puts the queued live alerts at the top of the list (one DOM update per frame). */
  function flushIncoming() {
    state.flushQueued = false;
    const body = $('#alerts-table tbody');
    const fragment = document.createDocumentFragment();
    for (const a of state.incoming.reverse()) {
      if (state.rows.has(a.transaction_id)) continue;
      const tr = alertRow(a, true);
      state.rows.set(a.transaction_id, tr);
      fragment.append(tr);
    }
    state.incoming = [];
    body.prepend(fragment);
    while (state.rows.size > MAX_ROWS) {
      const last = body.lastElementChild;
      state.rows.delete(last.dataset.id);
      last.remove();
      state.cursor = null; // the oldest rows are gone: the next page would leave a hole
    }
    updateSummary();
  }

  function onLiveAlert(alert) {
    const ts = Date.parse(alert.ts);
    if (!Number.isNaN(ts)) state.anchor = Math.max(state.anchor ?? ts, ts);
    state.statsDirty = true;
    if (state.filters.sort !== 'time') {
      if (matches(alert)) {
        state.pending += 1;
        const button = $('#show-pending');
        button.textContent = `${nf.format(state.pending)} new alert${state.pending === 1 ? '' : 's'}: reload the list`;
        $('#pending').hidden = false;
      }
      return;
    }
    enqueue(alert);
  }

  $('#show-pending').addEventListener('click', () => loadAlerts());

  // -- the live feed (server-sent events over fetch) ------------------------------------------

  function setLive(mode) {
    const node = $('#live-status');
    node.dataset.state = mode;
    const text = {
      off: 'offline',
      paused: 'live feed paused',
      connecting: 'connecting…',
      reconnecting: 'reconnecting…',
      live: 'live',
      error: 'live feed unavailable',
    }[mode];
    $('.text', node).textContent = text;
  }

  /** Reads server-sent events off a response body; calls back per event and comment. */
  async function readEvents(body, onEvent, onComment) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    let event = { type: 'message', id: null, data: [] };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      for (;;) {
        const at = buffer.search(/[\r\n]/);
        if (at < 0) break;
        if (buffer[at] === '\r' && at === buffer.length - 1) break; // maybe \r\n across chunks
        const line = buffer.slice(0, at);
        buffer = buffer.slice(at + (buffer[at] === '\r' && buffer[at + 1] === '\n' ? 2 : 1));
        if (line === '') {
          if (event.data.length) onEvent({ type: event.type, id: event.id, data: event.data.join('\n') });
          event = { type: 'message', id: null, data: [] };
        } else if (line[0] === ':') {
          onComment(line.slice(1).trim());
        } else {
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? '' : line.slice(colon + 1);
          if (value[0] === ' ') value = value.slice(1);
          if (field === 'data') event.data.push(value);
          else if (field === 'event') event.type = value;
          else if (field === 'id') event.id = value;
        }
      }
    }
  }

  function stopStream() {
    state.streamGen += 1;
    if (state.streamCtrl) state.streamCtrl.abort();
    state.streamCtrl = null;
  }

  function startStream() {
    stopStream();
    runStream(state.streamGen);
  }

  async function runStream(gen) {
    let delay = 1000;
    let reconnect = false;
    while (gen === state.streamGen && state.token) {
      const ctrl = new AbortController();
      state.streamCtrl = ctrl;
      setLive(reconnect ? 'reconnecting' : 'connecting');
      try {
        const url = new URL('alerts/stream', document.baseURI);
        for (const r of state.filters.risks) url.searchParams.append('risk', r);
        const response = await fetch(url, {
          headers: { Accept: 'text/event-stream', Authorization: `Bearer ${state.token}` },
          cache: 'no-store',
          signal: ctrl.signal,
        });
        if (response.status === 401) {
          signOut('Signed out: the key is no longer accepted.');
          return;
        }
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        await readEvents(
          response.body,
          (event) => {
            if (event.type !== 'alert') return;
            try {
              onLiveAlert(JSON.parse(event.data));
            } catch (e) {
              /* a malformed event: skip it */
            }
          },
          (comment) => {
            if (comment !== 'connected' || gen !== state.streamGen) return;
            setLive('live');
            delay = 1000;
            if (reconnect) catchUp();
          },
        );
      } catch (e) {
        /* aborted, or the connection failed: retried below unless superseded */
      }
      if (gen !== state.streamGen) return;
      reconnect = true;
      setLive('reconnecting');
      await sleep(delay);
      delay = Math.min(delay * 2, 15000);
    }
  }

  $('#live-toggle').addEventListener('change', (event) => {
    if (event.target.checked) {
      startStream();
      loadAlerts();
    } else {
      stopStream();
      setLive('paused');
    }
  });

  // -- statistics and charts ------------------------------------------------------------------

  function kpi(label, value, id) {
    return el('div', { class: 'kpi', 'data-kpi': id }, el('div', { class: 'label', text: label }), el('div', { class: 'value', text: value }));
  }

  function renderKpis(stats) {
    const labelled = stats.false_positives.reduce((s, d) => s + d.labelled, 0);
    const fps = stats.false_positives.reduce((s, d) => s + d.false_positives, 0);
    $('#kpis').replaceChildren(
      kpi('Transactions', nf.format(stats.transactions), 'transactions'),
      kpi('Alerts', nf.format(stats.alerts), 'alerts'),
      kpi('Alert rate', stats.transactions ? pct(stats.alerts / stats.transactions) : '–', 'alert-rate'),
      kpi('Labelled alerts', nf.format(labelled), 'labelled'),
      kpi('False-positive rate', labelled ? pct(fps / labelled) : '–', 'fp-rate'),
    );
  }

  /** The header: the model (the scorer's, else the registry's champion) and runtime figures. */
  function renderRuntime() {
    const runtime = state.lastRuntime;
    const champion = state.champion ? `${state.champion} (champion)` : null;
    const items = [];
    const add = (label, value) => {
      if (value === undefined || value === null || value === '') return;
      items.push(el('div', {}, el('dt', { text: label }), el('dd', { text: value })));
    };
    add('model', (runtime && runtime.model_version) || champion);
    if (runtime) {
      const events = runtime.events ?? runtime.consumed;
      if (typeof events === 'number') add('events scored', nf.format(events));
      if (runtime.tx_per_s > 0) add('tx/s', nf.format(Math.round(runtime.tx_per_s)));
      if (typeof runtime.alerts === 'number') add('alerts raised', nf.format(runtime.alerts));
      if (typeof runtime.rejected === 'number') add('rejected', nf.format(runtime.rejected));
    }
    $('#runtime').replaceChildren(...items);
  }

  function dataTable(table, headers, rows) {
    table.replaceChildren(
      el('thead', {}, el('tr', {}, headers.map((h) => el('th', { scope: 'col', text: h })))),
      el('tbody', {}, rows.map((r) => el('tr', {}, r.map((c) => el('td', { text: c }))))),
    );
  }

  /** Creates the chart on first use, else swaps its data (no animation: fast and calm). */
  function drawChart(key, canvas, config) {
    const existing = state.charts[key];
    if (existing) {
      existing.data = config.data;
      existing.options = config.options;
      existing.update('none');
      return existing;
    }
    const chart = new Chart(canvas, config);
    state.charts[key] = chart;
    return chart;
  }

  function baseOptions(extra = {}) {
    return {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      plugins: { legend: { position: 'bottom', labels: { boxWidth: 12 } } },
      ...extra,
    };
  }

  function riskDatasets(buckets) {
    return CHART_RISKS.map((r) => ({
      label: r,
      data: buckets.map((b) => b.by_risk[r] || 0),
      backgroundColor: RISK_COLOURS[r],
      stack: 'risk',
    }));
  }

  function drawRiskBars(key, buckets, labelOf, horizontal) {
    const figure = $(`#chart-${key}`);
    const category = { stacked: true, ticks: { autoSkip: !horizontal } };
    const counts = { stacked: true, beginAtZero: true, ticks: { precision: 0 } };
    const scales = horizontal ? { x: counts, y: category } : { x: category, y: counts };
    if (horizontal) {
      // One readable row per bar: the chart grows with the number of bars.
      $('.canvas-wrap', figure).style.height = `${Math.max(120, 60 + 22 * buckets.length)}px`;
    }
    drawChart(key, $('canvas', figure), {
      type: 'bar',
      data: { labels: buckets.map(labelOf), datasets: riskDatasets(buckets) },
      options: baseOptions({ indexAxis: horizontal ? 'y' : 'x', scales }),
    });
    dataTable(
      $('details table', figure),
      ['', 'transactions', 'alerts', ...RISKS],
      buckets.map((b) => [labelOf(b), nf.format(b.transactions), nf.format(b.alerts), ...RISKS.map((r) => nf.format(b.by_risk[r] || 0))]),
    );
  }

  function drawDaily(stats) {
    const days = new Map();
    for (const d of stats.daily) days.set(d.day, { anomaly: d.anomaly_rate, fp: null, labelled: 0, alerts: d.alerts, tx: d.transactions });
    for (const d of stats.false_positives) {
      const row = days.get(d.day) || { anomaly: null, alerts: 0, tx: 0 };
      Object.assign(row, { fp: d.false_positive_rate, labelled: d.labelled, fps: d.false_positives });
      days.set(d.day, row);
    }
    const labels = [...days.keys()].sort();
    const rows = labels.map((d) => days.get(d));
    const asPct = (x) => (x === null || x === undefined ? null : +(100 * x).toFixed(4));
    const figure = $('#chart-daily');
    drawChart('daily', $('canvas', figure), {
      type: 'line',
      data: {
        labels,
        datasets: [
          { label: 'anomaly rate %', data: rows.map((r) => asPct(r.anomaly)), borderColor: '#c2410c', backgroundColor: '#c2410c', pointRadius: 3, spanGaps: true },
          { label: 'false-positive rate %', data: rows.map((r) => asPct(r.fp)), borderColor: '#1d4ed8', backgroundColor: '#1d4ed8', pointRadius: 3, spanGaps: true },
        ],
      },
      options: baseOptions({ scales: { y: { beginAtZero: true, title: { display: true, text: '%' } } } }),
    });
    dataTable(
      $('details table', figure),
      ['day', 'transactions', 'alerts', 'anomaly rate', 'labelled', 'false-positive rate'],
      labels.map((d, i) => {
        const r = rows[i];
        return [d, nf.format(r.tx || 0), nf.format(r.alerts || 0), pct(r.anomaly), nf.format(r.labelled || 0), r.labelled ? pct(r.fp) : '–'];
      }),
    );
  }

  async function loadStats() {
    if (!state.token || !state.filters) return;
    const seq = ++state.statsSeq;
    state.statsDirty = false;
    const { since, until } = statsRange();
    const params = [['until', new Date(until).toISOString()], ['top_merchants', '10']];
    if (since === null) params.push(['days', '3660']);
    else params.push(['since', new Date(since).toISOString()]);
    let stats;
    try {
      stats = await api('stats', { params });
    } catch (e) {
      if (e.status !== 401) $('#charts-window').textContent = `Statistics could not be loaded: ${e.message}`;
      return;
    }
    if (seq !== state.statsSeq) return;
    state.runtime = Boolean(stats.runtime);
    state.lastRuntime = stats.runtime;
    $('#charts-window').textContent = `UTC days ${stats.since.slice(0, 10)} to ${isoDay(Date.parse(stats.until) - 1)}`;
    renderKpis(stats);
    renderRuntime();
    drawDaily(stats);
    const countries = stats.by_country
      .slice()
      .sort((a, b) => b.alerts - a.alerts || CHART_RISKS.reduce((s, r) => s + (b.by_risk[r] || 0) - (a.by_risk[r] || 0), 0))
      .slice(0, 12);
    drawRiskBars('country', countries, (b) => b.key || 'unknown', true);
    drawRiskBars('merchant', stats.by_merchant, (b) => String(b.key), true);
    drawRiskBars('hour', stats.by_hour, (b) => String(b.key).padStart(2, '0'), false);
    document.body.dataset.statsLoaded = String(seq);
  }

  async function loadModels() {
    try {
      const models = await api('models');
      state.champion = models.champion;
      renderRuntime();
    } catch (e) {
      /* the header just lacks the model */
    }
  }

  // -- alert detail ---------------------------------------------------------------------------

  function fieldList(pairs) {
    return el('dl', { class: 'fields' }, pairs.filter(([, v]) => v !== null && v !== undefined && v !== '').map(([k, v]) => [el('dt', { text: k }), el('dd', {}, v)]));
  }

  function explanationBlock(d) {
    const x = d.explanation;
    if (!x || typeof x !== 'object' || !Array.isArray(x.top) || !x.top.length) {
      return el('p', { class: 'muted', text: 'No explanation was stored for this transaction.' });
    }
    const top = x.top.slice().sort((a, b) => Math.abs(b.contribution) - Math.abs(a.contribution));
    const canvas = el('canvas', { role: 'img', 'aria-label': 'Bar chart of the feature contributions; the table follows' });
    const wrap = el('div', { class: 'explain-wrap', id: 'explain-chart' }, canvas);
    const note = el('p', { class: 'explain-note' }, [
      'Positive contributions push towards an anomaly (fraud), negative ones away from it.',
      x.method ? ` Method: ${x.method}` : '',
      x.units ? ` (${x.units})` : '',
      typeof x.expected === 'number' && typeof x.output === 'number'
        ? `; expected ${nf4.format(x.expected)}, this transaction ${nf4.format(x.output)}.`
        : '.',
    ].join(''));
    const table = el('table', { class: 'kv', id: 'explain-table' },
      el('thead', {}, el('tr', {}, ['feature', 'value', 'contribution'].map((h) => el('th', { scope: 'col', text: h })))),
      el('tbody', {}, top.map((t) => el('tr', {}, el('td', { class: 'mono', text: t.feature }), el('td', { class: 'num', text: t.value === undefined ? '–' : nf4.format(t.value) }), el('td', { class: 'num', text: nf4.format(t.contribution) })))),
    );
    requestAnimationFrame(() => {
      if (!canvas.isConnected) return;
      if (state.detailChart) state.detailChart.destroy();
      state.detailChart = new Chart(canvas, {
        type: 'bar',
        data: {
          labels: top.map((t) => t.feature),
          datasets: [{
            label: 'contribution',
            data: top.map((t) => t.contribution),
            backgroundColor: top.map((t) => (t.contribution >= 0 ? '#c2410c' : '#1d4ed8')),
          }],
        },
        options: baseOptions({
          indexAxis: 'y',
          plugins: {
            legend: { display: false },
            tooltip: {
              callbacks: {
                label: (item) => {
                  const t = top[item.dataIndex];
                  const value = t.value === undefined ? '' : `; feature value ${nf4.format(t.value)}`;
                  return `contribution ${nf4.format(t.contribution)}${value}`;
                },
              },
            },
          },
          scales: { x: { title: { display: true, text: x.units || 'contribution' } } },
        }),
      });
      wrap.dataset.rendered = 'true';
    });
    return [wrap, note, el('details', {}, el('summary', { text: 'Data' }), table)];
  }

  function labelBlock(d) {
    const note = el('textarea', { id: 'label-note', maxlength: '2000', placeholder: 'Note (optional)', 'aria-label': 'Note for the label' });
    const message = el('p', { class: 'message', id: 'label-message', role: 'status' });
    const send = async (label, button) => {
      const buttons = button.parentElement.querySelectorAll('button');
      buttons.forEach((b) => { b.disabled = true; });
      message.className = 'message';
      message.textContent = 'Saving…';
      try {
        await api(`alerts/${encodeURIComponent(d.transaction_id)}/feedback`, {
          method: 'POST',
          body: { label, note: note.value.trim() || null },
        });
        await openDetail(d.transaction_id, `Labelled ${label === 'fraud' ? 'fraud' : 'legit (false positive)'}.`);
        loadStats();
      } catch (e) {
        message.className = 'message bad';
        if (e.status === 403) {
          message.textContent = `Not allowed: labelling needs an analyst or admin key; ${state.me ? `“${state.me.name}” is a ${state.me.role} key` : 'this key cannot label'}.`;
        } else {
          message.textContent = `The label was not saved: ${e.message}`;
        }
      } finally {
        buttons.forEach((b) => { b.disabled = false; });
      }
    };
    const current = d.label
      ? el('p', { class: 'message' }, 'Current label: ', el('strong', { class: `status-${d.status}`, text: d.label === 'fraud' ? 'fraud' : 'legit (false positive)' }))
      : el('p', { class: 'message muted', text: 'Not labelled yet.' });
    const viewer = state.me && state.me.role === 'viewer'
      ? el('p', { class: 'hint', text: 'Your key is a viewer key: labels need an analyst key.' })
      : null;
    return el('div', { class: 'label-box' },
      current,
      el('div', { class: 'buttons' },
        el('button', { type: 'button', class: 'danger', id: 'label-fraud', onclick: (e) => send('fraud', e.currentTarget) }, 'Fraud'),
        el('button', { type: 'button', class: 'safe', id: 'label-legit', onclick: (e) => send('legit', e.currentTarget) }, 'Legit (false positive)'),
      ),
      note,
      viewer,
      message,
    );
  }

  function renderDetail(d, flash) {
    $('#detail-title').replaceChildren(
      el('span', { class: `badge risk-${d.risk_level}`, text: d.risk_level }), ' ',
      d.is_alert ? 'Alert ' : 'Transaction ',
      el('span', { class: 'mono', text: d.transaction_id }),
    );
    const explained = new Set((d.explanation && Array.isArray(d.explanation.top) ? d.explanation.top : []).map((t) => t.feature));
    const features = d.features
      ? el('table', { class: 'kv', id: 'features-table' },
        el('thead', {}, el('tr', {}, el('th', { scope: 'col', text: 'feature' }), el('th', { scope: 'col', text: 'value' }))),
        el('tbody', {}, Object.entries(d.features).map(([k, v]) => el('tr', { class: explained.has(k) ? 'top' : null }, el('td', { class: 'mono', text: k }), el('td', { class: 'num', text: nf4.format(v) })))))
      : el('p', { class: 'muted', text: 'No features stored (only alerts keep theirs).' });
    const txFields = fieldList([
      ['Time (UTC)', fmtTime(d.ts)],
      ['Amount', `${fmtAmount(d.amount, d.currency)} (${nf2.format(d.amount_base)} in base currency)`],
      ['Card', d.card_id],
      ['User', d.user_id],
      ['Merchant', d.merchant_id],
      ['Category', d.merchant_category],
      ['Country', d.country],
      ['Channel', d.channel],
      ['Score', nf4.format(d.score)],
      ['Risk', d.risk_level],
      ['Action', d.action],
      ['Status', d.status ? STATUS_TEXT[d.status] || d.status : null],
      ['Model', d.model_version],
      ['Shadow', d.shadow_score === null || d.shadow_score === undefined ? null : `${nf4.format(d.shadow_score)} (${d.shadow_model_version})`],
      ['Features', d.feature_version],
    ]);
    const rules = d.rules && d.rules.length
      ? el('ul', { class: 'rules', id: 'rules' }, d.rules.map((r) => el('li', { text: r })))
      : el('p', { class: 'muted', id: 'rules', text: 'No rule fired.' });
    const history = [
      ...d.labels.map((l) => el('li', { text: `${fmtTime(l.labelled_at)} · ${l.analyst} labelled ${l.label}${l.note ? `: “${l.note}”` : ''}` })),
    ];
    const audit = d.audit.map((a) => el('li', { text: `${fmtTime(a.logged_at)} · ${a.actor} · ${a.action}` }));
    $('#detail-body').replaceChildren(
      el('div', { class: 'detail-grid' },
        el('div', {},
          el('h3', { text: 'Transaction' }), txFields,
          el('h3', { text: 'Rules fired' }), rules,
          el('h3', { text: 'Label' }), labelBlock(d),
        ),
        el('div', {},
          el('h3', { text: 'Why: top feature contributions' }), explanationBlock(d),
          el('h3', { text: 'Features' }), features,
          el('h3', { text: 'Labels and audit' }),
          history.length || audit.length
            ? el('ul', { class: 'history' }, history, audit)
            : el('p', { class: 'muted', text: 'None yet.' }),
        ),
      ),
    );
    if (flash) {
      const message = $('#label-message');
      message.className = 'message ok';
      message.textContent = flash;
    }
    const row = state.rows.get(d.transaction_id);
    if (row && d.status) {
      const cell = row.querySelector('td.status');
      cell.className = `status status-${d.status}`;
      cell.textContent = STATUS_TEXT[d.status] || d.status;
    }
  }

  async function openDetail(id, flash) {
    const dialog = $('#detail');
    state.detailId = id;
    if (!dialog.open) {
      $('#detail-title').textContent = `Transaction ${id}`;
      $('#detail-body').replaceChildren(el('p', { class: 'muted', text: 'Loading…' }));
      dialog.showModal();
    }
    try {
      const d = await api(`alerts/${encodeURIComponent(id)}`);
      if (state.detailId !== id) return;
      renderDetail(d, flash);
    } catch (e) {
      if (state.detailId === id && e.status !== 401) {
        $('#detail-body').replaceChildren(el('p', { class: 'error', role: 'alert', text: `This transaction could not be loaded: ${e.message}` }));
      }
    }
  }

  function routeFromHash() {
    const m = /^#alert=(.+)$/.exec(location.hash);
    if (m && state.token) openDetail(decodeURIComponent(m[1]));
  }

  window.addEventListener('hashchange', routeFromHash);
  $('#detail-close').addEventListener('click', () => {
    // Leave the alert's #hash at once (the dialog's close event comes later, queued): a
    // link to the same alert followed right after must open it again.
    if (state.detailId !== null && location.hash === `#alert=${encodeURIComponent(state.detailId)}`) {
      history.replaceState(null, '', location.pathname + location.search);
    }
    $('#detail').close();
  });
  $('#detail').addEventListener('close', () => {
    // The close event is queued: the page may already have moved to another alert's #hash.
    const closed = state.detailId;
    if ($('#detail').open) return;
    state.detailId = null;
    if (state.detailChart) {
      state.detailChart.destroy();
      state.detailChart = null;
    }
    if (closed !== null && location.hash === `#alert=${encodeURIComponent(closed)}`) {
      history.replaceState(null, '', location.pathname + location.search);
    }
  });

  // -- start ----------------------------------------------------------------------------------

  async function startDashboard() {
    if (typeof Chart !== 'undefined') {
      Chart.defaults.font.family = getComputedStyle(document.documentElement).fontFamily;
      Chart.defaults.color = '#374151';
    }
    syncCustomFields();
    state.filters = readFilters();
    await refreshAnchor();
    await Promise.all([loadModels(), loadAlerts(), loadStats()]);
    if ($('#live-toggle').checked) startStream();
    else setLive('paused');
    clearInterval(state.statsTimer);
    state.statsTimer = setInterval(() => {
      if (document.hidden || !state.token) return;
      if (state.statsDirty || state.runtime) loadStats();
    }, STATS_EVERY_MS);
    routeFromHash();
    document.body.dataset.ready = 'true';
  }

  const saved = sessionStorage.getItem(KEY_STORAGE);
  if (saved) {
    signIn(saved).catch((e) => {
      sessionStorage.removeItem(KEY_STORAGE);
      showLogin(e.status === 401 ? 'Your key is no longer accepted; sign in again.' : `Cannot reach the API: ${e.message}`);
    });
  } else {
    showLogin();
  }
})();
