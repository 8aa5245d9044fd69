// Browser check: the OpenID Connect code flow through the hosted pages.
//
// A real relying party library (openid-client) discovers the provider,
// builds the authorization request (PKCE S256, state, nonce), and Chromium,
// driven by Playwright, follows it: the login page, the second step (a TOTP
// code), the consent page, Allow. The redirect back to the client is caught
// in the browser; openid-client then exchanges the code, checks the ID token
// against the published keys (signature, issuer, audience, nonce, the RFC
// 9207 `iss` of the redirect), and fetches userinfo.
//
// Run by tests/api/browser.rs, which starts the server with its public URL
// at its own address, registers the client and enrolls the user's
// authenticator app. Environment:
//   AUTHGATE_URL            the server, which is also the issuer
//   OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, OIDC_REDIRECT_URI
//   OIDC_USERNAME, OIDC_PASSWORD
//   OIDC_TOTP_SECRET        base32; OIDC_TOTP_OFFSET: the server clock's
//                           lead over this one, in seconds
//   OIDC_VERIFY_TOKEN, OIDC_EMAIL_TOKEN  the tokens of a verification and
//                           an address change's link mailed to the user
//   OIDC_RESET_TOKEN        a reset link's, mailed to another user (each of
//                           the two ends the other's link)
//   SCREENSHOT_DIR          where to save a screenshot of each page (optional)
//   CHROMIUM                default /usr/bin/chromium
//
// Prints a line per step and last a JSON line `{"ok": true, ...}`. Any failed
// expectation ends it with `FAIL: ...` and exit status 1.

import { createHmac } from 'node:crypto';

import { env, expect, failAt, launchChromium, load, shot, step, watchdog } from './lib.mjs';

const issuer = env('AUTHGATE_URL').replace(/\/+$/, '');
const clientId = env('OIDC_CLIENT_ID');
const clientSecret = env('OIDC_CLIENT_SECRET');
const redirectUri = env('OIDC_REDIRECT_URI');
const username = env('OIDC_USERNAME');
const password = env('OIDC_PASSWORD');
const totpSecret = env('OIDC_TOTP_SECRET');
const totpOffset = Number(process.env.OIDC_TOTP_OFFSET || '0');
const verifyToken = env('OIDC_VERIFY_TOKEN');
const resetToken = env('OIDC_RESET_TOKEN');
const emailToken = env('OIDC_EMAIL_TOKEN');
const newPassword = 'a brand new passphrase 42';

watchdog();
const client = await load('openid-client');

/// RFC 6238 with SHA-1, 6 digits, 30 s steps, at the server's time.
function totp(secret, offsetSeconds) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of secret.replace(/=+$/, '').toUpperCase()) {
    bits += alphabet.indexOf(c).toString(2).padStart(5, '0');
  }
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const counter = Math.floor((Date.now() / 1000 + offsetSeconds) / 30);
  const message = Buffer.alloc(8);
  message.writeBigUInt64BE(BigInt(counter));
  const mac = createHmac('sha1', key).update(message).digest();
  const at = mac[mac.length - 1] & 0x0f;
  const value = (mac.readUInt32BE(at) & 0x7fffffff) % 1_000_000;
  return String(value).padStart(6, '0');
}

let browser;
let page;
try {
  step(`discovery at ${issuer}`);
  const config = await client.discovery(new URL(issuer), clientId, clientSecret, undefined, {
    execute: [client.allowInsecureRequests],
  });
  const verifier = client.randomPKCECodeVerifier();
  const state = client.randomState();
  const nonce = client.randomNonce();
  const authorizeUrl = client.buildAuthorizationUrl(config, {
    redirect_uri: redirectUri,
    scope: 'openid email profile',
    code_challenge: await client.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    state,
    nonce,
  });

  browser = await launchChromium();
  page = await browser.newPage();
  let returned = null;
  await page.route(`${redirectUri}**`, async (route) => {
    returned = route.request().url();
    await route.fulfill({ status: 200, contentType: 'text/html', body: '<p>Back at the app</p>' });
  });
  const violations = [];
  page.on('console', (m) => {
    if (/Content Security Policy/i.test(m.text())) violations.push(m.text());
  });

  step('the login page');
  await page.goto(authorizeUrl.href);
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  await shot(page, 'login');
  await page.getByLabel('Username or email').fill(username);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();

  step('the second step');
  await page.getByLabel('Code').waitFor();
  await shot(page, 'mfa');
  await page.getByLabel('Code').fill(totp(totpSecret, totpOffset));
  await page.getByRole('button', { name: 'Verify' }).click();

  step('the consent page');
  await page.getByRole('button', { name: 'Allow' }).waitFor();
  expect(await page.getByRole('button', { name: 'Deny' }).isVisible(), 'a Deny button');
  await shot(page, 'consent');
  await page.getByRole('button', { name: 'Allow' }).click();
  await page.getByText('Back at the app').waitFor();
  expect(returned, 'the browser came back to the redirect URI');
  expect(violations.length === 0, `no CSP violations: ${violations.join('; ')}`);

  step('the code exchange and the ID token');
  const tokens = await client.authorizationCodeGrant(config, new URL(returned), {
    pkceCodeVerifier: verifier,
    expectedState: state,
    expectedNonce: nonce,
  });
  const claims = tokens.claims();
  expect(claims.aud === clientId, `aud ${claims.aud}`);
  expect(claims.acr === 'aal2', `acr ${claims.acr}`);
  step('userinfo');
  const info = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
  expect(info.preferred_username === username, `preferred_username ${info.preferred_username}`);

  step('the account page');
  await page.goto(`${issuer}/account`);
  await page.getByRole('heading', { name: 'Your account' }).waitFor();
  expect(await page.getByText('this browser').isVisible(), 'this session is listed');
  expect(await page.getByRole('button', { name: 'Change password' }).isVisible(), 'a password form');
  await shot(page, 'account');

  step('the verification link');
  await page.goto(`${issuer}/auth/verify-email?token=${verifyToken}`);
  await page.getByRole('button', { name: 'Verify my address' }).waitFor();
  await shot(page, 'verify-email');
  await page.getByRole('button', { name: 'Verify my address' }).click();
  await page.getByRole('heading', { name: 'Address verified' }).waitFor();
  await shot(page, 'verified');

  step('the reset link');
  await page.goto(`${issuer}/auth/password/reset?token=${resetToken}`);
  await page.getByLabel('New password', { exact: true }).waitFor();
  await shot(page, 'reset-password');

  step('the address change link');
  await page.goto(`${issuer}/auth/email/confirm?token=${emailToken}`);
  await page.getByRole('button', { name: 'Confirm the new address' }).waitFor();
  await shot(page, 'confirm-email');
  await page.getByRole('button', { name: 'Confirm the new address' }).click();
  await page.getByRole('heading', { name: 'Address changed' }).waitFor();
  await page.goto(`${issuer}/account`);
  await page.getByText('grace.new@example.com').waitFor();

  step('a request that cannot go back');
  await page.goto(`${issuer}/oauth/authorize?response_type=code&client_id=unknown-client`);
  await page.getByRole('heading', { name: 'This request cannot be completed' }).waitFor();
  await shot(page, 'refused');

  step('signing out');
  await page.goto(`${issuer}/oauth/logout`);
  await page.getByRole('button', { name: 'Sign out' }).waitFor();
  await shot(page, 'logout');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'You are signed out' }).waitFor();
  await shot(page, 'signed-out');
  await page.goto(`${issuer}/account`);
  await page.getByLabel('Username or email').waitFor();

  step('a new password through the reset link');
  await page.goto(`${issuer}/auth/password/reset?token=${resetToken}`);
  await page.getByLabel('New password', { exact: true }).fill(newPassword);
  await page.getByLabel('Repeat the new password').fill(newPassword);
  await page.getByRole('button', { name: 'Set password' }).click();
  await page.getByRole('heading', { name: 'Password set' }).waitFor();
  await shot(page, 'password-set');
  expect(violations.length === 0, `no CSP violations: ${violations.join('; ')}`);

  console.log(
    JSON.stringify({
      ok: true,
      new_password: newPassword,
      sub: claims.sub,
      email: claims.email,
      amr: claims.amr,
      acr: claims.acr,
      access_token: tokens.access_token,
    }),
  );
} catch (e) {
  await failAt(page, e);
} finally {
  if (browser) await browser.close();
}
