// suitcase's management page. Served by the binary; no framework, no build step.
//
// Rules this file keeps:
// - text from the server or the user is shown with textContent or element properties only,
//   never parsed as markup; the only markup inserted is a live section rendered (and
//   escaped) by the server's templates;
// - the publisher token lives in this tab's sessionStorage and travels only as an
//   Authorization header on this page's own requests (credentials: 'omit', no cookies);
// - every control is a native button, input or select, so the page works from the keyboard.
'use strict';

(() => {
  const doc = document;
  const KEY = 'suitcase.publisher-token';
  let token = null;
  try { token = sessionStorage.getItem(KEY); } catch (_) { token = null; }

  const $ = (sel, root = doc) => root.querySelector(sel);
  const $$ = (sel, root = doc) => Array.from(root.querySelectorAll(sel));

  // An element with text children (strings become text nodes, never markup).
  function el(tag, props, ...children) {
    const e = doc.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === 'class') e.className = v;
      else if (k === 'data') Object.assign(e.dataset, v);
      else if (k in e) e[k] = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  function say(node, text, kind) {
    if (!node) return;
    node.textContent = text;
    node.className = 'status' + (kind ? ' ' + kind : '');
  }

  function headers(extra) {
    const h = new Headers(extra || {});
    if (token) h.set('Authorization', 'Bearer ' + token);
    return h;
  }

  // A request of the page; a network failure comes back as a 599 answer with the reason,
  // so every caller shows it like any other error.
  async function api(method, path, body, extra) {
    const sent = token;
    let r;
    try {
      r = await fetch(path, { method, headers: headers(extra), body, cache: 'no-store', credentials: 'omit' });
    } catch (e) {
      return new Response(JSON.stringify({ error: 'the server cannot be reached (' + e.message + ')' }),
        { status: 599, headers: { 'Content-Type': 'application/json' } });
    }
    if (r.status === 401 && sent && sent === token) signedOut('The server no longer accepts your token: sign in again.');
    return r;
  }

  async function errorText(r) {
    try {
      const j = await r.json();
      if (j && typeof j.error === 'string') return j.error;
    } catch (_) { /* not JSON */ }
    return r.status + ' ' + r.statusText;
  }

  function size(n) {
    if (n >= 1048576) return (n / 1048576).toFixed(1) + ' MiB';
    if (n >= 1024) return (n / 1024).toFixed(1) + ' KiB';
    return n + ' B';
  }

  // ---- session -------------------------------------------------------------------------

  const sessionStatus = $('#session-status');

  function signedIn(name) {
    doc.body.classList.add('signed-in');
    $('#signin').hidden = true;
    $('#signed-in').hidden = false;
    $('#who').textContent = name;
    say(sessionStatus, '');
  }

  function signedOut(why) {
    token = null;
    try { sessionStorage.removeItem(KEY); } catch (_) { /* private mode */ }
    doc.body.classList.remove('signed-in');
    $('#signin').hidden = false;
    $('#signed-in').hidden = true;
    say(sessionStatus, why || '', why ? 'error' : '');
    refreshAll();
  }

  async function signIn(candidate, quiet) {
    let r;
    try {
      r = await fetch('/api/v1/whoami', {
        headers: { Authorization: 'Bearer ' + candidate }, cache: 'no-store', credentials: 'omit',
      });
    } catch (e) {
      // Kept in the tab for a later try, but not used while the page shows signed out.
      token = null;
      say(sessionStatus, 'The server cannot be reached: ' + e.message, 'error');
      return;
    }
    if (!r.ok) {
      const msg = await errorText(r);
      if (quiet) signedOut('Your session ended: sign in again.');
      else say(sessionStatus, 'Sign-in failed: ' + msg, 'error');
      return;
    }
    const who = await r.json();
    token = candidate;
    try { sessionStorage.setItem(KEY, candidate); } catch (_) { /* kept in memory only */ }
    signedIn(who.name);
    refreshAll();
  }

  $('#signin').addEventListener('submit', (e) => {
    e.preventDefault();
    const input = $('#token');
    const t = input.value.trim();
    input.value = '';
    if (t) signIn(t, false);
  });
  $('#signout').addEventListener('click', () => signedOut());

  // ---- live sections -------------------------------------------------------------------

  const etags = {};
  const busy = {};

  // Replace a live section with the server's current rendering of it, keeping the focused
  // control and the open disclosures (matched by data-key).
  // One request per section at a time: a poll never overtakes an older one, and a reply
  // for another token (signed in or out meanwhile) is dropped.
  async function refresh(name) {
    if (!doc.getElementById(name + '-live')) return;
    if (busy[name]) { busy[name] = 'again'; return; }
    busy[name] = true;
    try {
      await refreshOnce(name);
    } finally {
      const again = busy[name] === 'again';
      busy[name] = false;
      if (again) refresh(name);
    }
  }

  async function refreshOnce(name) {
    const sent = token;
    const mine = etags[name] && etags[name].token === sent ? { 'If-None-Match': etags[name].tag } : {};
    const r = await api('GET', '/ui/section/' + name, undefined, mine);
    if (r.status === 304 || !r.ok || sent !== token) return;
    const text = await r.text();
    if (sent !== token) return;
    etags[name] = { tag: r.headers.get('ETag'), token: sent };
    const fresh = new DOMParser().parseFromString(text, 'text/html').getElementById(name + '-live');
    if (!fresh) return;
    const live = doc.getElementById(name + '-live');
    if (!live) return;
    const focused = doc.activeElement && live.contains(doc.activeElement) ? doc.activeElement.dataset.key : null;
    const open = new Set($$('details[open]', live).map((d) => d.dataset.key));
    const node = doc.adoptNode(fresh);
    for (const d of $$('details[data-key]', node)) if (open.has(d.dataset.key)) d.open = true;
    live.replaceWith(node);
    if (focused) {
      const again = $$('[data-key]', node).find((n) => n.dataset.key === focused);
      if (again) again.focus();
    }
    if (name === 'firmware') syncPublishIds();
  }

  // Focus the control with this data-key as the page has it now (a refresh may have
  // replaced the one that was clicked).
  function focusKey(key) {
    const n = key && $$('[data-key]').find((e) => e.dataset.key === key);
    if (n) n.focus();
  }

  function syncPublishIds() {
    const list = $('#publish-ids');
    list.replaceChildren(...$$('[data-publish-id]').map((s) => el('option', { value: s.dataset.publishId })));
  }

  function refreshAll() {
    for (const n of ['firmware', 'fleet', 'rollouts']) refresh(n);
  }

  let tick = 0;
  setInterval(() => {
    if (doc.hidden) return;
    tick += 1;
    refresh('fleet');
    refresh('rollouts');
    if (tick % 5 === 0) refresh('firmware');
  }, 2000);
  doc.addEventListener('visibilitychange', () => { if (!doc.hidden) refreshAll(); });

  // ---- confirmation --------------------------------------------------------------------

  function confirmDialog(title, text, items, okLabel) {
    const d = $('#confirm');
    $('#confirm-title').textContent = title;
    $('#confirm-text').textContent = text;
    $('#confirm-list').replaceChildren(...items.map((i) => el('li', {}, i)));
    $('#confirm-ok').textContent = okLabel;
    d.returnValue = '';
    return new Promise((resolve) => {
      d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true });
      d.showModal();
    });
  }

  // ---- publish -------------------------------------------------------------------------

  const publishForm = $('#publish-form');
  const filesInput = $('#files');
  const drop = $('#drop');
  const publishStatus = $('#publish-status');
  const progress = $('#upload-progress');
  let chosen = [];

  function showChosen() {
    $('#file-list').replaceChildren(...chosen.map((f, i) => el('li', {},
      f.name + ' (' + size(f.size) + ') ',
      el('button', {
        type: 'button', class: 'danger', textContent: 'Remove', ariaLabel: 'Remove ' + f.name,
        onclick: () => { chosen.splice(i, 1); showChosen(); },
      }))));
  }

  function addFiles(list) {
    for (const f of Array.from(list)) {
      chosen = chosen.filter((c) => c.name !== f.name);
      chosen.push(f);
    }
    showChosen();
  }

  // A file dropped beside the zone must not make the browser leave the page.
  for (const ev of ['dragover', 'drop']) doc.addEventListener(ev, (e) => e.preventDefault());

  filesInput.addEventListener('change', () => { addFiles(filesInput.files); filesInput.value = ''; });
  for (const ev of ['dragenter', 'dragover']) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add('over'); });
  }
  for (const ev of ['dragleave', 'dragend']) drop.addEventListener(ev, () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    if (e.dataTransfer && e.dataTransfer.files.length) addFiles(e.dataTransfer.files);
  });

  publishForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const form = new FormData(publishForm);
    const id = String(form.get('publish_id') || '').trim();
    if (!id) { say(publishStatus, 'Give a publish-id.', 'error'); return; }
    if (!chosen.length) { say(publishStatus, 'Choose or drop at least one firmware file.', 'error'); return; }
    const manifest = form.get('manifest');
    const total = chosen.reduce((n, f) => n + f.size, 0) + (manifest && manifest.size ? manifest.size : 0);
    const limit = Number(publishForm.dataset.maxUpload || 0);
    if (limit && total > limit) {
      say(publishStatus, 'The files add up to ' + size(total) + '; this server accepts at most ' + size(limit) + ' per upload.', 'error');
      return;
    }
    if (!token) { say(publishStatus, 'Sign in first.', 'error'); return; }
    const body = new FormData();
    body.append('publish_id', id);
    for (const k of ['version', 'class', 'profile']) {
      const v = String(form.get(k) || '').trim();
      if (v) body.append(k, v);
    }
    if (manifest && manifest.size) body.append('manifest', manifest, manifest.name);
    for (const f of chosen) body.append('file', f, f.name);

    const button = $('#publish-submit');
    button.disabled = true;
    progress.hidden = false;
    progress.value = 0;
    say(publishStatus, 'Uploading ' + size(total) + '…');
    const xhr = new XMLHttpRequest();
    xhr.open('POST', '/publish');
    xhr.setRequestHeader('Authorization', 'Bearer ' + token);
    xhr.upload.addEventListener('progress', (p) => {
      if (p.lengthComputable) progress.value = Math.round((p.loaded * 100) / p.total);
      progress.dataset.loaded = String(p.loaded);
    });
    xhr.addEventListener('load', () => {
      button.disabled = false;
      let answer = null;
      try { answer = JSON.parse(xhr.responseText); } catch (_) { answer = null; }
      if (xhr.status >= 200 && xhr.status < 300 && answer) {
        const names = answer.files.map((f) => f.name).join(', ');
        say(publishStatus, 'Published version ' + answer.version + ' of ' + answer.publish_id + ': ' + names +
          (answer.manifest ? ' and a signed manifest' : '') + '.', 'ok');
        chosen = [];
        showChosen();
        publishForm.reset();
        refresh('firmware');
      } else {
        if (xhr.status === 401 && token) signedOut('The server no longer accepts your token: sign in again.');
        const msg = answer && answer.error ? answer.error : xhr.status + ' ' + xhr.statusText;
        say(publishStatus, 'The server refused the upload: ' + msg, 'error');
      }
    });
    xhr.addEventListener('error', () => {
      button.disabled = false;
      say(publishStatus, 'The upload failed: the connection was closed before an answer came.', 'error');
    });
    xhr.send(body);
  });

  // ---- clicks on the listing -----------------------------------------------------------

  const firmwareStatus = $('#firmware-status');
  const rolloutsStatus = $('#rollouts-status');

  async function copy(button) {
    const input = button.parentElement.querySelector('input');
    if (!input) return;
    let done = false;
    if (navigator.clipboard && window.isSecureContext) {
      try { await navigator.clipboard.writeText(input.value); done = true; } catch (_) { done = false; }
    }
    if (!done) {
      input.focus();
      input.select();
      try { done = doc.execCommand('copy'); } catch (_) { done = false; }
    }
    button.textContent = done ? 'Copied' : 'Select and copy';
    button.dataset.copied = done ? 'yes' : 'no';
    setTimeout(() => { button.textContent = 'Copy'; }, 2000);
  }

  async function remove(button) {
    const row = button.closest('tr');
    const id = button.dataset.remove;
    const version = Number(button.dataset.version);
    const files = $$('li[data-file]', row).map((li) => li.dataset.file + ' (' + li.dataset.size + ')');
    const versions = $$('tr[data-version]', button.closest('section')).map((r) => Number(r.dataset.version));
    const newest = Math.max(...versions);
    let text = 'These files are deleted from the server; devices can no longer fetch them. This cannot be undone.';
    if (version === newest) {
      const rest = versions.filter((v) => v !== version);
      text += rest.length
        ? ' It is the newest version: devices asking for the latest get version ' + Math.max(...rest) + ' instead.'
        : ' It is the only version: the publish-id disappears.';
    }
    const key = button.dataset.key;
    const ok = await confirmDialog('Remove ' + button.dataset.what + '?', text, files, 'Remove');
    if (!ok) { focusKey(key); return; }
    const r = await api('POST', '/remove', JSON.stringify({ publish_id: id, version }), { 'Content-Type': 'application/json' });
    if (r.ok) say(firmwareStatus, 'Removed ' + button.dataset.what + '.', 'ok');
    else say(firmwareStatus, 'Not removed: ' + await errorText(r), 'error');
    refresh('firmware');
  }

  async function rolloutAction(button) {
    const action = button.dataset.rolloutAction;
    const id = button.dataset.id;
    const key = button.dataset.key;
    if (action === 'abort') {
      const ok = await confirmDialog('Abort ' + button.dataset.what + '?',
        'No further device is triggered. Devices already updating finish on their own. An aborted rollout cannot be resumed.',
        [], 'Abort rollout');
      if (!ok) { focusKey(key); return; }
    }
    button.disabled = true;
    const r = await api('POST', '/api/v1/rollouts/' + encodeURIComponent(id) + '/' + action);
    if (r.ok) {
      const v = await r.json();
      say(rolloutsStatus, 'Rollout #' + v.id + ' is ' + v.state + '.', 'ok');
    } else {
      say(rolloutsStatus, 'Rollout #' + id + ': ' + await errorText(r), 'error');
    }
    button.disabled = false;
    await refresh('rollouts');
    focusKey(key);
  }

  doc.addEventListener('click', (e) => {
    const t = e.target instanceof Element ? e.target.closest('button') : null;
    if (!t) return;
    if ('copy' in t.dataset) copy(t);
    else if (t.dataset.remove) remove(t);
    else if (t.dataset.notify) openNotify(t.dataset.notify);
    else if (t.dataset.rolloutAction) rolloutAction(t);
  });

  // ---- notify --------------------------------------------------------------------------

  const notifyDialog = $('#notify');
  const notifyForm = $('#notify-form');
  const notifyStatus = $('#notify-status');
  const results = $('#notify-results');

  let notifyOpened = 0;

  async function openNotify(id) {
    const mine = ++notifyOpened;
    notifyForm.reset();
    notifyForm.elements.publish_id.value = id;
    $('#notify-title').textContent = 'Notify devices of ' + id;
    say(notifyStatus, '');
    results.hidden = true;
    $('tbody', results).replaceChildren();
    const select = notifyForm.elements.version;
    select.replaceChildren(el('option', { value: 'latest', textContent: 'latest' }));
    $('#notify-picker').replaceChildren();
    $('#notify-devices').hidden = true;
    notifyDialog.showModal();

    const vr = await api('GET', '/api/v1/publish-ids/' + id.split('/').map(encodeURIComponent).join('/'));
    if (mine !== notifyOpened) return;
    if (vr.ok) {
      const versions = await vr.json();
      select.replaceChildren(...versions.map((v, i) => el('option', {
        value: i === 0 ? 'latest' : String(v.version),
        textContent: (i === 0 ? 'latest: ' : '') + 'version ' + v.version + (v.semver ? ' (' + v.semver + ')' : '') +
          (v.sequence_number !== null && v.sequence_number !== undefined ? ', sequence ' + v.sequence_number : ''),
      })));
    }
    const limit = 1000;
    const dr = await api('GET', '/api/v1/devices?limit=' + limit + '&publish_id=' + encodeURIComponent(id));
    if (mine !== notifyOpened) return;
    if (dr.ok) {
      const all = await dr.json();
      const devices = all.filter((d) => d.coap);
      devices.sort((a, b) => a.id.localeCompare(b.id));
      $('#notify-more').textContent = all.length >= limit
        ? 'The first ' + limit + ' devices of ' + id + ' are listed; type further ids or addresses above.'
        : '';
      $('#notify-picker').replaceChildren(...devices.map((d) => el('label', { class: 'check' },
        el('input', { type: 'checkbox', name: 'device', value: d.id }),
        ' ' + d.id + ' — ' + d.coap + (d.publish_id ? ' · ' + d.publish_id : '') + ' · ' + d.state)));
      $('#notify-devices').hidden = devices.length === 0;
    }
  }

  $('#notify-close').addEventListener('click', () => notifyDialog.close());

  notifyForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = notifyForm.elements;
    const typed = String(f.urls.value).split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
    const picked = $$('input[name=device]:checked', notifyForm).map((c) => c.value);
    const devices = Array.from(new Set(typed.concat(picked)));
    if (!devices.length) { say(notifyStatus, 'Type an address or pick a device.', 'error'); return; }
    const body = new URLSearchParams({ publish_id: f.publish_id.value, urls: devices.join(','), version: f.version.value });
    if (f.watch.checked) body.set('watch', f.watch.value);
    const send = $('#notify-send');
    send.disabled = true;
    say(notifyStatus, 'Sending to ' + devices.length + ' device(s)…');
    let r;
    try {
      r = await api('POST', '/notify', body, { 'Content-Type': 'application/x-www-form-urlencoded' });
    } catch (err) {
      send.disabled = false;
      say(notifyStatus, 'The server cannot be reached: ' + err.message, 'error');
      return;
    }
    send.disabled = false;
    if (!r.ok) { say(notifyStatus, 'Not sent: ' + await errorText(r), 'error'); return; }
    const answer = await r.json();
    if (f.publish_id.value !== answer.publish_id) return;
    const rows = answer.results.map((d) => el('tr', { role: 'row', data: { result: d.result } },
      el('td', { role: 'cell', data: { label: 'device' } }, d.device),
      el('td', { role: 'cell', data: { label: 'address' } }, d.address || '–'),
      el('td', { role: 'cell', data: { label: 'result' }, class: 'result' }, d.result),
      el('td', { role: 'cell', data: { label: 'code' } }, d.code || '–'),
      el('td', { role: 'cell', data: { label: 'time' } }, d.elapsed_ms + ' ms'),
      el('td', { role: 'cell', data: { label: 'detail' } }, [d.message, d.download].filter(Boolean).join('; ') || '–')));
    $('tbody', results).replaceChildren(...rows);
    results.hidden = false;
    const ok = answer.results.filter((d) => d.result === 'ok').length;
    say(notifyStatus, ok + ' of ' + answer.results.length + ' accepted the trigger for ' + answer.manifest_url + '.',
      ok === answer.results.length ? 'ok' : 'error');
    refresh('fleet');
  });

  // ---- rollouts ------------------------------------------------------------------------

  const rolloutForm = $('#rollout-form');
  if (rolloutForm) {
    rolloutForm.addEventListener('submit', async (e) => {
      e.preventDefault();
      const f = rolloutForm.elements;
      const status = $('#rollout-status');
      const req = { publish_id: f.publish_id.value.trim(), only_older: f.only_older.checked, trigger: f.trigger.value };
      const text = (k) => f[k].value.trim();
      if (text('version')) req.version = text('version');
      if (text('name')) req.name = text('name');
      if (text('waves')) req.waves = text('waves').split(',').map((w) => w.trim()).filter(Boolean);
      for (const k of ['max_concurrent', 'success', 'halt_on_errors']) if (text(k)) req[k] = Number(text(k));
      const target = f.target.value;
      if (target !== 'all') {
        if (!text('target_value')) { say(status, 'Name the ' + target + '.', 'error'); return; }
        req[target] = target === 'devices' ? text('target_value').split(',').map((d) => d.trim()).filter(Boolean) : text('target_value');
      }
      const r = await api('POST', '/api/v1/rollouts', JSON.stringify(req), { 'Content-Type': 'application/json' });
      if (!r.ok) { say(status, 'Not created: ' + await errorText(r), 'error'); return; }
      const v = await r.json();
      say(status, 'Rollout #' + v.id + ' created for ' + v.totals.devices + ' device(s).', 'ok');
      refresh('rollouts');
    });
  }

  // ---- start ---------------------------------------------------------------------------

  // Only now that every handler is attached do the sign-in and action controls show.
  doc.documentElement.classList.add('js');
  if (token) signIn(token, true);
})();
