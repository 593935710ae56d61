// The OpenWallet Foundation's SD-JWT VC libraries for tests/interop.rs:
//   @sd-jwt/sd-jwt-vc (issuer, holder, verifier), @sd-jwt/crypto-nodejs (ES256, sha-256),
//   @sd-jwt/jwt-status-list (Token Status List reader).
//
//   node sd-jwt-interop.mjs verify < {presentation, issuerJwk, aud, nonce}
//       verifies a presentation (signature, disclosures, key binding with its nonce, the
//       status from the Token Status List at its uri) and fetches the vct's type metadata;
//       prints {claims, kb, typeMetadata}, or {error} and exits 1
//   node sd-jwt-interop.mjs status < {uri, idx, issuerJwk}
//       fetches a Token Status List (Accept: application/statuslist+jwt), checks its
//       signature, reads entry idx; prints {status, bits, sub}
//   node sd-jwt-interop.mjs issue < {vct, subject, aud, nonce}
//       issues an SD-JWT VC with ES256 (issuer and holder keys made here, their DIDs the
//       did:jwk of each), every claim selectively disclosable and each array element too,
//       and presents it with some claims and a key binding JWT; prints {issued, presented,
//       issuer, holder}
import {readFileSync} from 'node:fs';
import * as crypto from 'node:crypto';

import {SDJwtVcInstance} from '@sd-jwt/sd-jwt-vc';
import {ES256, digest, generateSalt} from '@sd-jwt/crypto-nodejs';
import {getListFromStatusListJWT} from '@sd-jwt/jwt-status-list';

const input = JSON.parse(readFileSync(0, 'utf8'));
const mode = process.argv[2];

/** A verifier for a public JWK: EdDSA (Ed25519) with node's crypto, ES256 with the library's. */
async function verifierFor(jwk) {
  const {kty, crv, x, y} = jwk;
  if (kty === 'OKP' && crv === 'Ed25519') {
    const key = crypto.createPublicKey({key: {kty, crv, x}, format: 'jwk'});
    return async (data, sig) =>
      crypto.verify(null, Buffer.from(data), key, Buffer.from(sig, 'base64url'));
  }
  if (kty === 'EC' && crv === 'P-256') {
    return ES256.getVerifier({kty, crv, x, y});
  }
  throw new Error(`unsupported key ${kty} ${crv}`);
}

function didJwk(publicJwk) {
  const {crv, kty, x, y} = publicJwk;
  const json = JSON.stringify(y ? {crv, kty, x, y} : {crv, kty, x});
  return `did:jwk:${Buffer.from(json).toString('base64url')}`;
}

function jwtPart(jwt, i) {
  return JSON.parse(Buffer.from(jwt.split('.')[i], 'base64url').toString('utf8'));
}

async function verify() {
  const issuerVerifier = await verifierFor(input.issuerJwk);
  const sdjwt = new SDJwtVcInstance({
    hasher: digest,
    verifier: issuerVerifier,
    // The key binding is checked with the holder key the credential names (cnf.jwk).
    kbVerifier: async (data, sig, payload) => (await verifierFor(payload.cnf.jwk))(data, sig),
  });
  const result = await sdjwt.verify(input.presentation, {keyBindingNonce: input.nonce});
  if (!result.kb) {
    throw new Error('no key binding JWT was verified');
  }
  if (result.kb.payload.aud !== input.aud) {
    throw new Error(`key binding aud ${result.kb.payload.aud} is not ${input.aud}`);
  }
  const claims = await sdjwt.getClaims(input.presentation);
  const typeMetadata = await sdjwt.getVct(input.presentation);
  return {
    claims,
    header: result.header,
    kb: result.kb,
    typeMetadata: typeMetadata?.mergedTypeMetadata,
  };
}

async function status() {
  const response = await fetch(input.uri, {headers: {Accept: 'application/statuslist+jwt'}});
  if (!response.ok) {
    throw new Error(`HTTP ${response.status}`);
  }
  const jwt = (await response.text()).trim();
  const [header, payload] = [jwtPart(jwt, 0), jwtPart(jwt, 1)];
  const [signingInput, signature] = [jwt.split('.').slice(0, 2).join('.'), jwt.split('.')[2]];
  if (!(await (await verifierFor(input.issuerJwk))(signingInput, signature))) {
    throw new Error('the status list signature does not verify');
  }
  if (header.typ !== 'statuslist+jwt') {
    throw new Error(`typ ${header.typ}`);
  }
  const list = getListFromStatusListJWT(jwt);
  return {
    status: list.getStatus(input.idx),
    bits: payload.status_list.bits,
    sub: payload.sub,
    contentType: response.headers.get('content-type'),
  };
}

async function issue() {
  const issuerKeys = await ES256.generateKeyPair();
  const holderKeys = await ES256.generateKeyPair();
  const issuer = didJwk(issuerKeys.publicKey);
  const holder = didJwk(holderKeys.publicKey);
  const sdjwt = new SDJwtVcInstance({
    hasher: digest,
    hashAlg: 'sha-256',
    saltGenerator: generateSalt,
    signer: await ES256.getSigner(issuerKeys.privateKey),
    signAlg: ES256.alg,
    verifier: await ES256.getVerifier(issuerKeys.publicKey),
    kbSigner: await ES256.getSigner(holderKeys.privateKey),
    kbSignAlg: ES256.alg,
    kbVerifier: await ES256.getVerifier(holderKeys.publicKey),
  });
  const now = Math.floor(Date.now() / 1000);
  const {crv, kty, x, y} = holderKeys.publicKey;
  const claims = {
    iss: issuer,
    sub: holder,
    iat: now,
    nbf: now - 60,
    exp: now + 3600,
    vct: input.vct,
    cnf: {jwk: {crv, kty, x, y}},
    ...input.subject,
  };
  const arrays = Object.keys(input.subject).filter(k => Array.isArray(input.subject[k]));
  const frame = {_sd: Object.keys(input.subject)};
  for (const name of arrays) {
    frame[name] = {_sd: input.subject[name].map((_, i) => i)};
  }
  const issued = await sdjwt.issue(claims, frame, {header: {kid: `${issuer}#0`}});
  const presented = await sdjwt.present(issued, input.presentationFrame, {
    kb: {payload: {aud: input.aud, nonce: input.nonce, iat: now}},
  });
  return {issued, presented, issuer, holder};
}

const modes = {verify, status, issue};
try {
  if (!modes[mode]) {
    throw new Error(`unknown mode ${mode}`);
  }
  process.stdout.write(JSON.stringify(await modes[mode]()));
} catch (e) {
  process.stdout.write(JSON.stringify({error: String(e?.message ?? e)}));
  process.exitCode = 1;
}
