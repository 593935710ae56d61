// A real OAuth 2.0 authorization server for the SMART Backend Services tests of the FHIR
// record source: panva's oidc-provider, only configured here. It authenticates clients by
// `private_key_jwt` (ES384 or RS384 client assertions checked against the keys registered
// in the clients file), grants `client_credentials`, and issues JWT access tokens for one
// resource server (the FHIR base), signed with its own key published at /jwks.
//
// Settings (environment):
//   OAUTH_PORT           loopback port to listen on (required)
//   OAUTH_CLIENTS        JSON file: an array of oidc-provider client metadata (required)
//   OAUTH_KEYS           JSON file of the server's private signing JWKS; created on the
//                        first start, reused by a restart (so tokens still verify)
//   OAUTH_RESOURCE       the resource server (FHIR base URL): the tokens' `aud` (required)
//   OAUTH_RESOURCE_SCOPES  scopes the resource server accepts; others asked are not granted
//   OAUTH_SCOPES         every scope the server knows (a client's `scope` limits its own)
//   OAUTH_TOKEN_TTL      access token lifetime in seconds (default 300)
//   OAUTH_SKEWED_TOKENS  the first N access tokens carry an `exp` an hour in the past while
//                        `expires_in` says they are fresh: a resource server whose clock
//                        runs ahead of this one (default 0)
//
// It prints `listening <issuer>` once ready, and one JSON line per issued token
// (`{"event":"token",...}`) and per refused token request (`{"event":"error",...}`);
// `GET /test-marker?id=X` prints a marker line (see below).

import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} is required`);
    process.exit(2);
  }
  return value;
}

const port = Number(required('OAUTH_PORT'));
const clients = JSON.parse(readFileSync(required('OAUTH_CLIENTS'), 'utf8'));
const resource = required('OAUTH_RESOURCE');
const resourceScopes = process.env.OAUTH_RESOURCE_SCOPES ?? 'system/*.rs';
const scopes = (process.env.OAUTH_SCOPES ?? resourceScopes).split(' ').filter(Boolean);
const ttl = Number(process.env.OAUTH_TOKEN_TTL ?? '300');
let skewed = Number(process.env.OAUTH_SKEWED_TOKENS ?? '0');

function signingKeys() {
  const file = process.env.OAUTH_KEYS;
  if (file && existsSync(file)) {
    return JSON.parse(readFileSync(file, 'utf8'));
  }
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = { ...privateKey.export({ format: 'jwk' }), alg: 'ES256', use: 'sig', kid: `as-${Date.now()}` };
  const jwks = { keys: [jwk] };
  if (file) {
    writeFileSync(file, JSON.stringify(jwks), { mode: 0o600 });
  }
  return jwks;
}

const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  clients,
  jwks: signingKeys(),
  scopes,
  clientAuthMethods: ['private_key_jwt'],
  // The server's one signing key is ES256 (client metadata defaults to RS256 otherwise).
  clientDefaults: { id_token_signed_response_alg: 'ES256' },
  enabledJWA: {
    clientAuthSigningAlgValues: ['ES384', 'RS384'],
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    revocation: { enabled: false },
    resourceIndicators: {
      enabled: true,
      // SMART Backend Services clients send no `resource`: every token is for the FHIR server.
      defaultResource: () => resource,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, indicator) => {
        if (indicator !== resource) {
          throw new Provider.errors.InvalidTarget();
        }
        return {
          scope: resourceScopes,
          audience: resource,
          accessTokenTTL: ttl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
  formats: {
    customizers: {
      jwt(_ctx, _token, jwt) {
        if (skewed > 0) {
          skewed -= 1;
          jwt.payload.exp = Math.floor(Date.now() / 1000) - 3600;
        }
        return jwt;
      },
    },
  },
  ttl: { ClientCredentials: ttl },
});

// A JWT access token is `issued` (nothing stored), an opaque one `saved`.
for (const name of ['client_credentials.issued', 'client_credentials.saved']) {
  provider.on(name, (token) => {
    console.log(JSON.stringify({ event: 'token', client: token.clientId, scope: token.scope ?? '' }));
  });
}
provider.on('grant.error', (ctx, err) => {
  console.log(JSON.stringify({
    event: 'error',
    client: ctx.oidc?.client?.clientId ?? null,
    error: err.error,
    description: err.error_description,
    detail: err.error_detail ?? err.cause?.message ?? null,
  }));
});

// `GET /test-marker?id=X` prints `{"event":"marker","id":"X"}`: once a test has read that
// line, it has read every line printed before it (token counts are then complete).
provider.use(async (ctx, next) => {
  if (ctx.path === '/test-marker') {
    console.log(JSON.stringify({ event: 'marker', id: String(ctx.query.id ?? '') }));
    ctx.body = 'ok';
    return;
  }
  await next();
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});
