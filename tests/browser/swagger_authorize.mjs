// Browser check: Swagger UI's "Authorize" button works against authgate's
// OAuth2 password flow (POST /auth/token), and the token it gets is then used
// by "Try it out" on GET /users/me.
//
// Steps: open /docs/, Authorize in the `oauth2 (OAuth2, password)` section
// (client_id/secret left empty), expect the authorized state (Logout button),
// then execute GET /users/me and expect 200 with the username in the body.
// Prints the /auth/token request the browser sent and saves a screenshot.
//
// Not part of the CI run: it needs a real browser. To run it by hand:
//   apt-get install -y chromium
//   npm install playwright-core      # in the directory you run node from
//   authgate serve                   # with a user already signed up
//   AUTHGATE_URL=http://127.0.0.1:18099 AUTHGATE_USERNAME=swagger \
//   AUTHGATE_PASSWORD='swagger check passphrase' \
//     node /path/to/tests/browser/swagger_authorize.mjs
// Optional: CHROMIUM (default /usr/bin/chromium), SCREENSHOT (default
// /tmp/swagger-check/authorized.png).

import { fail, launchChromium } from './lib.mjs';

const base = (process.env.AUTHGATE_URL || '').replace(/\/+$/, '');
const username = process.env.AUTHGATE_USERNAME;
const password = process.env.AUTHGATE_PASSWORD;
const screenshot = process.env.SCREENSHOT || '/tmp/swagger-check/authorized.png';

if (!base || !username || !password) {
  fail('set AUTHGATE_URL, AUTHGATE_USERNAME and AUTHGATE_PASSWORD');
}

function authScheme(value) {
  if (!value) return '(none)';
  return value === 'Basic Og==' ? 'Basic Og== (empty client_id and secret)' : `${value.split(' ')[0]} …`;
}

const browser = await launchChromium();

let exitCode = 0;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1100 } });
  page.setDefaultTimeout(15000);

  // Record what the browser sends to and gets from the token endpoint.
  const tokenCalls = [];
  page.on('requestfinished', async (req) => {
    if (!new URL(req.url()).pathname.endsWith('/auth/token')) return;
    const res = await req.response();
    const body = req.postData() || '';
    tokenCalls.push({
      method: req.method(),
      url: req.url(),
      contentType: req.headers()['content-type'],
      // Only the scheme is shown; "Basic Og==" is ":" (no client_id/secret).
      authorization: authScheme(req.headers()['authorization']),
      bodyKeys: [...new URLSearchParams(body).keys()],
      status: res?.status(),
      responseKeys: Object.keys(await res?.json().catch(() => ({})) || {}),
    });
  });
  page.on('requestfailed', (req) => {
    if (req.url().includes('/auth/token')) {
      tokenCalls.push({ method: req.method(), url: req.url(), failed: req.failure()?.errorText });
    }
  });

  // 1. Swagger UI renders.
  await page.goto(`${base}/docs/`);
  await page.locator('.swagger-ui .info .title').waitFor();
  await page.locator('#operations-users-me').waitFor();

  // 2. Authorize with the oauth2 password flow.
  await page.locator('.auth-wrapper .btn.authorize').click();
  const section = page.locator('.modal-ux .auth-container')
    .filter({ has: page.locator('h4', { hasText: 'oauth2 (OAuth2, password)' }) });
  await section.waitFor();
  await section.locator('#oauth_username').fill(username);
  await section.locator('#oauth_password').fill(password);
  await section.locator('.auth-btn-wrapper button', { hasText: /^Authorize$/ }).click();
  try {
    await section.locator('.auth-btn-wrapper button', { hasText: 'Logout' }).waitFor();
  } catch {
    const errors = await section.locator('.errors').allInnerTexts().catch(() => []);
    console.error('/auth/token calls:', JSON.stringify(tokenCalls, null, 2));
    fail(`dialog never showed the authorized state; errors shown: ${JSON.stringify(errors)}`);
  }
  console.log('/auth/token calls:', JSON.stringify(tokenCalls, null, 2));
  await page.locator('.modal-ux .modal-ux-header .close-modal').click();

  // 3. Try it out on GET /users/me with the token.
  const op = page.locator('#operations-users-me');
  await op.locator('.opblock-summary').first().click();
  await op.locator('.try-out__btn').click();
  await op.locator('.btn.execute').click();
  const status = op.locator('.live-responses-table .response .response-col_status');
  await status.waitFor();
  const code = (await status.innerText()).trim();
  const body = await op.locator('.live-responses-table .response .response-col_description pre').first().innerText();
  await op.scrollIntoViewIfNeeded();
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`GET /users/me -> ${code}; screenshot ${screenshot}`);
  if (code !== '200') fail(`GET /users/me answered ${code}: ${body}`);
  if (!body.includes(`"${username}"`)) fail(`GET /users/me body lacks the username: ${body}`);
  console.log('OK: Authorize (oauth2 password) works and the token reaches /users/me');
} catch (e) {
  console.error(`FAIL: ${e.message}`);
  exitCode = 1;
} finally {
  await browser.close();
}
process.exit(exitCode);
