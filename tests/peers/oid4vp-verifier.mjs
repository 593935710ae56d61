// OpenID4VP 1.0 interop the other way: @openid4vc/openid4vp's verifier role
// (Openid4vpVerifier) asks fedgate's wallet. It makes a did:key, signs a request object by
// reference (client_id decentralized_identifier:<did:key>, DCQL for a fedgate privilege as
// jwt_vc_json, direct_post), serves it on loopback, prints {"did", "url"} as one line, then
// takes the wallet's response, parses and validates it with the library, prints what it
// got as a second line and exits. Reads {"nonce"} on stdin.
import { Openid4vpVerifier } from '@openid4vc/openid4vp';
import { setGlobalConfig } from '@openid4vc/utils';
import * as jose from 'jose';
import { encode as base58 } from 'base58-universal';
import { createHash } from 'node:crypto';
import http from 'node:http';

setGlobalConfig({ allowInsecureUrls: true });
const input = JSON.parse(await new Promise((resolve) => {
  let s = '';
  process.stdin.on('data', (d) => { s += d; });
  process.stdin.on('end', () => resolve(s));
}));

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
  decryptJwe: async () => ({ decrypted: false }),
  encryptJwe: async () => { throw new Error('no encryption here'); },
  fetch: (...a) => fetch(...a),
};
const verifier = new Openid4vpVerifier({ callbacks });

const server = http.createServer();
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const base = `http://127.0.0.1:${server.address().port}`;
const request = await verifier.createOpenId4vpAuthorizationRequest({
  authorizationRequestPayload: {
    response_type: 'vp_token',
    client_id: `decentralized_identifier:${did}`,
    response_mode: 'direct_post',
    response_uri: `${base}/response`,
    nonce: input.nonce,
    state: 'state-of-the-peer-verifier',
    dcql_query: {
      credentials: [{
        id: 'privilege',
        format: 'jwt_vc_json',
        meta: { type_values: [['https://www.w3.org/2018/credentials#VerifiableCredential', 'https://w3id.org/fedgate#ClinicianPrivilegeCredential']] },
        claims: [{ path: ['credentialSubject', 'role'] }, { path: ['credentialSubject', 'organization'] }],
      }],
    },
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
      });
      out.ok = true;
      out.expectedNonce = parsed.expectedNonce;
      out.type = parsed.type;
      out.vpToken = parsed.authorizationResponsePayload.vp_token;
      out.state = parsed.authorizationResponsePayload.state;
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
