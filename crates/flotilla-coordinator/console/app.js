// Flotilla console: a single page over the admin API (/v1/...), which accepts the session cookie
// set by /console/login. Everything from the server is rendered with textContent (never as
// HTML); state changes carry the session's CSRF token in X-CSRF-Token.
'use strict';

(function () {
  const POLL_MS = 1500;
  // A client counts as active when it was seen within this window (the coordinator writes
  // last_seen at most once a minute).
  const ACTIVE_MS = 5 * 60 * 1000;
  let csrf = null;
  let timer = null;
  let route = 0; // bumped on every navigation: answers for an older page are dropped
  const rejectionHistory = []; // [{at, rejections}] for "in the last minute"

  // ----- small DOM helpers --------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = String(v);
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const SVG = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return el;
  }
  function table(headers, rows, caption) {
    return h('div', { class: 'table-wrap' },
      h('table', {},
        caption ? h('caption', { class: 'muted', text: caption }) : null,
        h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col', class: x.num ? 'num' : null, text: x.label || x })))),
        h('tbody', {}, rows.length ? rows : [h('tr', {}, h('td', { colspan: headers.length, class: 'muted', text: 'None.' }))])));
  }
  function td(v, num) { return h('td', { class: num ? 'num' : null }, v instanceof Node ? v : (v === null || v === undefined ? '–' : String(v))); }
  function time(ms) { return ms ? new Date(ms).toLocaleString() : '–'; }
  function ago(ms) {
    if (!ms) return 'never';
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.round(s / 60) + ' min ago';
    if (s < 86400) return Math.round(s / 3600) + ' h ago';
    return Math.round(s / 86400) + ' d ago';
  }
  function fmt(x, digits) { return (x === null || x === undefined) ? '–' : Number(x).toFixed(digits); }
  function secs(ms) { return ms === null || ms === undefined ? '–' : (ms / 1000).toFixed(1) + ' s'; }
  function setText(el, text) { if (el && el.textContent !== text) el.textContent = text; }
  function banner(msg) { setText($('banner'), msg || ''); }

  // ----- the API ------------------------------------------------------------------------------
  class NotLoggedIn extends Error {}
  async function api(method, path, body) {
    const opts = { method, credentials: 'same-origin', headers: {} };
    if (method !== 'GET') {
      opts.headers['X-CSRF-Token'] = csrf || '';
      if (body !== undefined) {
        opts.headers['Content-Type'] = 'application/json';
        opts.body = JSON.stringify(body);
      }
    }
    const resp = await fetch(path, opts);
    let data = null;
    try { data = await resp.json(); } catch (_) { data = null; }
    if (resp.status === 401) throw new NotLoggedIn((data && data.error) || 'not logged in');
    if (!resp.ok) throw new Error((data && data.error) || ('HTTP ' + resp.status));
    return data;
  }
  function failed(e) {
    if (e instanceof NotLoggedIn) { showLogin(); return; }
    banner(e.message);
  }

  // ----- login --------------------------------------------------------------------------------
  function showLogin(msg) {
    csrf = null;
    stopPolling();
    $('nav').hidden = true;
    $('view').replaceChildren();
    $('login-view').hidden = false;
    setText($('login-error'), msg || '');
    $('login-token').focus();
  }
  async function login(ev) {
    ev.preventDefault();
    setText($('login-error'), '');
    const body = new URLSearchParams({ token: $('login-token').value });
    try {
      const resp = await fetch('/console/login', { method: 'POST', credentials: 'same-origin', body });
      const data = await resp.json().catch(() => ({}));
      if (!resp.ok) { setText($('login-error'), data.error || ('HTTP ' + resp.status)); return; }
      csrf = data.csrf_token;
      $('login-token').value = '';
      start();
    } catch (e) { setText($('login-error'), e.message); }
  }
  async function logout() {
    try { await api('POST', '/console/logout'); } catch (_) { /* gone already */ }
    location.hash = '#/';
    showLogin('Logged out.');
  }
  function start() {
    $('login-view').hidden = true;
    $('nav').hidden = false;
    banner('');
    render();
  }

  // ----- routing and polling ------------------------------------------------------------------
  function stopPolling() { if (timer) { clearTimeout(timer); timer = null; } }
  function poll(fn, my) {
    const tick = async () => {
      if (my !== route) return;
      try { await fn(); if (my === route) banner(''); } catch (e) { failed(e); }
      if (my === route && csrf) timer = setTimeout(tick, POLL_MS);
    };
    tick();
  }
  function render() {
    stopPolling();
    if (!csrf) return;
    const my = ++route;
    const hash = location.hash || '#/';
    for (const a of document.querySelectorAll('#nav a')) {
      if (a.getAttribute('href') === hash) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    const view = $('view');
    const job = hash.match(/^#\/jobs\/(\d+)$/);
    if (job) jobPage(view, job[1], my);
    else if (hash === '#/clients') clientsPage(view, my);
    else if (hash === '#/tokens') tokensPage(view);
    else overviewPage(view, my);
  }

  // ----- overview -----------------------------------------------------------------------------
  function overviewPage(view, my) {
    const stats = h('div', { class: 'grid', 'aria-live': 'polite' });
    const jobs = h('div');
    const rejections = h('div');
    view.replaceChildren(h('h1', { text: 'Overview' }), stats,
      h('h2', { text: 'Jobs' }), jobs, h('h2', { text: 'Rejected requests by reason' }), rejections);
    document.title = 'Overview · Flotilla console';
    poll(async () => {
      const [js, cs, m] = await Promise.all([api('GET', '/v1/jobs'), api('GET', '/v1/clients'), api('GET', '/v1/metrics')]);
      if (my !== route) return;
      const byState = {};
      for (const j of js) byState[j.state] = (byState[j.state] || 0) + 1;
      const enrolled = cs.filter((c) => !c.revoked);
      const active = enrolled.filter((c) => c.last_seen_ms && Date.now() - c.last_seen_ms < ACTIVE_MS);
      const card = (label, value, id, cls) => h('div', { class: 'card' }, h('div', { class: 'muted', text: label }), h('div', { class: cls || 'stat', id, text: value }));
      stats.replaceChildren(
        card('Jobs running', byState.running || 0, 'stat-running'),
        card('Jobs by state', ['pending', 'running', 'completed', 'failed', 'cancelled'].map((k) => k + ' ' + (byState[k] || 0)).join(' · '), 'stat-states', 'states'),
        card('Clients enrolled', enrolled.length, 'stat-enrolled'),
        card('Clients active (seen in 5 min)', active.length, 'stat-active'));
      jobs.replaceChildren(table(['Job', 'Name', 'Tenant', 'State', { label: 'Rounds', num: true }, 'Why'],
        js.slice().reverse().map((j) => h('tr', {},
          td(h('a', { href: '#/jobs/' + j.job_id, text: '#' + j.job_id })), td(j.name), td(j.tenant),
          td(h('span', { class: 'state state-' + j.state, text: j.state })),
          td(j.rounds_completed + ' / ' + j.rounds_total, true), td(j.halted || j.reason || '')))));
      const now = Date.now();
      rejectionHistory.push({ at: now, r: m.rejections || {} });
      while (rejectionHistory.length > 1 && now - rejectionHistory[1].at >= 60000) rejectionHistory.shift();
      const old = rejectionHistory[0].r;
      const reasons = Object.keys(m.rejections || {}).sort();
      rejections.replaceChildren(
        h('p', { class: 'muted', text: 'Authentication failures since start: ' + m.auth_failures + ' · rounds committed ' + m.rounds_committed + ', abandoned ' + m.rounds_abandoned }),
        table(['Reason', { label: 'Since start', num: true }, { label: 'Last minute', num: true }],
          reasons.map((k) => h('tr', {}, td(k), td(m.rejections[k], true), td(m.rejections[k] - (old[k] || 0), true)))));
    }, my);
  }

  // ----- job page -----------------------------------------------------------------------------
  // A line chart of one or more series over rounds; its numbers are also in the table below it.
  function chart(id, title, series, yMax) {
    const W = 560, H = 240, L = 46, R = 12, T = 12, B = 30;
    const pts = series.flatMap((x) => x.points);
    const rounds = pts.map((p) => p[0]);
    const x0 = rounds.length ? Math.min(...rounds) : 0, x1 = rounds.length ? Math.max(...rounds) : 1;
    const ys = pts.map((p) => p[1]);
    const y1 = yMax !== undefined ? yMax : Math.max(1e-9, ...ys) * 1.1;
    const X = (r) => L + (x1 === x0 ? 0.5 : (r - x0) / (x1 - x0)) * (W - L - R);
    const Y = (v) => T + (1 - v / y1) * (H - T - B);
    const last = series.map((x) => x.points.length ? x.name + ' ' + fmt(x.points[x.points.length - 1][1], 3) + ' at round ' + x.points[x.points.length - 1][0] : null).filter(Boolean);
    const label = title + ': ' + (pts.length ? last.join('; ') : 'no data yet');
    const svg = s('svg', { class: 'chart', id, viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label, 'data-points': pts.length });
    for (let i = 0; i <= 4; i++) {
      const v = (y1 * i) / 4;
      svg.append(s('line', { x1: L, x2: W - R, y1: Y(v), y2: Y(v), stroke: '#d5d9df' }));
      svg.append(s('text', { x: L - 6, y: Y(v) + 4, 'text-anchor': 'end' }, fmt(v, y1 < 10 ? 2 : 0)));
    }
    svg.append(s('text', { x: L, y: H - 8 }, 'round ' + x0));
    svg.append(s('text', { x: W - R, y: H - 8, 'text-anchor': 'end' }, 'round ' + x1));
    for (const x of series) {
      if (!x.points.length) continue;
      svg.append(s('polyline', { fill: 'none', stroke: x.color, 'stroke-width': 2.5, points: x.points.map((p) => X(p[0]) + ',' + Y(p[1])).join(' ') }));
      for (const p of x.points.slice(-1)) svg.append(s('circle', { cx: X(p[0]), cy: Y(p[1]), r: 3.5, fill: x.color }));
    }
    const legend = h('ul', { class: 'legend' }, series.map((x) => h('li', {}, h('span', { class: 'swatch ' + x.sw, 'aria-hidden': 'true' }),
      x.points.length ? x.name : x.name + ' (none reported)')));
    return h('figure', {}, h('figcaption', { text: title }), legend, svg);
  }

  function jobPage(view, id, my) {
    const head = h('div');
    const rounds = h('span', { id: 'job-rounds', 'aria-live': 'polite' });
    const charts = h('div', { class: 'charts' });
    const privacy = h('div');
    const history = h('div');
    const abandoned = h('div');
    const spec = h('pre', { id: 'job-spec', tabindex: '0' });
    view.replaceChildren(h('p', {}, h('a', { href: '#/', text: '← Overview' })),
      h('h1', { id: 'job-title', text: 'Job #' + id }),
      h('p', { class: 'stat' }, 'Round ', rounds), head, charts,
      h('h2', { text: 'Differential privacy' }), privacy,
      h('h2', { text: 'Rounds' }), history,
      h('h2', { text: 'Abandoned attempts' }), abandoned,
      h('h2', { text: 'Spec' }), spec);
    let specShown = false;
    poll(async () => {
      const j = await api('GET', '/v1/jobs/' + id);
      if (my !== route) return;
      document.title = 'Job ' + j.job_id + ' ' + j.name + ' · Flotilla console';
      setText($('job-title'), 'Job #' + j.job_id + ' · ' + j.name);
      setText(rounds, j.rounds_completed + ' / ' + j.rounds_total);
      const c = j.current;
      head.replaceChildren(...[h('p', {},
        h('span', { class: 'state state-' + j.state, id: 'job-state', text: j.state }),
        ' · tenant ' + j.tenant + ' · submitted ' + time(j.created_at_ms),
        c ? ' · round ' + c.round + ' attempt ' + c.attempt + ' ' + c.phase + ', ' + c.available_clients + ' clients available, ' + c.needed_clients + ' needed' : ''),
        (j.halted || j.reason) ? h('p', { class: j.halted ? 'error' : 'muted', text: j.halted || j.reason }) : null].filter(Boolean));
      const hist = j.history || [];
      const pick = (f) => hist.map((r) => [r.round, f(r)]).filter((p) => p[1] !== null && p[1] !== undefined);
      const fe = (r) => r.metrics.federated_eval || {};
      charts.replaceChildren(
        chart('chart-accuracy', 'Accuracy per round', [
          { name: 'server eval', color: '#0b5cad', sw: 'sw-acc', points: pick((r) => r.metrics.eval_accuracy) },
          { name: 'federated eval', color: '#a34d00', sw: 'sw-acc2', points: pick((r) => fe(r).accuracy) }], 1),
        chart('chart-loss', 'Loss per round', [
          { name: 'server eval', color: '#0b5cad', sw: 'sw-acc', points: pick((r) => r.metrics.eval_loss) },
          { name: 'federated eval', color: '#a34d00', sw: 'sw-acc2', points: pick((r) => fe(r).loss) },
          { name: 'training', color: '#6b2fa0', sw: 'sw-loss', points: pick((r) => r.metrics.train_loss) }]));
      const p = j.privacy;
      privacy.replaceChildren(p
        ? h('div', {},
          h('p', { 'aria-live': 'polite', id: 'job-epsilon', text: 'ε spent ' + fmt(p.epsilon_spent, 3) + (p.max_epsilon ? ' of ' + fmt(p.max_epsilon, 3) : ' (no budget)') + ' at δ = ' + p.delta + (p.tenant_max_epsilon ? ' · tenant ' + fmt(p.tenant_epsilon_spent, 3) + ' of ' + fmt(p.tenant_max_epsilon, 3) : '') }),
          p.max_epsilon ? h('meter', { min: 0, max: p.max_epsilon, high: 0.8 * p.max_epsilon, value: p.epsilon_spent, 'aria-label': 'ε spent against budget' }) : null,
          p.stopped_reason ? h('p', { class: 'error', text: p.stopped_reason }) : null)
        : h('p', { class: 'muted', text: 'This job has no [privacy] section.' }));
      let prev = j.created_at_ms;
      const rows = hist.map((r) => {
        const dur = r.committed_at_ms - prev;
        prev = r.committed_at_ms;
        return h('tr', {}, td(r.round, true), td(r.attempt, true), td(r.participants.length, true), td(secs(dur), true),
          td(fmt(r.metrics.train_loss, 4), true), td(fmt(r.metrics.eval_accuracy, 4), true), td(fmt(r.metrics.eval_loss, 4), true),
          td(fmt(fe(r).accuracy, 4), true), td(r.epsilon_spent === undefined ? null : fmt(r.epsilon_spent, 3), true));
      });
      history.replaceChildren(table([{ label: 'Round', num: true }, { label: 'Attempt', num: true }, { label: 'Participants', num: true },
        { label: 'Duration', num: true }, { label: 'Train loss', num: true }, { label: 'Eval accuracy', num: true },
        { label: 'Eval loss', num: true }, { label: 'Fed. accuracy', num: true }, { label: 'ε', num: true }], rows.reverse(),
      'Newest first. Duration: since the previous commit (the first: since submission).'));
      const ab = j.abandoned || [];
      const retried = hist.filter((r) => r.attempt > 1).length;
      abandoned.replaceChildren(
        h('p', { class: 'muted', text: retried ? retried + ' committed round(s) needed more than one attempt.' : 'Every committed round succeeded at its first attempt.' }),
        table(['When', { label: 'Round', num: true }, { label: 'Attempt', num: true }, 'Why'],
          ab.slice().reverse().map((a) => h('tr', {}, td(time(a.at_ms)), td(a.round, true), td(a.attempt, true), td(a.reason)))));
      if (!specShown && j.spec) { spec.textContent = JSON.stringify(j.spec, null, 2); specShown = true; }
    }, my);
  }

  // ----- clients ------------------------------------------------------------------------------
  function clientsPage(view, my) {
    const status = h('p', { role: 'status', class: 'ok', id: 'clients-status' });
    const list = h('div');
    view.replaceChildren(h('h1', { text: 'Clients' }), status, list);
    document.title = 'Clients · Flotilla console';
    const load = async () => {
      const cs = await api('GET', '/v1/clients');
      if (my !== route) return;
      list.replaceChildren(table(['Client', 'Name', 'Tenant', 'Enrolled', 'Last seen', 'Credential expires', 'Status', ''],
        cs.map((c) => h('tr', { id: 'client-' + c.client_id },
          td(c.client_id, true), td(c.name || '–'), td(c.tenant), td(time(c.created_at_ms)), td(ago(c.last_seen_ms)),
          td(c.credential_expires_at_ms ? time(c.credential_expires_at_ms) : 'never'),
          td(h('span', { class: c.revoked ? 'state state-failed' : 'state state-completed', text: c.revoked ? 'revoked' : 'active' })),
          td(c.revoked ? '' : h('button', { type: 'button', class: 'danger small', id: 'revoke-' + c.client_id,
            'aria-label': 'Revoke client ' + c.client_id, text: 'Revoke', onclick: () => confirmRevoke(c, load) }))))));
    };
    poll(load, my);
  }
  function confirmRevoke(c, reload) {
    const dlg = $('confirm');
    setText($('confirm-text'), 'Client ' + c.client_id + (c.name ? ' (' + c.name + ')' : '') + ' of tenant ' + c.tenant +
      ' will be refused on its next call and must enroll again with a new token. This cannot be undone.');
    const ok = $('confirm-ok'), cancel = $('confirm-cancel');
    const close = () => { ok.onclick = null; cancel.onclick = null; dlg.close(); };
    cancel.onclick = close;
    ok.onclick = async () => {
      close();
      try {
        await api('POST', '/v1/clients/' + c.client_id + '/revoke');
        setText($('clients-status'), 'Client ' + c.client_id + ' revoked.');
        await reload();
      } catch (e) { failed(e); }
    };
    dlg.showModal();
    cancel.focus();
  }

  // ----- enrollment tokens --------------------------------------------------------------------
  function tokensPage(view) {
    document.title = 'Enrollment tokens · Flotilla console';
    const result = h('div', { 'aria-live': 'polite' });
    const form = h('form', { class: 'card', id: 'token-form' },
      h('label', { for: 'tok-tenant', text: 'Tenant' }), h('input', { id: 'tok-tenant', name: 'tenant', value: 'default', required: true }),
      h('label', { for: 'tok-uses', text: 'Clients that may enroll with it' }), h('input', { id: 'tok-uses', name: 'uses', type: 'number', min: 1, value: 1, required: true }),
      h('label', { for: 'tok-expires', text: 'Valid for' }),
      h('select', { id: 'tok-expires', name: 'expires' },
        h('option', { value: 3600, text: '1 hour' }), h('option', { value: 86400, selected: true, text: '1 day' }),
        h('option', { value: 604800, text: '7 days' }), h('option', { value: 2592000, text: '30 days' })),
      h('button', { type: 'submit', id: 'tok-create', text: 'Create token' }));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        const t = await api('POST', '/v1/enrollment-tokens', {
          tenant: $('tok-tenant').value.trim(), uses: Number($('tok-uses').value), expires_in_seconds: Number($('tok-expires').value) });
        const secret = h('input', { id: 'tok-secret', readonly: true, value: t.token, 'aria-label': 'Enrollment token secret' });
        const copied = h('span', { role: 'status', class: 'ok' });
        const copy = h('button', { type: 'button', id: 'tok-copy', text: 'Copy', onclick: async () => {
          secret.select();
          try { await navigator.clipboard.writeText(t.token); setText(copied, 'Copied.'); }
          catch (_) { setText(copied, 'Selected: press Ctrl+C to copy.'); }
        } });
        result.replaceChildren(h('div', { class: 'card' },
          h('h2', { text: 'Token ' + t.token_id + ' for tenant ' + t.tenant }),
          h('p', { class: 'error', text: 'Shown only now: copy it before leaving this page.' }),
          h('div', { class: 'secret' }, secret, copy, copied),
          h('p', { class: 'muted', text: t.uses + ' use(s), valid until ' + time(t.expires_at_ms) + '. Give it to a client: flotilla client --token <secret> …' })));
        secret.focus();
      } catch (e) { failed(e); }
    });
    view.replaceChildren(h('h1', { text: 'Enrollment tokens' }),
      h('p', { class: 'muted', text: 'A client enrolls once with a token and then uses its own credential. The coordinator stores only a hash of the secret.' }),
      form, result);
  }

  // ----- start --------------------------------------------------------------------------------
  document.addEventListener('DOMContentLoaded', async () => {
    $('login-form').addEventListener('submit', login);
    $('logout').addEventListener('click', logout);
    window.addEventListener('hashchange', render);
    try {
      const resp = await fetch('/console/session', { credentials: 'same-origin' });
      if (resp.ok) { csrf = (await resp.json()).csrf_token; start(); } else showLogin();
    } catch (e) { showLogin(e.message); }
  });
})();
