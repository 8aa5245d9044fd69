// Accepting authgate access tokens in a Node service, with jose.
import { createRemoteJWKSet, jwtVerify } from "jose";

const AUTHGATE_URL = (process.env.AUTHGATE_URL ?? "http://127.0.0.1:8010").replace(/\/+$/, "");
const ISSUER = process.env.AUTHGATE_ISSUER ?? AUTHGATE_URL;
const AUDIENCE = process.env.AUTHGATE_AUDIENCE ?? "authgate";

// Keeps the key set 5 minutes; a token with an unknown kid refetches it.
const JWKS = createRemoteJWKSet(new URL(`${AUTHGATE_URL}/.well-known/jwks.json`), {
  cacheMaxAge: 300_000,
});

/** The claims of the request's verified access token; rejects otherwise. */
export async function verifyRequest(req) {
  const [scheme, token] = (req.headers.authorization ?? "").split(" ");
  if (scheme?.toLowerCase() !== "bearer" || !token) throw new Error("no bearer token");
  const { payload } = await jwtVerify(token, JWKS, {
    issuer: ISSUER,
    audience: AUDIENCE,
    typ: "at+jwt",
    algorithms: ["EdDSA", "ES256", "RS256"],
    requiredClaims: ["exp", "iat", "sub"],
  });
  return payload;
}

/** Middleware for Express or plain `node:http`: sets `req.auth`, or answers 401. */
export function requireAuth(req, res, next) {
  verifyRequest(req).then(
    (claims) => {
      req.auth = claims;
      next();
    },
    () => {
      res.writeHead(401, { "WWW-Authenticate": "Bearer" }).end();
    },
  );
}
