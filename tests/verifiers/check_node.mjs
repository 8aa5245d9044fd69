// Checks the Node example (examples/verify-node/verify.mjs) against a running
// authgate: a live token passes its middleware with the right sub; a tampered
// token, a token of another key and no token get 401.
//
//   node check_node.mjs   (verify.mjs beside it, jose in a node_modules above)
//
// Settings from the environment: AUTHGATE_URL, AUTHGATE_ISSUER,
// AUTHGATE_AUDIENCE, AUTHGATE_CHECK_ALG, AUTHGATE_CHECK_USER_TOKEN,
// AUTHGATE_CHECK_USER_SUB. Prints one line per check; exits 1 if any failed.
import { createServer } from "node:http";

import { SignJWT, decodeProtectedHeader, generateKeyPair } from "jose";

const env = process.env;
const alg = env.AUTHGATE_CHECK_ALG;
const token = env.AUTHGATE_CHECK_USER_TOKEN;
const sub = env.AUTHGATE_CHECK_USER_SUB;
if (!env.AUTHGATE_URL || !alg || !token || !sub) {
  console.error("set AUTHGATE_URL and AUTHGATE_CHECK_ALG, _USER_TOKEN, _USER_SUB");
  process.exit(2);
}
const { requireAuth } = await import("./verify.mjs");

// The example's middleware in front of a plain node:http handler.
const server = createServer((req, res) =>
  requireAuth(req, res, () => {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ sub: req.auth?.sub, roles: req.auth?.roles }));
  }),
);
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const base = `http://127.0.0.1:${server.address().port}`;
const call = (bearer) =>
  fetch(`${base}/whoami`, { headers: bearer ? { authorization: `Bearer ${bearer}` } : {} });

const decode = (part) => JSON.parse(Buffer.from(part, "base64url"));
const encode = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");

async function refused(bearer, what) {
  const res = await call(bearer);
  if (res.status !== 401) throw new Error(`${what}: expected 401, got ${res.status}`);
  if (res.headers.get("www-authenticate") !== "Bearer") {
    throw new Error(`${what}: WWW-Authenticate is ${res.headers.get("www-authenticate")}`);
  }
}

const checks = {
  "node example accepts a live token and returns its sub": async () => {
    const res = await call(token);
    if (res.status !== 200) throw new Error(`expected 200, got ${res.status}`);
    const body = await res.json();
    if (body.sub !== sub) throw new Error(`sub ${body.sub}, want ${sub}`);
  },
  "node example refuses a request without a token": () => refused(null, "no token"),
  "node example refuses a token whose payload changed by one character": () => {
    const [head, payload, signature] = token.split(".");
    const claims = decode(payload);
    claims.sub = claims.sub.slice(0, -1) + (claims.sub.endsWith("0") ? "1" : "0");
    return refused([head, encode(claims), signature].join("."), "tampered payload");
  },
  [`node example refuses an ${alg} token of another key under a published kid`]: async () => {
    const { kid } = decodeProtectedHeader(token);
    const { privateKey } = await generateKeyPair(alg);
    const forged = await new SignJWT(decode(token.split(".")[1]))
      .setProtectedHeader({ alg, kid, typ: "at+jwt" })
      .sign(privateKey);
    return refused(forged, "foreign key");
  },
};

let failed = 0;
for (const [name, check] of Object.entries(checks)) {
  try {
    await check();
    console.log(`ok   ${name}`);
  } catch (e) {
    failed += 1;
    console.log(`FAIL ${name}: ${e.message}`);
  }
}
server.close();
const total = Object.keys(checks).length;
console.log(
  failed ? `${failed} of ${total} node checks FAILED`
    : `all ${total} node checks ok (${alg})`,
);
process.exit(failed ? 1 : 0);
