// OpenID4VP 1.0 interop the other way: @openid4vc/openid4vp's verifier role
// (Openid4vpVerifier) asks fedgate's wallet. It makes a did:key, signs a request object by
// reference (client_id decentralized_identifier:<did:key>, DCQL for a fedgate privilege,
// direct_post or direct_post.jwt), serves it on loopback, prints {"did", "url"} as one
// line, then takes the wallet's response, parses and validates it with the library (which
// decrypts a direct_post.jwt response with jose), prints what it got as a second line and
// exits.
//
// Reads on stdin {nonce, format?, responseMode?, vct?, issuerJwk?}:
//   format "jwt_vc_json" (the default): asks for the privilege as a VC-JOSE JWT; the
//     presentation is handed back as it came, for the caller to verify;
//   format "dc+sd-jwt": asks for the privilege as an SD-JWT VC of type `vct` with only its
//     role and organization, and verifies the presentation with @sd-jwt/sd-jwt-vc: the
//     issuer's signature with `issuerJwk`, the status from the issuer's Token Status List,
//     the key binding JWT (signed by the credential's cnf key, with the nonce sent, sd_hash
//     over the presentation) and its aud (the client_id sent); prints {sdJwt: {verified,
//     claims, disclosed, kb, ...}} or {sdJwt: {verified: false, error}};
//   responseMode "direct_post" (the default) or "direct_post.jwt": the response encrypted
//     to an ephemeral P-256 key (ECDH-ES) in client_metadata.jwks, with the content
//     encryption `enc` (A128GCM, the default, is not listed; another is listed alone in
//     encrypted_response_enc_values_supported, and only it is accepted).
import { Openid4vpVerifier } from '@openid4vc/openid4vp';
import { SDJwtVcInstance } from '@sd-jwt/sd-jwt-vc';
import { ES256, digest } from '@sd-jwt/crypto-nodejs';
import { setGlobalConfig } from '@openid4vc/utils';
import * as jose from 'jose';
import { encode as base58 } from 'base58-universal';
import { createHash, createPublicKey, verify as verifySignature } from 'node:crypto';
import http from 'node:http';

setGlobalConfig({ allowInsecureUrls: true });
const input = JSON.parse(await new Promise((resolve) => {
  let s = '';
  process.stdin.on('data', (d) => { s += d; });
  process.stdin.on('end', () => resolve(s));
}));
const format = input.format ?? 'jwt_vc_json';
const responseMode = input.responseMode ?? 'direct_post';
const enc = input.enc ?? 'A128GCM';

const { publicKey, privateKey } = await jose.generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true });
const publicJwk = await jose.exportJWK(publicKey);
const raw = Buffer.from(publicJwk.x, 'base64url');
const did = `did:key:z${base58(Uint8Array.from([0xed, 0x01, ...raw]))}`;
const kid = `${did}#${did.slice('did:key:'.length)}`;

const callbacks = {
  hash: (data, alg) => new Uint8Array(createHash(alg.replace('-', '').toLowerCase()).update(data).digest()),
  signJwt: async (signer, jwt) => {
    const payload = new TextEncoder().encode(JSON.stringify(jwt.payload));
    const token = await new jose.CompactSign(payload).setProtectedHeader({ ...jwt.header, alg: 'EdDSA', kid }).sign(privateKey);
    return { jwt: token, signerJwk: publicJwk };
  },
  verifyJwt: async () => ({ verified: false }),
  // direct_post.jwt: the response, decrypted with the ephemeral key's private half.
  decryptJwe: async (jwe, { jwk }) => {
    if (!encryption || jwk?.kid !== encryption.publicJwk.kid) return { decrypted: false };
    const { plaintext, protectedHeader } = await jose.compactDecrypt(jwe, encryption.privateKey, {
      keyManagementAlgorithms: ['ECDH-ES'],
      contentEncryptionAlgorithms: [enc],
    });
    jweHeader = protectedHeader;
    return { decrypted: true, decryptionJwk: jwk, payload: new TextDecoder().decode(plaintext) };
  },
  encryptJwe: async () => { throw new Error('no encryption here'); },
  fetch: (...a) => fetch(...a),
};
const verifier = new Openid4vpVerifier({ callbacks });

// The ephemeral key a direct_post.jwt response is encrypted to.
let jweHeader;
const encryption = responseMode === 'direct_post.jwt'
  ? await (async () => {
    const pair = await jose.generateKeyPair('ECDH-ES', { crv: 'P-256', extractable: true });
    const publicJwk = { ...await jose.exportJWK(pair.publicKey), kid: 'response-encryption', use: 'enc', alg: 'ECDH-ES' };
    return { privateKey: pair.privateKey, publicJwk };
  })()
  : undefined;

const query = format === 'dc+sd-jwt'
  ? {
    id: 'privilege',
    format: 'dc+sd-jwt',
    meta: { vct_values: [input.vct] },
    claims: [{ path: ['role'] }, { path: ['organization'] }],
  }
  : {
    id: 'privilege',
    format: 'jwt_vc_json',
    meta: { type_values: [['https://www.w3.org/2018/credentials#VerifiableCredential', 'https://w3id.org/fedgate#ClinicianPrivilegeCredential']] },
    claims: [{ path: ['credentialSubject', 'role'] }, { path: ['credentialSubject', 'organization'] }],
  };
const clientId = `decentralized_identifier:${did}`;

/** A signature check for a public JWK: Ed25519 with node's crypto, P-256 with the library's. */
async function verifierFor(jwk) {
  const { kty, crv, x, y } = jwk ?? {};
  if (kty === 'OKP' && crv === 'Ed25519') {
    const key = createPublicKey({ key: { kty, crv, x }, format: 'jwk' });
    return async (data, sig) => verifySignature(null, Buffer.from(data), key, Buffer.from(sig, 'base64url'));
  }
  if (kty === 'EC' && crv === 'P-256') return ES256.getVerifier({ kty, crv, x, y });
  throw new Error(`unsupported key ${kty} ${crv}`);
}

/** The SD-JWT VC presentations answering the query, verified by @sd-jwt/sd-jwt-vc. */
async function verifySdJwt(presentations) {
  try {
    if (!Array.isArray(presentations) || presentations.length !== 1 || typeof presentations[0] !== 'string') {
      throw new Error(`expected one SD-JWT presentation for the query, got ${JSON.stringify(presentations)}`);
    }
    const presentation = presentations[0];
    const sdjwt = new SDJwtVcInstance({
      hasher: digest,
      verifier: await verifierFor(input.issuerJwk),
      // The key binding JWT is checked with the holder key the credential names (cnf.jwk).
      kbVerifier: async (data, sig, payload) => (await verifierFor(payload.cnf?.jwk))(data, sig),
    });
    // With a nonce the library requires a key binding JWT (typ kb+jwt, this nonce, its
    // signature by cnf.jwk, sd_hash over the presentation); aud is left to the verifier.
    const result = await sdjwt.verify(presentation, { keyBindingNonce: input.nonce });
    if (!result.kb) throw new Error('no key binding JWT was verified');
    if (result.kb.payload.aud !== clientId) throw new Error(`key binding aud ${result.kb.payload.aud} is not ${clientId}`);
    if (!query.meta.vct_values.includes(result.payload.vct)) throw new Error(`vct ${result.payload.vct} was not asked for`);
    // The disclosures sent (between the issuer-signed JWT and the key binding JWT).
    const disclosed = presentation.split('~').slice(1, -1)
      .map((d) => JSON.parse(Buffer.from(d, 'base64url').toString('utf8')))
      .map((d) => (d.length === 3 ? d[1] : null));
    return {
      verified: true,
      header: result.header,
      kb: { header: result.kb.header, payload: result.kb.payload },
      claims: await sdjwt.getClaims(presentation),
      disclosed,
    };
  } catch (e) {
    return { verified: false, error: String(e?.message ?? e) };
  }
}

const server = http.createServer();
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const base = `http://127.0.0.1:${server.address().port}`;
const request = await verifier.createOpenId4vpAuthorizationRequest({
  authorizationRequestPayload: {
    response_type: 'vp_token',
    client_id: clientId,
    response_mode: responseMode,
    response_uri: `${base}/response`,
    nonce: input.nonce,
    state: 'state-of-the-peer-verifier',
    dcql_query: { credentials: [query] },
    ...(encryption && {
      client_metadata: {
        jwks: { keys: [encryption.publicJwk] },
        ...(enc !== 'A128GCM' && { encrypted_response_enc_values_supported: [enc] }),
      },
    }),
  },
  jar: { requestUri: `${base}/request`, jwtSigner: { method: 'did', didUrl: kid, alg: 'EdDSA' }, expiresInSeconds: 300 },
});
process.stdout.write(`${JSON.stringify({ did, url: request.authorizationRequest })}\n`);

const timer = setTimeout(() => { process.stdout.write(`${JSON.stringify({ ok: false, error: 'no response' })}\n`); process.exit(1); }, 60000);
server.on('request', async (req, res) => {
  if (req.method === 'GET' && req.url === '/request') {
    res.writeHead(200, { 'content-type': 'application/oauth-authz-req+jwt' });
    res.end(request.jar.authorizationRequestJwt);
    return;
  }
  if (req.method === 'POST' && req.url === '/response') {
    let body = '';
    for await (const chunk of req) body += chunk;
    const form = Object.fromEntries(new URLSearchParams(body));
    const out = { form: Object.keys(form).sort() };
    try {
      const parsed = await verifier.parseOpenid4vpAuthorizationResponse({
        authorizationResponse: form,
        authorizationRequestPayload: request.authorizationRequestPayload,
        callbacks,
      });
      out.ok = true;
      out.expectedNonce = parsed.expectedNonce;
      out.type = parsed.type;
      out.vpToken = parsed.authorizationResponsePayload.vp_token;
      out.state = parsed.authorizationResponsePayload.state;
      out.jarm = parsed.jarm ? { type: parsed.jarm.type, header: jweHeader } : undefined;
      if (format === 'dc+sd-jwt') {
        out.sdJwt = await verifySdJwt(parsed.dcql?.presentations?.privilege);
      }
    } catch (e) {
      out.ok = false;
      out.error = String(e?.message ?? e);
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{}');
    process.stdout.write(`${JSON.stringify(out)}\n`);
    clearTimeout(timer);
    server.close();
    setTimeout(() => process.exit(0), 50);
    return;
  }
  res.writeHead(404);
  res.end();
});
