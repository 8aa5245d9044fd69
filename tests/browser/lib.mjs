// What the browser checks share: how they report, how long they may run,
// where their packages come from, and how Chromium starts.
//
// Each check prints a line per step and last a JSON line `{"ok": true, ...}`.
// Any failed expectation ends it with `FAIL: ...` and exit status 1.

import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

export function fail(msg) {
  console.error(`FAIL: ${msg}`);
  process.exit(1);
}

export function expect(condition, msg) {
  if (!condition) throw new Error(msg);
}

export function step(msg) {
  console.log(`-- ${msg}`);
}

/// A setting the check cannot run without.
export function env(name) {
  const value = process.env[name];
  if (!value) fail(`set ${name}`);
  return value;
}

/// Ends the run, browser start included, if it is still going after
/// `deadlineMs`.
export function watchdog(deadlineMs = 90_000) {
  const timer = setTimeout(() => fail(`still running after ${deadlineMs / 1000} s`), deadlineMs);
  timer.unref();
}

// The packages are installed where the check runs from (its cwd; .ci/run
// installs them into target/ci-browser) or on NODE_PATH, not beside it:
// `require.resolve` reads both, where `import` would read neither.
const require = createRequire(path.join(process.cwd(), 'noop.js'));

/// An installed package, as an ES module.
export async function load(name) {
  try {
    return await import(pathToFileURL(require.resolve(name)).href);
  } catch (e) {
    return fail(`${name} not found (${e.message}): npm ci with tests/browser/package.json, `
      + 'then run from that directory or set NODE_PATH to its node_modules');
  }
}

/// Headless Chromium: Debian's, or the one CHROMIUM names.
export async function launchChromium() {
  const playwright = await load('playwright-core');
  // A CommonJS package: its exports may come as `default` only.
  const chromium = playwright.chromium ?? playwright.default.chromium;
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/// A full-page screenshot named `name`, when SCREENSHOT_DIR says where.
export async function shot(page, name) {
  const dir = process.env.SCREENSHOT_DIR;
  if (dir) {
    await page.screenshot({ path: path.join(dir, `${name}.png`), fullPage: true });
  }
}

/// Ends a check that threw: where the page was and what it showed, then
/// the error.
export async function failAt(page, e) {
  if (page) console.error(`at ${page.url()}:\n${await page.content().catch(() => '')}`);
  fail(e && e.stack ? e.stack : String(e));
}
