// Browser check: passkeys in Chromium, against a CDP virtual authenticator.
//
// A user signs up and logs in with a password, registers a passkey
// (navigator.credentials.create), logs in with it alone and no username (a
// discoverable credential), and then, the passkey now being a second factor,
// completes a password login with it (403 mfa_required, then
// /auth/mfa/passkey/start and /auth/mfa/verify).
//
// WebAuthn binds a credential to an origin and RP ID, and the server accepts
// answers from its configured origin only (by default http://localhost:8010,
// RP ID localhost). So the test page is served at that origin by Playwright
// itself (page.route), and the page's API calls to that origin are forwarded
// to the real server at AUTHGATE_URL: the page and the API are same-origin,
// as behind a reverse proxy, and the server keeps its default settings.
//
// Run by tests/api/browser.rs (`.ci/run` installs its packages). By hand,
// with playwright-core installed outside the tree:
//   apt-get install -y chromium
//   mkdir -p target/ci-browser && cp tests/browser/package*.json target/ci-browser/
//   (cd target/ci-browser && npm ci)
//   authgate serve                   # default WebAuthn settings
//   AUTHGATE_URL=http://127.0.0.1:8080 NODE_PATH=target/ci-browser/node_modules \
//     node tests/browser/passkeys.mjs
// Optional: CHROMIUM (default /usr/bin/chromium), AUTHGATE_WEBAUTHN_ORIGIN
// (default http://localhost:8010: the server's setting; the page is served
// there), AUTHGATE_CHECK_PASSWORD (the new user's password).
//
// Prints a line per step, and last a JSON line `{"ok": true, ...}` with what
// was made (for the Rust test to check from its side). Any failed
// expectation ends it with `FAIL: ...` and exit status 1.

import { expect, fail, launchChromium, step, watchdog } from './lib.mjs';

const apiBase = (process.env.AUTHGATE_URL || '').replace(/\/+$/, '');
const pageOrigin = new URL(process.env.AUTHGATE_WEBAUTHN_ORIGIN || 'http://localhost:8010').origin;
const password = process.env.AUTHGATE_CHECK_PASSWORD || 'passkey check passphrase 7';
const passkeyName = 'Virtual authenticator';

if (!apiBase) fail('set AUTHGATE_URL to the server, e.g. http://127.0.0.1:8080');

watchdog();

// What the test page defines, as `window.authgate`: the API calls and the
// two WebAuthn calls, with the JSON conversions a browser client needs.
// Runs in the page, so it may use only what it defines itself.
function pageHelpers() {
  const b64url = {
    encode(buffer) {
      const bytes = new Uint8Array(buffer);
      let text = '';
      for (const byte of bytes) text += String.fromCharCode(byte);
      return btoa(text).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
    },
    decode(value) {
      const base64 = value.replace(/-/g, '+').replace(/_/g, '/');
      const text = atob(base64 + '='.repeat((4 - (base64.length % 4)) % 4));
      return Uint8Array.from(text, (c) => c.charCodeAt(0)).buffer;
    },
  };

  // The options' binary fields by hand, where the browser cannot parse
  // WebAuthn's JSON form itself.
  function creationOptions(json) {
    if (PublicKeyCredential.parseCreationOptionsFromJSON) {
      return PublicKeyCredential.parseCreationOptionsFromJSON(json);
    }
    return {
      ...json,
      challenge: b64url.decode(json.challenge),
      user: { ...json.user, id: b64url.decode(json.user.id) },
      excludeCredentials: (json.excludeCredentials || []).map((c) => ({ ...c, id: b64url.decode(c.id) })),
    };
  }

  function requestOptions(json) {
    if (PublicKeyCredential.parseRequestOptionsFromJSON) {
      return PublicKeyCredential.parseRequestOptionsFromJSON(json);
    }
    return {
      ...json,
      challenge: b64url.decode(json.challenge),
      allowCredentials: (json.allowCredentials || []).map((c) => ({ ...c, id: b64url.decode(c.id) })),
    };
  }

  // RegistrationResponseJSON and AuthenticationResponseJSON, by hand where
  // the browser has no toJSON.
  function credentialJson(credential) {
    if (typeof credential.toJSON === 'function') return credential.toJSON();
    const r = credential.response;
    const response = { clientDataJSON: b64url.encode(r.clientDataJSON) };
    if (r.attestationObject) {
      response.attestationObject = b64url.encode(r.attestationObject);
      response.transports = r.getTransports ? r.getTransports() : [];
    } else {
      response.authenticatorData = b64url.encode(r.authenticatorData);
      response.signature = b64url.encode(r.signature);
      if (r.userHandle) response.userHandle = b64url.encode(r.userHandle);
    }
    return {
      id: credential.id,
      rawId: b64url.encode(credential.rawId),
      type: credential.type,
      response,
      clientExtensionResults: credential.getClientExtensionResults(),
      authenticatorAttachment: credential.authenticatorAttachment,
    };
  }

  // An API call from the page: its status, content type and body.
  async function call(method, path, { body, token } = {}) {
    const headers = {};
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (token) headers.authorization = `Bearer ${token}`;
    const res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {
      // not JSON: the text is kept
    }
    return { status: res.status, contentType: res.headers.get('content-type'), json, text };
  }

  function claims(jwt) {
    return JSON.parse(new TextDecoder().decode(b64url.decode(jwt.split('.')[1])));
  }

  async function create(publicKey) {
    const credential = await navigator.credentials.create({ publicKey: creationOptions(publicKey) });
    return credentialJson(credential);
  }

  async function get(publicKey) {
    const credential = await navigator.credentials.get({ publicKey: requestOptions(publicKey) });
    return credentialJson(credential);
  }

  window.authgate = {
    call,
    claims,
    create,
    get,
    native: {
      parseJson: typeof PublicKeyCredential.parseCreationOptionsFromJSON === 'function',
      toJson: typeof PublicKeyCredential.prototype.toJSON === 'function',
    },
    secure: window.isSecureContext,
  };
}

const testPage = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>authgate passkeys</title></head>
<body><p>authgate passkey check</p>
<script>(${pageHelpers.toString()})();</script>
</body></html>`;

const browser = await launchChromium();

let exitCode = 0;
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  page.on('console', (msg) => {
    if (msg.type() === 'error') console.error(`page console: ${msg.text()}`);
  });
  page.on('pageerror', (err) => console.error(`page error: ${err.message}`));

  // The page at the WebAuthn origin; everything else there goes to the
  // server, method, headers (Origin included) and body as the page sent them.
  await page.route(`${pageOrigin}/**`, async (route) => {
    const url = new URL(route.request().url());
    if (url.pathname === '/passkey-test') {
      await route.fulfill({ status: 200, contentType: 'text/html; charset=utf-8', body: testPage });
      return;
    }
    try {
      const response = await route.fetch({ url: `${apiBase}${url.pathname}${url.search}` });
      await route.fulfill({ response });
    } catch (e) {
      console.error(`forwarding ${url.pathname} failed: ${e.message}`);
      await route.abort('connectionrefused');
    }
  });
  // Nothing leaves for the network but through the route above.
  await page.route((url) => url.origin !== pageOrigin, (route) => route.abort('blockedbyclient'));

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
  const credentials = async () => (await cdp.send('WebAuthn.getCredentials', { authenticatorId })).credentials;

  await page.goto(`${pageOrigin}/passkey-test`);
  const env = await page.evaluate(() => ({ secure: window.authgate.secure, ...window.authgate.native }));
  expect(env.secure, `${pageOrigin} is not a secure context: WebAuthn is unavailable there`);
  step(`page at ${pageOrigin}/passkey-test (API at ${apiBase}); ${(await browser.version())}; `
    + `parse*FromJSON: ${env.parseJson}, toJSON: ${env.toJson}`);

  const call = (method, apiPath, opts = {}) =>
    page.evaluate(([m, p, o]) => window.authgate.call(m, p, o), [method, apiPath, opts]);
  const claims = (jwt) => page.evaluate((t) => window.authgate.claims(t), jwt);
  // Each WebAuthn call in the page; its rejection (a DOMException) is
  // reported with its name.
  const webauthn = (which, publicKey) =>
    page.evaluate(async ([w, pk]) => {
      try {
        return { credential: await window.authgate[w](pk) };
      } catch (e) {
        return { error: `${e.name}: ${e.message}` };
      }
    }, [which, publicKey]);
  const answered = (res, status, what) =>
    expect(res.status === status, `${what} answered ${res.status}, not ${status}: ${res.text}`);

  // 1. A user, logged in with the password.
  const username = `pk-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  const signup = await call('POST', '/auth/signup', { body: { username, password } });
  answered(signup, 201, 'POST /auth/signup');
  const userId = signup.json.id;
  expect(typeof userId === 'string', `signup answer has no id: ${signup.text}`);
  const login = await call('POST', '/auth/login', { body: { username, password } });
  answered(login, 200, 'POST /auth/login');
  const passwordToken = login.json.access_token;
  step(`signed up and logged in as ${username} (${userId})`);

  // 2. Register a passkey.
  const regStart = await call('POST', '/users/me/passkeys/register/start', { token: passwordToken });
  answered(regStart, 200, 'POST /users/me/passkeys/register/start');
  const creation = regStart.json.publicKey;
  expect(regStart.json.challenge_id && creation && creation.challenge,
    `register/start answer lacks challenge_id or publicKey.challenge: ${regStart.text}`);
  expect(creation.rp && creation.rp.id === new URL(pageOrigin).hostname,
    `publicKey.rp.id is ${JSON.stringify(creation.rp)}, not ${new URL(pageOrigin).hostname}`);
  expect(creation.authenticatorSelection?.residentKey === 'required',
    `publicKey.authenticatorSelection asks for no discoverable credential: ${JSON.stringify(creation.authenticatorSelection)}`);
  const created = await webauthn('create', creation);
  expect(!created.error, `navigator.credentials.create failed: ${created.error}`);
  const credentialId = created.credential.id;
  const regFinish = await call('POST', '/users/me/passkeys/register/finish', {
    token: passwordToken,
    body: { challenge_id: regStart.json.challenge_id, credential: created.credential, name: passkeyName },
  });
  answered(regFinish, 201, 'POST /users/me/passkeys/register/finish');
  expect(regFinish.json.name === passkeyName, `registered passkey is named ${regFinish.json.name}`);
  expect(Array.isArray(regFinish.json.recovery_codes) && regFinish.json.recovery_codes.length === 10,
    `the first factor brought no ten recovery codes: ${regFinish.text}`);
  const passkeyId = regFinish.json.id;
  step(`registered passkey ${passkeyId} (credential ${credentialId}), with ${regFinish.json.recovery_codes.length} recovery codes`);

  // The credential lives on the authenticator, discoverable, for this RP.
  const afterRegistration = await credentials();
  expect(afterRegistration.length === 1, `the authenticator holds ${afterRegistration.length} credentials, not 1`);
  const stored = afterRegistration[0];
  expect(stored.isResidentCredential, 'the credential is not resident (discoverable)');
  expect(stored.rpId === new URL(pageOrigin).hostname, `the credential is for RP ${stored.rpId}`);
  expect(stored.credentialId.replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_') === credentialId,
    `the authenticator's credential ${stored.credentialId} is not the registered ${credentialId}`);
  const firstSignCount = stored.signCount;
  step(`authenticator: resident credential for ${stored.rpId}, signCount ${firstSignCount}`);

  // 3. Listed.
  const listed = await call('GET', '/users/me/passkeys', { token: passwordToken });
  answered(listed, 200, 'GET /users/me/passkeys');
  expect(listed.json.passkeys?.length === 1 && listed.json.passkeys[0].id === passkeyId,
    `GET /users/me/passkeys does not list just the new passkey: ${listed.text}`);
  expect(listed.json.passkeys[0].last_used_at === null, `a passkey never used has last_used_at: ${listed.text}`);
  step('listed by GET /users/me/passkeys');

  // 4. Log in with the passkey alone, naming nobody.
  const loginStart = await call('POST', '/auth/passkey/start', { body: {} });
  answered(loginStart, 200, 'POST /auth/passkey/start');
  const request = loginStart.json.publicKey;
  expect(!request.allowCredentials || request.allowCredentials.length === 0,
    `a login without a username lists credentials: ${JSON.stringify(request.allowCredentials)}`);
  const asserted = await webauthn('get', request);
  expect(!asserted.error, `navigator.credentials.get (discoverable) failed: ${asserted.error}`);
  expect(asserted.credential.id === credentialId, `the authenticator offered ${asserted.credential.id}`);
  const loginFinish = await call('POST', '/auth/passkey/finish', {
    body: { challenge_id: loginStart.json.challenge_id, credential: asserted.credential },
  });
  answered(loginFinish, 200, 'POST /auth/passkey/finish');
  const passkeyClaims = await claims(loginFinish.json.access_token);
  expect(passkeyClaims.sub === userId, `the passkey logged in ${passkeyClaims.sub}, not ${userId}`);
  expect(passkeyClaims.aal === 'aal2', `passkey login token has aal ${passkeyClaims.aal}`);
  expect(Array.isArray(passkeyClaims.amr) && passkeyClaims.amr.includes('hwk'),
    `passkey login token has amr ${JSON.stringify(passkeyClaims.amr)}`);
  expect(!passkeyClaims.amr.includes('pwd'), `passkey login token claims a password: ${JSON.stringify(passkeyClaims.amr)}`);
  expect(typeof loginFinish.json.refresh_token === 'string', 'passkey login answered no refresh token');
  const me = await call('GET', '/users/me', { token: loginFinish.json.access_token });
  answered(me, 200, 'GET /users/me with the passkey login token');
  expect(me.json.username === username, `GET /users/me is ${me.json.username}, not ${username}`);
  step(`discoverable passkey login: aal ${passkeyClaims.aal}, amr ${JSON.stringify(passkeyClaims.amr)}`);

  // The same challenge does not log in twice.
  const replay = await call('POST', '/auth/passkey/finish', {
    body: { challenge_id: loginStart.json.challenge_id, credential: asserted.credential },
  });
  expect(replay.status >= 400 && replay.status < 500, `a replayed login answered ${replay.status}: ${replay.text}`);
  step(`the same answer again: ${replay.status}`);

  // 5. The password alone is no longer enough.
  const refused = await call('POST', '/auth/login', { body: { username, password } });
  answered(refused, 403, 'POST /auth/login after registering a passkey');
  expect(refused.contentType === 'application/problem+json', `403 content type ${refused.contentType}`);
  expect(refused.json.code === 'mfa_required', `403 code ${refused.json.code}: ${refused.text}`);
  expect(typeof refused.json.mfa_token === 'string', `403 mfa_required without mfa_token: ${refused.text}`);
  expect(Array.isArray(refused.json.factor_types) && refused.json.factor_types.includes('passkey'),
    `factor_types ${JSON.stringify(refused.json.factor_types)} lacks passkey`);
  step(`password login: 403 mfa_required, factor_types ${JSON.stringify(refused.json.factor_types)}`);

  // 6. The passkey as the second factor.
  const mfaStart = await call('POST', '/auth/mfa/passkey/start', { body: { mfa_token: refused.json.mfa_token } });
  answered(mfaStart, 200, 'POST /auth/mfa/passkey/start');
  const allowed = (mfaStart.json.publicKey.allowCredentials || []).map((c) => c.id);
  expect(allowed.length === 1 && allowed[0] === credentialId,
    `second factor options allow ${JSON.stringify(allowed)}, not [${credentialId}]`);
  const second = await webauthn('get', mfaStart.json.publicKey);
  expect(!second.error, `navigator.credentials.get (second factor) failed: ${second.error}`);
  const verified = await call('POST', '/auth/mfa/verify', {
    body: { mfa_token: refused.json.mfa_token, challenge_id: mfaStart.json.challenge_id, credential: second.credential },
  });
  answered(verified, 200, 'POST /auth/mfa/verify');
  const mfaClaims = await claims(verified.json.access_token);
  expect(mfaClaims.sub === userId, `the second step logged in ${mfaClaims.sub}, not ${userId}`);
  expect(mfaClaims.aal === 'aal2', `second step token has aal ${mfaClaims.aal}`);
  for (const method of ['pwd', 'hwk', 'mfa']) {
    expect(mfaClaims.amr?.includes(method), `second step token has amr ${JSON.stringify(mfaClaims.amr)}, no ${method}`);
  }
  step(`password + passkey login: aal ${mfaClaims.aal}, amr ${JSON.stringify(mfaClaims.amr)}`);

  // 7. The authenticator signed twice, and the server saw it used.
  const afterLogins = await credentials();
  expect(afterLogins.length === 1, `the authenticator holds ${afterLogins.length} credentials after the logins`);
  const lastSignCount = afterLogins[0].signCount;
  expect(lastSignCount >= firstSignCount + 2,
    `signCount went from ${firstSignCount} to ${lastSignCount} over two assertions`);
  const relisted = await call('GET', '/users/me/passkeys', { token: verified.json.access_token });
  answered(relisted, 200, 'GET /users/me/passkeys after the logins');
  expect(relisted.json.passkeys?.length === 1 && relisted.json.passkeys[0].last_used_at,
    `the passkey shows no last_used_at after logins: ${relisted.text}`);
  step(`signCount ${firstSignCount} -> ${lastSignCount}; last_used_at ${relisted.json.passkeys[0].last_used_at}`);

  console.log('OK: passkey registered, discoverable login and second factor work in Chromium');
  console.log(JSON.stringify({
    ok: true,
    username,
    user_id: userId,
    passkey_id: passkeyId,
    credential_id: credentialId,
    sign_count: lastSignCount,
    access_token: verified.json.access_token,
  }));
} catch (e) {
  console.error(`FAIL: ${e.message}`);
  exitCode = 1;
} finally {
  await browser.close();
}
process.exit(exitCode);
