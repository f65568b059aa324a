// capmatch web page: one query (an image, a text, or an indexed image), its options, and a
// grid of results that say why they matched. The whole state lives in the URL, so a search
// can be shared and the browser's back and forward buttons walk through past searches.
'use strict';

const $ = (id) => document.getElementById(id);
const MODES = ['caption', 'image', 'fused', 'text'];
const DEFAULT_K = 20;

// Query images the user gave in this tab, by key (the URL names the key, not the bytes).
const queryImages = new Map();
const state = { text: '', id: '', img: '', mode: 'caption', k: DEFAULT_K, domain: '', weight: 0.5 };
let lastAnswer = null;
let searchSerial = 0;

// ---------------------------------------------------------------- URL <-> state

function stateToQuery(s) {
  const p = new URLSearchParams();
  if (s.text) p.set('q', s.text);
  if (s.id) p.set('id', s.id);
  if (s.img) p.set('img', s.img);
  if (s.mode !== 'caption') p.set('mode', s.mode);
  if (s.k !== DEFAULT_K) p.set('k', String(s.k));
  if (s.domain) p.set('domain', s.domain);
  if (s.mode === 'fused' && s.weight !== 0.5) p.set('w', String(s.weight));
  const q = p.toString();
  return q ? '?' + q : location.pathname;
}

function stateFromQuery(search) {
  const p = new URLSearchParams(search);
  const k = parseInt(p.get('k') || '', 10);
  const w = parseFloat(p.get('w') || '');
  const mode = p.get('mode') || 'caption';
  return {
    text: p.get('q') || '',
    id: /^\d{1,16}$/.test(p.get('id') || '') ? p.get('id') : '',
    img: p.get('img') || '',
    mode: MODES.includes(mode) ? mode : 'caption',
    k: k >= 1 && k <= 1000 ? k : DEFAULT_K,
    domain: p.get('domain') || '',
    weight: w >= 0 && w <= 1 ? w : 0.5,
  };
}

function hasQuery(s) {
  return Boolean(s.text || s.id || s.img);
}

// ---------------------------------------------------------------- gallery info

async function loadInfo() {
  const line = $('gallery-line');
  for (let attempt = 0; ; attempt++) {
    try {
      const r = await fetch('/api/info');
      if (r.status === 503) {
        line.textContent = 'loading the models…';
        await new Promise((res) => setTimeout(res, Math.min(500 * (attempt + 1), 3000)));
        continue;
      }
      const info = await r.json();
      if (!r.ok) throw new Error(info.error || r.statusText);
      showInfo(info);
      return info;
    } catch (e) {
      line.textContent = 'cannot reach the server: ' + e.message;
      return null;
    }
  }
}

function modelName(spec) {
  if (!spec) return '?';
  const parts = spec.split(/[\\/]/).filter(Boolean);
  return parts.length > 2 && !spec.startsWith('/') ? spec : parts[parts.length - 1];
}

function showInfo(info) {
  const line = $('gallery-line');
  line.textContent = '';
  const domains = info.domains || [];
  const bold = (t) => { const b = document.createElement('b'); b.textContent = t; return b; };
  line.append(bold(String(info.files)), ' images in ', bold(String(domains.length)), domains.length === 1 ? ' domain' : ' domains');
  if (info.models) {
    line.append(' · CLIP ', bold(modelName(info.models.clip)), ' · captions by ', bold(modelName(info.models.captioner)));
  }
  const select = $('domain');
  const current = state.domain;
  select.replaceChildren(new Option('all', ''));
  for (const d of domains) select.append(new Option(`${d.domain} (${d.files})`, d.domain));
  if (current && !domains.some((d) => d.domain === current)) select.append(new Option(current, current));
  select.value = current;
  $('upload-toggle').hidden = !(info.server && info.server.writable);
  $('inspect-link').hidden = !(info.server && info.server.inspect);
}

// ---------------------------------------------------------------- query image

function newKey() {
  return Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
}

function rememberImage(key, blob, name) {
  const entry = { blob, name, url: URL.createObjectURL(blob) };
  queryImages.set(key, entry);
  // Best effort, so that a reload of this tab keeps the query (small images only).
  if (blob.size < 1.5e6) {
    const reader = new FileReader();
    reader.onload = () => { try { sessionStorage.setItem('img:' + key, JSON.stringify({ name, data: reader.result })); } catch (_) { /* full */ } };
    reader.readAsDataURL(blob);
  }
  return entry;
}

async function imageOfKey(key) {
  if (queryImages.has(key)) return queryImages.get(key);
  const saved = sessionStorage.getItem('img:' + key);
  if (!saved) return null;
  const { name, data } = JSON.parse(saved);
  const blob = await (await fetch(data)).blob();
  return rememberImage(key, blob, name);
}

function setQueryImage(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith('image/') && !/\.svg$/i.test(file.name || '')) {
    showError(`${file.name || 'that file'} is not an image`);
    return;
  }
  const key = newKey();
  rememberImage(key, file, file.name || 'pasted image');
  Object.assign(state, { img: key, text: '', id: '' });
  if (state.mode === 'text') state.mode = 'caption';
  runSearch(true);
}

// ---------------------------------------------------------------- search

function syncControls() {
  $('text-input').value = state.text;
  for (const b of $('modes').querySelectorAll('button')) {
    b.setAttribute('aria-checked', String(b.dataset.mode === state.mode));
    // Only a text is compared with the gallery's images in "text" mode.
    b.disabled = b.dataset.mode === 'text' && Boolean(state.img || state.id);
  }
  $('weight-field').hidden = state.mode !== 'fused';
  $('weight').value = String(state.weight);
  $('weight-out').textContent = state.weight.toFixed(2);
  $('k').value = String(state.k);
  if (![...$('k').options].some((o) => o.value === String(state.k))) $('k').append(new Option(String(state.k)));
  $('k').value = String(state.k);
  if (state.domain && ![...$('domain').options].some((o) => o.value === state.domain)) $('domain').append(new Option(state.domain, state.domain));
  $('domain').value = state.domain;
  const entry = state.img ? queryImages.get(state.img) : null;
  $('drop-empty').hidden = Boolean(entry);
  $('drop-full').hidden = !entry;
  if (entry) { $('query-preview').src = entry.url; $('query-preview').alt = 'query: ' + entry.name; }
}

async function runSearch(push) {
  syncControls();
  const url = stateToQuery(state);
  if (push && url !== location.pathname + location.search) history.pushState({ ...state }, '', url);
  else if (!push) history.replaceState({ ...state }, '', url);
  if (!hasQuery(state)) {
    clearResults();
    return;
  }
  // Busy from the moment the URL names the new search, before anything is awaited.
  showBusy();
  const serial = ++searchSerial;
  let body;
  let headers = {};
  const options = { mode: state.mode, k: state.k };
  if (state.domain) options.domain = state.domain;
  if (state.mode === 'fused') options.weight = state.weight;
  if (state.img) {
    const entry = await imageOfKey(state.img);
    if (!entry) {
      showError('The query image of this link was only in the browser tab that made it: drop it again.');
      $('grid').replaceChildren();
      return;
    }
    syncControls();
    body = new FormData();
    body.append('image', entry.blob, entry.name);
    for (const [k, v] of Object.entries(options)) body.append(k, String(v));
  } else {
    const query = state.text ? { text: state.text } : { image_id: state.id };
    body = JSON.stringify({ ...query, ...options });
    headers = { 'Content-Type': 'application/json' };
  }
  try {
    const r = await fetch('/api/search', { method: 'POST', body, headers });
    const answer = await r.json();
    if (serial !== searchSerial) return; // a newer search is under way
    if (!r.ok) throw new Error(answer.error || r.statusText);
    lastAnswer = answer;
    render(answer);
  } catch (e) {
    if (serial === searchSerial) showError(e.message);
  }
}

// The grid says when it is being replaced (dimmed meanwhile; tests wait on it too).
function setBusy(busy) {
  $('grid').setAttribute('aria-busy', String(busy));
}

function clearResults() {
  setBusy(false);
  lastAnswer = null;
  $('grid').replaceChildren();
  $('status').replaceChildren();
  $('empty').hidden = false;
  $('export').hidden = true;
}

function showBusy() {
  const s = $('status');
  const spin = document.createElement('span');
  spin.className = 'spinner';
  s.replaceChildren(spin, 'searching…');
  setBusy(true);
  $('empty').hidden = true;
}

function showError(message) {
  const s = $('status');
  const e = document.createElement('span');
  e.className = 'error';
  e.textContent = message;
  s.replaceChildren(e);
  setBusy(false);
  $('empty').hidden = true;
}

function queryChip() {
  const chip = document.createElement('span');
  chip.className = 'query-chip';
  if (state.img || state.id) {
    const img = document.createElement('img');
    img.alt = '';
    img.src = state.img ? queryImages.get(state.img).url : `/api/images/${state.id}/thumb?size=64`;
    chip.append(img, state.img ? queryImages.get(state.img).name : 'more like this');
  } else {
    chip.classList.add('text');
    chip.textContent = `“${state.text}”`;
  }
  return chip;
}

function render(answer) {
  const hits = answer.hits;
  const grid = $('grid');
  const template = $('card-template');
  // Each component on its own scale over the grid (caption and image cosines live in
  // different bands): from 0 to the best score shown, or, when every score is negative (as
  // with random-weight test models), from the worst to the best. A hit whose caption bar is
  // full and image bar short matched by its caption.
  const scale = (part) => {
    const values = hits.map((h) => h.scores[part]).filter((v) => v != null);
    const hi = Math.max(...values);
    const lo = hi > 0 ? Math.min(0, ...values) : Math.min(...values);
    const span = Math.max(1e-6, hi - lo);
    return (v) => `${4 + 96 * Math.max(0, Math.min(1, (v - lo) / span))}%`;
  };
  const width = { caption: scale('caption'), image: scale('image') };
  const used = { caption: answer.mode !== 'image' && answer.mode !== 'text', image: answer.mode !== 'caption' && answer.mode !== 'caption-text' };
  const cards = hits.map((h, i) => {
    const card = template.content.firstElementChild.cloneNode(true);
    card.tabIndex = i === 0 ? 0 : -1;
    card.dataset.index = String(i);
    const img = card.querySelector('.thumb img');
    img.src = `${h.thumb_url}?size=256`;
    img.alt = h.caption || `image ${h.id}`;
    card.querySelector('.thumb').addEventListener('click', () => moreLikeThis(h));
    card.querySelector('.rank').textContent = String(h.rank);
    card.querySelector('.score').textContent = h.score.toFixed(3);
    card.querySelector('.domain').textContent = h.domain;
    card.querySelector('.domain').title = h.path;
    const open = card.querySelector('.open');
    open.href = h.image_url;
    const list = card.querySelector('.captions');
    const captions = h.captions.length ? h.captions : [h.caption];
    captions.forEach((c, ci) => {
      const li = document.createElement('li');
      if (ci === h.matched_caption) li.className = 'matched';
      const b = document.createElement('button');
      b.type = 'button';
      b.textContent = c;
      b.title = `${c}\n(${ci === h.matched_caption ? 'the caption that matched; ' : ''}click to search with it)`;
      b.addEventListener('click', () => searchCaption(c));
      li.append(b);
      list.append(li);
    });
    for (const part of ['caption', 'image']) {
      const bar = card.querySelector(`.bar[data-part="${part}"]`);
      const v = h.scores[part];
      bar.querySelector('.fill').style.width = v == null ? '0%' : width[part](v);
      bar.querySelector('.value').textContent = v == null ? '–' : v.toFixed(3);
      bar.classList.toggle('unused', !used[part]);
      bar.title = `${part} score${used[part] ? '' : ' (not used by this mode)'}`;
    }
    return card;
  });
  grid.replaceChildren(...cards);
  setBusy(false);
  $('empty').hidden = true;
  $('export').hidden = hits.length === 0;
  const s = $('status');
  const summary = document.createElement('span');
  summary.textContent = hits.length
    ? `${hits.length} result${hits.length === 1 ? '' : 's'} · ${answer.mode} mode${state.domain ? ' · ' + state.domain : ''} · ${answer.took_ms.toFixed(0)} ms`
    : `no result${state.domain ? ' in ' + state.domain : ''}`;
  s.replaceChildren(queryChip(), summary);
}

function moreLikeThis(hit) {
  Object.assign(state, { id: String(hit.id), img: '', text: '' });
  if (state.mode === 'text') state.mode = 'caption';
  runSearch(true);
  window.scrollTo({ top: 0, behavior: 'smooth' });
}

function searchCaption(caption) {
  Object.assign(state, { text: caption, img: '', id: '', mode: 'caption' });
  runSearch(true);
  window.scrollTo({ top: 0, behavior: 'smooth' });
}

// ---------------------------------------------------------------- export

function download(name, type, text) {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([text], { type }));
  a.download = name;
  document.body.append(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

function csvField(v) {
  const s = v == null ? '' : String(v);
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function exportCsv() {
  const rows = [['rank', 'score', 'caption_score', 'image_score', 'id', 'domain', 'path', 'caption']];
  for (const h of lastAnswer.hits) rows.push([h.rank, h.score, h.scores.caption, h.scores.image, h.id, h.domain, h.path, h.caption]);
  download('capmatch-results.csv', 'text/csv', rows.map((r) => r.map(csvField).join(',')).join('\r\n') + '\r\n');
}

function exportJson() {
  const query = state.img ? { image: queryImages.get(state.img)?.name } : state.text ? { text: state.text } : { image_id: Number(state.id) };
  download('capmatch-results.json', 'application/json', JSON.stringify({ query, mode: lastAnswer.mode, domain: state.domain || null, hits: lastAnswer.hits }, null, 2));
}

// ---------------------------------------------------------------- keyboard

function cards() {
  return [...$('grid').children];
}

function focusCard(i) {
  const all = cards();
  if (!all.length) return;
  const c = all[Math.max(0, Math.min(all.length - 1, i))];
  for (const other of all) other.tabIndex = -1;
  c.tabIndex = 0;
  c.focus();
  c.scrollIntoView({ block: 'nearest' });
}

function columns() {
  const all = cards();
  if (!all.length) return 1;
  const top = all[0].offsetTop;
  const n = all.findIndex((c) => c.offsetTop !== top);
  return n === -1 ? all.length : n;
}

function onKey(e) {
  const typing = e.target.closest('input, select, textarea');
  if (e.key === 'Escape') {
    if (typing) { e.target.blur(); return; }
    if (state.img || state.id || state.text) { Object.assign(state, { img: '', id: '', text: '' }); runSearch(true); }
    return;
  }
  if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === '/') { e.preventDefault(); $('text-input').focus(); return; }
  const card = e.target.closest('.card');
  const all = cards();
  const i = card ? Number(card.dataset.index) : -1;
  const move = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(), ArrowUp: -columns() }[e.key];
  if (move !== undefined && all.length) {
    e.preventDefault();
    focusCard(i === -1 ? 0 : i + move);
    return;
  }
  if (i === -1 || !lastAnswer) return;
  const hit = lastAnswer.hits[i];
  if (e.key === 'Enter' && e.target === card) { e.preventDefault(); moreLikeThis(hit); }
  else if (e.key === 'c' || e.key === 'C') searchCaption(hit.caption);
  else if (e.key === 'o' || e.key === 'O') window.open(hit.image_url, '_blank', 'noopener');
}

// ---------------------------------------------------------------- upload

async function upload(e) {
  e.preventDefault();
  const token = $('token').value.trim();
  const files = [...$('upload-files').files];
  const list = $('upload-results');
  if (!files.length) return;
  sessionStorage.setItem('token', token);
  const form = new FormData();
  form.append('domain', $('upload-domain').value.trim() || 'uploads');
  for (const f of files) form.append('image', f, f.name);
  const pending = document.createElement('li');
  pending.textContent = `indexing ${files.length} image${files.length === 1 ? '' : 's'}…`;
  list.replaceChildren(pending);
  try {
    const r = await fetch('/api/images', { method: 'POST', body: form, headers: { Authorization: 'Bearer ' + token } });
    const answer = await r.json();
    if (!r.ok) throw new Error(answer.error || r.statusText);
    list.replaceChildren(...answer.images.map((o) => {
      const li = document.createElement('li');
      li.className = o.id ? 'ok' : 'bad';
      li.textContent = o.id ? `✓ ${o.name} indexed` : `✗ ${o.name}: ${o.error}`;
      if (o.id) {
        const a = document.createElement('a');
        a.href = `?id=${o.id}`;
        a.textContent = ' — more like it';
        li.append(a);
      }
      return li;
    }));
    $('upload-files').value = '';
    loadInfo();
    if (hasQuery(state)) runSearch(false);
  } catch (err) {
    const li = document.createElement('li');
    li.className = 'bad';
    li.textContent = '✗ ' + err.message;
    list.replaceChildren(li);
  }
}

// ---------------------------------------------------------------- wiring

function wire() {
  const drop = $('drop');
  const file = $('file-input');
  file.addEventListener('change', () => { setQueryImage(file.files[0]); file.value = ''; });
  drop.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); file.click(); } });
  $('clear-image').addEventListener('click', (e) => { e.preventDefault(); e.stopPropagation(); state.img = ''; runSearch(true); });
  for (const type of ['dragenter', 'dragover']) {
    document.addEventListener(type, (e) => { if ([...(e.dataTransfer?.types || [])].includes('Files')) { e.preventDefault(); drop.classList.add('over'); } });
  }
  for (const type of ['dragleave', 'drop']) document.addEventListener(type, () => drop.classList.remove('over'));
  document.addEventListener('drop', (e) => {
    const f = e.dataTransfer?.files?.[0];
    if (f) { e.preventDefault(); setQueryImage(f); }
  });
  document.addEventListener('paste', (e) => {
    const item = [...(e.clipboardData?.items || [])].find((i) => i.kind === 'file' && i.type.startsWith('image/'));
    if (item) { e.preventDefault(); setQueryImage(item.getAsFile()); }
  });
  $('query-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = $('text-input').value.trim();
    if (text) Object.assign(state, { text, img: '', id: '' });
    runSearch(true);
  });
  for (const b of $('modes').querySelectorAll('button')) {
    b.addEventListener('click', () => { state.mode = b.dataset.mode; runSearch(true); });
  }
  $('weight').addEventListener('input', () => { $('weight-out').textContent = Number($('weight').value).toFixed(2); });
  $('weight').addEventListener('change', () => { state.weight = Number($('weight').value); runSearch(true); });
  $('domain').addEventListener('change', () => { state.domain = $('domain').value; runSearch(true); });
  $('k').addEventListener('change', () => { state.k = Number($('k').value); runSearch(true); });
  $('export-json').addEventListener('click', exportJson);
  $('export-csv').addEventListener('click', exportCsv);
  $('upload-toggle').addEventListener('click', () => {
    const panel = $('upload-panel');
    panel.hidden = !panel.hidden;
    $('upload-toggle').setAttribute('aria-expanded', String(!panel.hidden));
    if (!panel.hidden) $('token').value = sessionStorage.getItem('token') || '';
  });
  $('upload-form').addEventListener('submit', upload);
  document.addEventListener('keydown', onKey);
  window.addEventListener('popstate', () => {
    Object.assign(state, stateFromQuery(location.search));
    runSearch(false);
  });
}

wire();
Object.assign(state, stateFromQuery(location.search));
syncControls();
loadInfo().then(() => { if (hasQuery(state)) runSearch(false); });
