// OpenID4VP 1.0 interop with an independent implementation: @openid4vc/openid4vp (its
// wallet-side helpers, Openid4vpClient) answering fedgate's gateway, the verifier.
// Reads {"url", "verifierJwk", "vpToken"} on stdin; writes one JSON answer on stdout.
//
// 1. parseOpenid4vpAuthorizationRequest: the openid4vp:// URL (client_id + request_uri);
// 2. resolveOpenId4vpAuthorizationRequest: fetches the request object by reference,
//    validates it (JAR typ, client_id prefix decentralized_identifier, response mode,
//    DCQL presence, version detection) and has it verified through our verifyJwt callback
//    with the gateway's DID key (jose);
// 3. createOpenid4vpAuthorizationResponse: builds the response for the vp_token, and for
//    direct_post.jwt encrypts it to the key of client_metadata.jwks (jose, ECDH-ES);
// 4. submitOpenid4vpAuthorizationResponse: posts it to response_uri.
import { Openid4vpClient } from '@openid4vc/openid4vp';
import { setGlobalConfig } from '@openid4vc/utils';
import * as jose from 'jose';
import { createHash, randomBytes } from 'node:crypto';

const input = JSON.parse(await new Promise((resolve) => {
  let s = '';
  process.stdin.on('data', (d) => { s += d; });
  process.stdin.on('end', () => resolve(s));
}));

// The gateway runs on loopback over plain http in the test.
setGlobalConfig({ allowInsecureUrls: true });

const callbacks = {
  fetch: (...args) => fetch(...args),
  hash: (data, alg) => new Uint8Array(createHash(alg.replace('-', '').toLowerCase()).update(data).digest()),
  generateRandom: (n) => new Uint8Array(randomBytes(n)),
  verifyJwt: async (signer, jwt) => {
    // decentralized_identifier: the key is the gateway DID's, which the test resolved.
    if (signer.method !== 'did' || !signer.didUrl.startsWith(input.verifierDid)) {
      return { verified: false };
    }
    try {
      const key = await jose.importJWK(input.verifierJwk, jwt.header.alg);
      await jose.compactVerify(jwt.compact, key);
      return { verified: true, signerJwk: input.verifierJwk };
    } catch {
      return { verified: false };
    }
  },
  encryptJwe: async (encryptor, data) => {
    const key = await jose.importJWK(encryptor.publicJwk, 'ECDH-ES');
    const jwe = await new jose.CompactEncrypt(new TextEncoder().encode(data))
      .setProtectedHeader({ alg: 'ECDH-ES', enc: encryptor.enc, kid: encryptor.publicJwk.kid })
      .encrypt(key);
    return { jwe, encryptionJwk: encryptor.publicJwk };
  },
  signJwt: async () => { throw new Error('no signing in this test'); },
  decryptJwe: async () => ({ decrypted: false }),
};

const out = {};
try {
  const client = new Openid4vpClient({ callbacks });
  const parsed = client.parseOpenid4vpAuthorizationRequest({ authorizationRequest: input.url });
  out.parsedType = parsed.type;
  const resolved = await client.resolveOpenId4vpAuthorizationRequest({
    authorizationRequestPayload: parsed.params,
  });
  out.version = resolved.version;
  out.client = { prefix: resolved.client.prefix, identifier: resolved.client.identifier, effective: resolved.client.effectiveClientId ?? resolved.client.clientId };
  out.jar = resolved.jar ? { sendBy: resolved.jar.sendBy, typ: resolved.jar.jwt.header.typ, kid: resolved.jar.jwt.header.kid } : null;
  out.dcql = resolved.dcql?.query ?? null;
  out.responseMode = resolved.authorizationRequestPayload.response_mode;
  out.nonce = resolved.authorizationRequestPayload.nonce;
  if (input.vpToken) {
    const response = await client.createOpenid4vpAuthorizationResponse({
      authorizationRequestPayload: resolved.authorizationRequestPayload,
      authorizationResponsePayload: { vp_token: input.vpToken },
      jarm: resolved.authorizationRequestPayload.response_mode === 'direct_post.jwt'
        ? {
          encryption: { nonce: randomBytes(16).toString('base64url') },
          serverMetadata: {
            authorization_signing_alg_values_supported: ['ES256', 'EdDSA'],
            authorization_encryption_alg_values_supported: ['ECDH-ES'],
            authorization_encryption_enc_values_supported: ['A128GCM', 'A256GCM'],
          },
        }
        : undefined,
    });
    out.encrypted = Boolean(response.jarm?.responseJwt);
    const submitted = await client.submitOpenid4vpAuthorizationResponse({
      authorizationRequestPayload: resolved.authorizationRequestPayload,
      authorizationResponsePayload: response.authorizationResponsePayload,
      jarm: response.jarm ? { responseJwt: response.jarm.responseJwt } : undefined,
    });
    out.status = submitted.response.status;
    out.body = await submitted.response.json().catch(() => null);
  }
  out.ok = true;
} catch (e) {
  out.ok = false;
  out.error = String(e?.message ?? e);
  out.details = e?.errorResponse ?? e?.cause?.message ?? null;
}
process.stdout.write(JSON.stringify(out));
