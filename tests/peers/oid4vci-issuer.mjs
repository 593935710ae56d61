// An independent OpenID4VCI 1.0 credential issuer for fedgate's wallet:
// @openid4vc/openid4vci's Openid4vciIssuer (metadata, offer, credential request, key proof)
// with @openid4vc/oauth2's Oauth2AuthorizationServer (pre-authorized code token endpoint,
// JWT access tokens) and Oauth2ResourceServer (the credential endpoint's bearer check);
// the credential is an SD-JWT VC made with @sd-jwt/sd-jwt-vc, its status a Token Status
// List made with @sd-jwt/jwt-status-list. Versions pinned in package-lock.json. Usage:
//   node oid4vci-issuer.mjs    with one line on stdin: {"did": "did:web:…", "subject": {…}}
// (the issuer's did:web, and the claims of the ClinicianPrivilegeCredential it issues; with
// "asMetadataIssuer", its authorization server's metadata names that issuer instead of its
// own: a mix-up a wallet must refuse, RFC 8414 §3.3).
// Serves on loopback (plain http):
//   /.well-known/did.json                        the issuer's did:web document (P-256)
//   /.well-known/openid-credential-issuer        credential issuer metadata
//   /.well-known/oauth-authorization-server/as   its authorization server's (issuer …/as)
//   /as/token, /as/jwks                          token endpoint, access token keys
//   /nonce, /credential                          nonce and credential endpoints
//   /offer                                       the offer by reference
//   /status/1                                    the Token Status List (statuslist+jwt)
// Prints one line {credentialIssuer, did, jwk, vct, offer, offerByReference, txCode}, then
// one line {issued, holder, configurationId} per credential issued and {refused, status,
// error} per refused request. Serves until stdin closes (or 120 s pass), then prints
// {served: ["METHOD /path", …]} (every request, in order) and exits.
import crypto from 'node:crypto';
import http from 'node:http';
import readline from 'node:readline';
import { Openid4vciIssuer, Openid4vciVersion } from '@openid4vc/openid4vci';
import {
  Oauth2AuthorizationServer,
  Oauth2ResourceServer,
  Oauth2ServerErrorResponseError,
  Oauth2ResourceUnauthorizedError,
  preAuthorizedCodeGrantIdentifier,
} from '@openid4vc/oauth2';
import { setGlobalConfig } from '@openid4vc/utils';
import { SDJwtVcInstance } from '@sd-jwt/sd-jwt-vc';
import { ES256, digest, generateSalt } from '@sd-jwt/crypto-nodejs';
import { StatusList, createHeaderAndPayload } from '@sd-jwt/jwt-status-list';
import { decode as base58 } from 'base58-universal';
import * as jose from 'jose';

// The wallet under test fetches from loopback over plain http.
setGlobalConfig({ allowInsecureUrls: true });

// The first line of stdin is the input; the stream then stays open as the lifetime signal.
const lines = readline.createInterface({ input: process.stdin });
const input = JSON.parse(await new Promise((resolve) => lines.once('line', resolve)));

const print = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);

// Keys: the issuer's (credentials and status list, named by its did:web) and the
// authorization server's (access tokens, published at its jwks_uri).
const issuerKeys = await jose.generateKeyPair('ES256', { extractable: true });
const issuerJwk = { ...(await jose.exportJWK(issuerKeys.publicKey)), alg: 'ES256' };
const issuerPrivateJwk = await jose.exportJWK(issuerKeys.privateKey);
const asKeys = await jose.generateKeyPair('ES256', { extractable: true });
const asJwk = { ...(await jose.exportJWK(asKeys.publicKey)), kid: 'as-1', use: 'sig', alg: 'ES256' };
const did = input.did;
const issuerKid = `${did}#key-1`;

const server = http.createServer();
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const base = `http://127.0.0.1:${server.address().port}`;
const asIssuer = `${base}/as`;
const configurationId = 'ClinicianPrivilegeCredential_sd_jwt';
const vct = `${base}/vct/ClinicianPrivilegeCredential`;
const statusUri = `${base}/status/1`;

// A did:key's public JWK (Ed25519, or a compressed P-256 point).
function didKeyJwk(didUrl) {
  const id = didUrl.split('#')[0].slice('did:key:'.length);
  if (!id.startsWith('z')) throw new Error('not a base58btc did:key');
  const bytes = base58(id.slice(1));
  if (bytes[0] === 0xed && bytes[1] === 0x01) {
    return { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(bytes.slice(2)).toString('base64url') };
  }
  if (bytes[0] === 0x80 && bytes[1] === 0x24) {
    const spki = Buffer.concat([
      Buffer.from('3039301306072a8648ce3d020106082a8648ce3d030107032200', 'hex'),
      Buffer.from(bytes.slice(2)),
    ]);
    return crypto.createPublicKey({ key: spki, format: 'der', type: 'spki' }).export({ format: 'jwk' });
  }
  throw new Error('a did:key of another key type than Ed25519 or P-256');
}

const callbacks = {
  fetch,
  hash: (data, alg) => new Uint8Array(crypto.createHash(alg.replace('-', '').toLowerCase()).update(data).digest()),
  generateRandom: (n) => new Uint8Array(crypto.randomBytes(n)),
  // Only access tokens are signed through the libraries' callback.
  signJwt: async (signer, { header, payload }) => {
    if (signer.method !== 'jwk' || signer.publicJwk.x !== asJwk.x) throw new Error('unknown signer');
    const jwt = await new jose.SignJWT(payload)
      .setProtectedHeader({ ...header, kid: asJwk.kid })
      .sign(asKeys.privateKey);
    return { jwt, signerJwk: asJwk };
  },
  verifyJwt: async (signer, { compact }) => {
    let publicJwk;
    if (signer.method === 'jwk') publicJwk = signer.publicJwk;
    else if (signer.method === 'did' && signer.didUrl.startsWith('did:key:')) publicJwk = didKeyJwk(signer.didUrl);
    else return { verified: false };
    try {
      await jose.compactVerify(compact, await jose.importJWK(publicJwk, signer.alg), { algorithms: [signer.alg] });
      return { verified: true, signerJwk: publicJwk };
    } catch {
      return { verified: false, signerJwk: publicJwk };
    }
  },
};

const issuer = new Openid4vciIssuer({ callbacks });
const authorizationServer = new Oauth2AuthorizationServer({ callbacks });
const resourceServer = new Oauth2ResourceServer({ callbacks });

const asMetadata = authorizationServer.createAuthorizationServerMetadata({
  issuer: asIssuer,
  token_endpoint: `${asIssuer}/token`,
  jwks_uri: `${asIssuer}/jwks`,
  grant_types_supported: [preAuthorizedCodeGrantIdentifier],
  'pre-authorized_grant_anonymous_access_supported': true,
});
const credentialIssuerMetadata = issuer.createCredentialIssuerMetadata({
  credential_issuer: base,
  authorization_servers: [asIssuer],
  credential_endpoint: `${base}/credential`,
  nonce_endpoint: `${base}/nonce`,
  display: [{ name: 'Independent test issuer', locale: 'en' }],
  credential_configurations_supported: {
    [configurationId]: {
      format: 'dc+sd-jwt',
      vct,
      cryptographic_binding_methods_supported: ['did:key', 'jwk'],
      credential_signing_alg_values_supported: ['ES256'],
      proof_types_supported: { jwt: { proof_signing_alg_values_supported: ['EdDSA', 'ES256'] } },
      credential_metadata: { display: [{ name: 'Clinician privilege', locale: 'en' }] },
    },
  },
});
const issuerMetadata = {
  originalDraftVersion: Openid4vciVersion.V1,
  credentialIssuer: credentialIssuerMetadata,
  authorizationServers: [asMetadata],
  knownCredentialConfigurations: issuer.getKnownCredentialConfigurationsSupported(credentialIssuerMetadata),
};

// One offer: a pre-authorized code with a six-digit transaction code.
const txCode = String(crypto.randomInt(0, 1_000_000)).padStart(6, '0');
const { credentialOffer, credentialOfferObject } = await issuer.createCredentialOffer({
  issuerMetadata,
  credentialConfigurationIds: [configurationId],
  grants: {
    [preAuthorizedCodeGrantIdentifier]: {
      tx_code: { input_mode: 'numeric', length: 6, description: 'The code the office told you' },
    },
  },
});
const preAuthorizedCode = credentialOfferObject.grants[preAuthorizedCodeGrantIdentifier]['pre-authorized_code'];
const { credentialOffer: offerByReference } = await issuer.createCredentialOffer({
  issuerMetadata,
  credentialConfigurationIds: [configurationId],
  grants: credentialOfferObject.grants,
  credentialOfferUri: `${base}/offer`,
});

const state = { codeRedeemed: false, nonces: new Map(), spentTokens: new Set(), nextIdx: 3 };
const statusList = new StatusList(new Array(1024).fill(0), 1);
const sdjwt = new SDJwtVcInstance({
  hasher: digest,
  hashAlg: 'sha-256',
  saltGenerator: generateSalt,
  signer: await ES256.getSigner(issuerPrivateJwk),
  signAlg: ES256.alg,
});

const didDocument = {
  '@context': ['https://www.w3.org/ns/did/v1', 'https://w3id.org/security/suites/jws-2020/v1'],
  id: did,
  verificationMethod: [{ id: issuerKid, type: 'JsonWebKey2020', controller: did, publicKeyJwk: issuerJwk }],
  assertionMethod: [issuerKid],
};

async function statusListJwt() {
  const now = Math.floor(Date.now() / 1000);
  const { header, payload } = createHeaderAndPayload(
    statusList,
    { iss: did, sub: statusUri, iat: now, exp: now + 3600 },
    { alg: 'ES256', kid: issuerKid },
  );
  return new jose.CompactSign(new TextEncoder().encode(JSON.stringify(payload)))
    .setProtectedHeader(header)
    .sign(issuerKeys.privateKey);
}

async function readBody(req) {
  let body = '';
  for await (const chunk of req) body += chunk;
  return body;
}

const requestLike = (req) => ({
  method: req.method,
  url: `${base}${req.url}`,
  headers: new Headers(Object.entries(req.headers).map(([k, v]) => [k, String(v)])),
});

async function token(req) {
  const form = Object.fromEntries(new URLSearchParams(await readBody(req)));
  const parsed = authorizationServer.parseAccessTokenRequest({ request: requestLike(req), accessTokenRequest: form });
  if (state.codeRedeemed) {
    throw new Oauth2ServerErrorResponseError({ error: 'invalid_grant', error_description: 'the pre-authorized code was used' });
  }
  await authorizationServer.verifyPreAuthorizedCodeAccessTokenRequest({
    authorizationServerMetadata: asMetadata,
    grant: parsed.grant,
    accessTokenRequest: parsed.accessTokenRequest,
    request: requestLike(req),
    expectedPreAuthorizedCode: preAuthorizedCode,
    expectedTxCode: txCode,
  });
  state.codeRedeemed = true;
  return authorizationServer.createAccessTokenResponse({
    authorizationServer: asIssuer,
    audience: base,
    subject: 'pre-authorized-holder',
    expiresInSeconds: 300,
    signer: { method: 'jwk', publicJwk: asJwk, alg: 'ES256' },
  });
}

function nonce() {
  const cNonce = crypto.randomBytes(16).toString('base64url');
  state.nonces.set(cNonce, new Date(Date.now() + 300_000));
  return issuer.createNonceResponse({ cNonce, cNonceExpiresIn: 300 });
}

async function credential(req) {
  const body = await readBody(req);
  const { tokenPayload } = await resourceServer.verifyResourceRequest({
    request: requestLike(req),
    resourceServer: base,
    authorizationServers: [asMetadata],
    allowedAuthenticationSchemes: ['Bearer'],
  });
  if (state.spentTokens.has(tokenPayload.jti)) {
    throw new Oauth2ResourceUnauthorizedError('spent', { scheme: 'Bearer', error: 'invalid_token' });
  }
  const credentialRequest = issuer.parseCredentialRequest({ issuerMetadata, credentialRequest: JSON.parse(body) });
  const jwts = credentialRequest.proofs?.jwt ?? [];
  if (credentialRequest.credentialConfigurationId !== configurationId || jwts.length !== 1) {
    throw new Oauth2ServerErrorResponseError({ error: 'invalid_credential_request', error_description: 'one jwt proof for the offered configuration' });
  }
  const claimedNonce = jose.decodeJwt(jwts[0]).nonce;
  const nonceExpiresAt = state.nonces.get(claimedNonce);
  if (!nonceExpiresAt) {
    throw new Oauth2ServerErrorResponseError({ error: 'invalid_nonce', error_description: 'not a c_nonce of this issuer' });
  }
  state.nonces.delete(claimedNonce);
  let proof;
  try {
    proof = await issuer.verifyCredentialRequestJwtProof({
      issuerMetadata,
      jwt: jwts[0],
      expectedNonce: claimedNonce,
      nonceExpiresAt,
    });
  } catch (e) {
    throw new Oauth2ServerErrorResponseError({ error: 'invalid_proof', error_description: String(e?.message ?? e) });
  }
  // The holder: the DID of a did:key `kid`, or the did:jwk of a `jwk` header.
  const holderJwk = proof.signer.publicJwk;
  const holder = proof.signer.method === 'did'
    ? proof.signer.didUrl.split('#')[0]
    : `did:jwk:${Buffer.from(JSON.stringify(holderJwk)).toString('base64url')}`;
  const { kty, crv, x, y } = holderJwk;
  const now = Math.floor(Date.now() / 1000);
  const idx = state.nextIdx++;
  const subject = input.subject;
  const issued = await sdjwt.issue(
    {
      iss: did,
      sub: holder,
      jti: `urn:uuid:${crypto.randomUUID()}`,
      iat: now,
      nbf: now - 60,
      exp: now + 86400,
      vct,
      cnf: { jwk: y ? { kty, crv, x, y } : { kty, crv, x } },
      status: { status_list: { idx, uri: statusUri } },
      ...subject,
    },
    { _sd: Object.keys(subject) },
    { header: { kid: issuerKid } },
  );
  state.spentTokens.add(tokenPayload.jti);
  print({ issued, holder, configurationId: credentialRequest.credentialConfigurationId });
  return issuer.createCredentialResponse({ credentialRequest, credentials: [{ credential: issued }] });
}

const json = (res, status, body, headers = {}) => {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers });
  res.end(JSON.stringify(body));
};

const served = [];
server.on('request', async (req, res) => {
  const route = `${req.method} ${req.url}`;
  served.push(route);
  try {
    switch (route) {
      case 'GET /.well-known/did.json': return json(res, 200, didDocument);
      case 'GET /.well-known/openid-credential-issuer': return json(res, 200, credentialIssuerMetadata);
      case 'GET /.well-known/oauth-authorization-server/as':
        return json(res, 200, { ...asMetadata, issuer: input.asMetadataIssuer ?? asMetadata.issuer });
      case 'GET /as/jwks': return json(res, 200, { keys: [asJwk] });
      case 'GET /offer': return json(res, 200, credentialOfferObject);
      case 'POST /as/token': return json(res, 200, await token(req));
      case 'POST /nonce': return json(res, 200, nonce());
      case 'POST /credential': return json(res, 200, await credential(req));
      case 'GET /status/1':
        res.writeHead(200, { 'content-type': 'application/statuslist+jwt' });
        return res.end(await statusListJwt());
      default: return json(res, 404, { error: 'not_found' });
    }
  } catch (e) {
    if (e instanceof Oauth2ResourceUnauthorizedError) {
      print({ refused: route, status: 401, error: 'invalid_token' });
      return json(res, 401, { error: 'invalid_token' }, { 'www-authenticate': e.toHeaderValue() });
    }
    if (e instanceof Oauth2ServerErrorResponseError) {
      print({ refused: route, status: 400, error: e.errorResponse.error });
      return json(res, 400, e.errorResponse);
    }
    print({ refused: route, status: 500, error: String(e?.message ?? e) });
    return json(res, 500, { error: 'server_error' });
  }
});

print({
  credentialIssuer: base,
  did,
  jwk: issuerJwk,
  vct,
  offer: credentialOffer,
  offerByReference,
  txCode,
});

const stop = () => {
  print({ served });
  server.close();
  process.exit(0);
};
lines.on('close', stop);
setTimeout(stop, 120_000).unref();
