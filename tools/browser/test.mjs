// The capmatch page in a real browser (Debian's Chromium through playwright-core).
//
//   node tools/browser/test.mjs URL QUERY_IMAGE UPLOAD_IMAGE TOKEN OUT_DIR
//
// Uploads a query image through the file input, expects a grid of results with captions,
// clicks a result ("more like this") and expects a new grid for it; then walks back and
// forward, searches by a caption and by text, switches mode, exports CSV, adds an image
// through the upload panel; fails on any page error or console error (a CSP violation
// included). Screenshots go to OUT_DIR. Run by scripts/browser-test.sh.

import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';

const [url, queryImage, uploadImage, token, outDir] = process.argv.slice(2);
if (!outDir) {
  console.error('usage: node test.mjs URL QUERY_IMAGE UPLOAD_IMAGE TOKEN OUT_DIR');
  process.exit(2);
}

async function waitReady() {
  const deadline = Date.now() + 120_000;
  for (;;) {
    try {
      const r = await fetch(new URL('/healthz', url));
      if (r.status === 200) return;
    } catch (_) { /* not listening yet */ }
    if (Date.now() > deadline) throw new Error(`${url} did not become ready`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const step = (name) => console.log(`[browser] ${name}`);
// The page marks the grid busy from the moment the URL names a new search until its
// results (or its error) are shown.
const settled = (page) => page.locator('#grid[aria-busy="false"]').waitFor();

await waitReady();
const profile = mkdtempSync(join(tmpdir(), 'capmatch-chromium-'));
// Without these flags Chromium keeps trying to reach Google's services, and on a machine
// without network it stalls on refused connections.
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
  viewport: { width: 1360, height: 900 },
  acceptDownloads: true,
});
const problems = [];
try {
  const page = context.pages()[0] || await context.newPage();
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });
  page.setDefaultTimeout(30_000);

  const cards = page.locator('#grid > li.card');
  const ids = async () => page.$$eval('#grid > li.card .open', (as) => as.map((a) => a.getAttribute('href')));

  step('open the page');
  await page.goto(url);
  await page.locator('#gallery-line b').first().waitFor();
  const line = await page.locator('#gallery-line').innerText();
  assert.match(line, /\d+ images in \d+ domains/);

  step('upload a query image through the file input');
  await page.setInputFiles('#file-input', queryImage);
  await cards.first().waitFor();
  const n = await cards.count();
  assert.ok(n >= 3, `expected a grid, got ${n} cards`);
  for (let i = 0; i < n; i++) {
    const card = cards.nth(i);
    const caption = await card.locator('.captions .matched button').textContent();
    assert.ok(caption.length > 0, `card ${i} has no matched caption`);
    assert.equal(await card.locator('.thumb img').getAttribute('alt'), caption, 'alt text is the caption');
  }
  // The thumbnails in view have loaded (those below are lazy).
  await page.waitForFunction(() => [...document.querySelectorAll('#grid > li.card .thumb img')].slice(0, 3)
    .every((img) => img.complete && img.naturalWidth > 0));
  assert.match(page.url(), /[?&]img=/);
  await page.locator('#status .query-chip img').waitFor();
  const firstGrid = await ids();
  await page.mouse.move(0, 0);
  await page.screenshot({ path: join(outDir, 'serve.png') });

  step('click a result: more like this');
  const clicked = firstGrid[1].split('/').pop();
  await cards.nth(1).locator('.thumb').click();
  await page.waitForURL(new RegExp(`[?&]id=${clicked}`));
  await page.waitForFunction(() => document.querySelector('#status .query-chip')?.textContent.includes('more like this'));
  assert.ok((await cards.count()) >= 3, 'a new grid for the clicked image');
  assert.match(await page.locator('#status').innerText(), /more like this/);

  step('image mode: the clicked image comes first, with score 1');
  await page.click('#modes button[data-mode="image"]');
  await page.waitForURL(/mode=image/);
  await page.waitForFunction((id) => document.querySelector('#grid > li.card .open')?.getAttribute('href') === `/api/images/${id}`
    && document.querySelector('#status .query-chip')?.textContent.includes('more like this'), clicked);
  assert.equal((await cards.first().locator('.score').innerText()).trim(), '1.000');

  step('back and forward');
  await page.goBack();
  await page.waitForURL((u) => !u.search.includes('mode=image') && u.search.includes(`id=${clicked}`));
  await settled(page);
  await page.goBack();
  await page.waitForURL(/[?&]img=/);
  await page.waitForFunction((before) => [...document.querySelectorAll('#grid > li.card .open')].map((a) => a.getAttribute('href')).join() === before.join(), firstGrid);
  await page.goForward();
  await page.waitForURL(new RegExp(`[?&]id=${clicked}`));
  await settled(page);

  step('click a caption: search by its text');
  // textContent: the caption as the page has it (innerText would apply the card's line clamp
  // and white-space rules).
  const caption = await cards.nth(2).locator('.captions .matched button').textContent();
  await cards.nth(2).locator('.captions .matched button').click();
  await page.waitForURL((u) => new URLSearchParams(u.search).get('q') === caption);
  await page.waitForFunction((c) => document.querySelector('#status .query-chip')?.textContent.includes(c), caption);
  assert.equal(await page.inputValue('#text-input'), caption);

  step('keyboard: "/" then a text query, arrows, Enter');
  await page.locator('body').click({ position: { x: 5, y: 300 } });
  await page.keyboard.press('/');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'text-input');
  await page.fill('#text-input', 'a lemon on a table');
  await page.keyboard.press('Enter');
  await page.waitForURL(/q=a\+lemon/);
  await settled(page);
  await cards.first().waitFor();
  await page.keyboard.press('Escape'); // leave the text box
  await page.keyboard.press('ArrowRight');
  await page.keyboard.press('ArrowRight');
  assert.equal(await page.evaluate(() => document.activeElement.dataset.index), '1');
  const focusedId = (await cards.nth(1).locator('.open').getAttribute('href')).split('/').pop();
  await page.keyboard.press('Enter');
  await page.waitForURL(new RegExp(`[?&]id=${focusedId}`));
  await settled(page);

  step('export CSV');
  await cards.first().waitFor();
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#export-csv')]);
  const csv = readFileSync(await download.path(), 'utf8').trim().split(/\r\n/);
  assert.equal(csv[0], 'rank,score,caption_score,image_score,id,domain,path,caption');
  assert.equal(csv.length - 1, await cards.count());

  step('upload panel: add an image with the token');
  await page.click('#upload-toggle');
  await page.fill('#token', token);
  await page.fill('#upload-domain', 'sketch');
  await page.setInputFiles('#upload-files', uploadImage);
  await page.click('#upload-form button[type="submit"]');
  await page.locator('#upload-results li.ok').waitFor({ timeout: 60_000 });
  await page.waitForFunction(() => [...document.querySelectorAll('#domain option')].some((o) => o.value === 'sketch'));
  await page.selectOption('#domain', 'sketch');
  await page.waitForURL(/domain=sketch/);
  await page.waitForFunction(() => document.querySelectorAll('#grid > li.card').length === 1);

  step('a shared link restores the search');
  const shared = await context.newPage();
  await shared.goto(`${url.replace(/\/$/, '')}/?q=grapes&mode=text&k=3`);
  await shared.locator('#grid > li.card').nth(2).waitFor();
  assert.equal(await shared.locator('#grid > li.card').count(), 3);
  assert.equal(await shared.locator('#modes button[aria-checked="true"]').innerText(), 'Text');
  await shared.close();

  assert.deepEqual(problems, []);
  step('ok');
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
