// Browser check: passkeys on the hosted pages, with a CDP virtual
// authenticator in Chromium.
//
// A user with a password signs in to /account, adds a passkey there (its
// recovery codes shown once) and signs out; signs in again with the
// password and the passkey as the second step, and, at two factors, opens
// the authenticator app's enrolment (its QR code); signs out, and signs in
// to an application's authorization request with the passkey alone (the
// login page's button), allowing it on the consent page. The redirect back
// is caught in the browser and its code handed to the caller (the session
// stays: a code dies with it). Last, the passkey is removed on the account
// page.
//
// WebAuthn binds a passkey to the page's origin and RP ID, which must be a
// domain: the server's public URL, and so these pages, are at localhost.
//
// Run by tests/api/browser.rs. Environment:
//   AUTHGATE_PAGES_URL   the server's public URL (http://localhost:PORT)
//   PAGES_USERNAME, PAGES_PASSWORD
//   PAGES_AUTHORIZE      an authorization request's path and query
//   PAGES_REDIRECT_URI   its redirect URI (caught here)
//   SCREENSHOT_DIR       where to save a screenshot of each page (optional)
//   CHROMIUM             default /usr/bin/chromium
//
// Prints a line per step and last a JSON line `{"ok": true, ...}`. Any failed
// expectation ends it with `FAIL: ...` and exit status 1.

import { env, expect, failAt, launchChromium, shot, step, watchdog } from './lib.mjs';

const base = env('AUTHGATE_PAGES_URL').replace(/\/+$/, '');
const username = env('PAGES_USERNAME');
const password = env('PAGES_PASSWORD');
const authorizePath = env('PAGES_AUTHORIZE');
const redirectUri = env('PAGES_REDIRECT_URI');
const passkeyName = 'This laptop';

watchdog();

const heading = (page, name) => page.getByRole('heading', { name, exact: true }).waitFor();
const button = (page, name) => page.getByRole('button', { name, exact: true });

async function signInWithPassword(page) {
  await page.getByLabel('Username or email').fill(username);
  await page.getByLabel('Password', { exact: true }).fill(password);
  await button(page, 'Sign in').click();
}

async function signOut(page) {
  await page.goto(`${base}/account`);
  await heading(page, 'Your account');
  // The last "Sign out" is the page's own; the others are the sessions'.
  await button(page, 'Sign out').last().click();
  await heading(page, 'You are signed out');
}

let browser;
let page;
try {
  browser = await launchChromium();
  const context = await browser.newContext();
  page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  await cdp.send('WebAuthn.enable');
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2',
      transport: 'internal',
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });
  let returned = null;
  await page.route(`${redirectUri}**`, async (route) => {
    returned = route.request().url();
    await route.fulfill({ status: 200, contentType: 'text/html', body: '<p>Back at the app</p>' });
  });
  const violations = [];
  page.on('console', (m) => {
    if (/Content Security Policy/i.test(m.text())) violations.push(m.text());
  });
  page.on('pageerror', (e) => violations.push(`script error: ${e.message}`));

  step('signing in to the account page with the password');
  await page.goto(`${base}/account`);
  await heading(page, 'Sign in');
  // The button shows once the (deferred) script finds WebAuthn.
  await button(page, 'Sign in with a passkey').waitFor();
  await signInWithPassword(page);
  await heading(page, 'Your account');

  step('adding a passkey');
  await page.getByLabel('Passkey name').fill(passkeyName);
  await button(page, 'Add a passkey').click();
  await heading(page, 'Add a passkey');
  await button(page, 'Create passkey').waitFor();
  expect(!(await page.getByText('This browser cannot make passkeys.').isVisible()), 'WebAuthn is offered');
  await page.getByText(passkeyName, { exact: true }).waitFor();
  await shot(page, 'passkey');
  await button(page, 'Create passkey').click();
  await heading(page, 'Keep your recovery codes');
  const codes = await page.locator('ul.codes li').allTextContents();
  expect(codes.length === 10, `ten recovery codes, not ${codes.length}`);
  await shot(page, 'recovery-codes');
  const { credentials } = await cdp.send('WebAuthn.getCredentials', { authenticatorId });
  expect(credentials.length === 1 && credentials[0].isResidentCredential, 'a discoverable credential');
  await page.getByRole('link', { name: 'Back to your account' }).click();
  await heading(page, 'Your account');
  await page.getByText(`${passkeyName} (passkey)`).waitFor();

  step('the app is not set up from a session of one factor');
  await button(page, 'Set up an authenticator app').click();
  await page.getByText('Sign out and in again with your second step first.').waitFor();
  await signOut(page);

  step('the passkey as the second step of a password login');
  await page.goto(`${base}/account`);
  await heading(page, 'Sign in');
  await signInWithPassword(page);
  await heading(page, 'Two-step verification');
  await shot(page, 'mfa-passkey');
  await button(page, 'Use a passkey').click();
  await heading(page, 'Your account');

  step('the authenticator app enrolment, from a session of two factors');
  await button(page, 'Set up an authenticator app').click();
  await heading(page, 'Set up an authenticator app');
  expect(await page.locator('.qr svg').isVisible(), 'a QR code');
  const secret = (await page.locator('.secret code').textContent()).trim();
  expect(/^[A-Z2-7]{16,}=*$/.test(secret), `a base32 key, not ${secret}`);
  await shot(page, 'enrol');
  await signOut(page);

  step("signing in to an application's request with the passkey alone");
  await page.goto(`${base}${authorizePath}`);
  await heading(page, 'Sign in');
  await button(page, 'Sign in with a passkey').click();
  await heading(page, 'Allow access?');
  await button(page, 'Allow').click();
  await page.getByText('Back at the app').waitFor();
  expect(returned, 'the browser came back to the redirect URI');
  const back = new URL(returned);
  const code = back.searchParams.get('code');
  expect(code, `a code in ${returned}`);

  step('removing the passkey, still signed in');
  await page.goto(`${base}/account`);
  await heading(page, 'Your account');
  await page.getByRole('button', { name: `Remove ${passkeyName}` }).click();
  await page.getByText('The second step is removed.').waitFor();
  await page.getByText('Only your password protects this account.').waitFor();
  expect(violations.length === 0, `no CSP violations or script errors: ${violations.join('; ')}`);

  console.log(JSON.stringify({ ok: true, code, state: back.searchParams.get('state'), recovery_codes: codes }));
} catch (e) {
  await failAt(page, e);
} finally {
  if (browser) await browser.close();
}
