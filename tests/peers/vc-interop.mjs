// Independent implementations of VC Data Model 2.0 for tests/interop.rs:
//   Data Integrity: @digitalbazaar/vc, @digitalbazaar/data-integrity,
//                   @digitalbazaar/eddsa-rdfc-2022-cryptosuite, jsonld-signatures
//   VC-JOSE:        jose (panva)
// Every context comes from an npm package or from the input: nothing is fetched.
//
//   node vc-interop.mjs issue  < {contexts, credential}        prints {dataIntegrity, jwt, did}
//   node vc-interop.mjs verify < {contexts, didDocuments, dataIntegrity: [...], jwt: [...]}
//                                                               prints {results}, exits 1 on a failure
import {readFileSync} from 'node:fs';

import * as vc from '@digitalbazaar/vc';
import * as Ed25519Multikey from '@digitalbazaar/ed25519-multikey';
import {DataIntegrityProof} from '@digitalbazaar/data-integrity';
import {cryptosuite as eddsaRdfc2022} from '@digitalbazaar/eddsa-rdfc-2022-cryptosuite';
import {contexts as credentialsContexts} from '@digitalbazaar/credentials-context';
import didContext from 'did-context';
import multikeyContext from '@digitalbazaar/multikey-context';
import jsigs from 'jsonld-signatures';
import * as jose from 'jose';

const input = JSON.parse(readFileSync(0, 'utf8'));
const mode = process.argv[2];

const documents = new Map([
  ...credentialsContexts,
  ...didContext.contexts,
  ...multikeyContext.contexts,
  ...Object.entries(input.contexts ?? {}),
]);
const dids = new Map(Object.entries(input.didDocuments ?? {}));

function documentLoader(url) {
  if (documents.has(url)) {
    return {contextUrl: null, documentUrl: url, document: documents.get(url)};
  }
  if (url.startsWith('did:')) {
    const [did] = url.split('#');
    const doc = dids.get(did);
    if (!doc) {
      throw new Error(`no DID document for ${did}`);
    }
    if (!url.includes('#')) {
      return {contextUrl: null, documentUrl: url, document: doc};
    }
    const vm = doc.verificationMethod.find(v => v.id === url);
    if (!vm) {
      throw new Error(`no verification method ${url}`);
    }
    return {
      contextUrl: null,
      documentUrl: url,
      document: {'@context': doc['@context'], ...vm},
    };
  }
  throw new Error(`refusing to load ${url}`);
}

function didDocument(keyPair) {
  return {
    '@context': [
      'https://www.w3.org/ns/did/v1',
      'https://w3id.org/security/multikey/v1',
    ],
    id: keyPair.controller,
    verificationMethod: [{
      id: keyPair.id,
      type: 'Multikey',
      controller: keyPair.controller,
      publicKeyMultibase: keyPair.publicKeyMultibase,
    }],
    assertionMethod: [keyPair.id],
    authentication: [keyPair.id],
  };
}

async function didKey() {
  const generated = await Ed25519Multikey.generate();
  const did = `did:key:${generated.publicKeyMultibase}`;
  const exported = await generated.export({
    publicKey: true, secretKey: true, includeContext: true,
  });
  const keyPair = await Ed25519Multikey.from({
    ...exported, id: `${did}#${generated.publicKeyMultibase}`, controller: did,
  });
  dids.set(did, didDocument(keyPair));
  return keyPair;
}

async function issue() {
  const keyPair = await didKey();
  const did = keyPair.controller;
  const template = input.credential;
  const credential = structuredClone(template);
  credential.issuer = {id: did, name: 'Peer Training Office'};
  credential.id = `urn:uuid:${crypto.randomUUID()}`;

  // Data Integrity, a proof set of two eddsa-rdfc-2022 proofs.
  const suite = date => new DataIntegrityProof({
    signer: keyPair.signer(), cryptosuite: eddsaRdfc2022, date,
  });
  const once = await vc.issue({credential, suite: suite(), documentLoader});
  // The second proof of the set, created a minute earlier: another signature.
  const twice = await jsigs.sign(structuredClone(once), {
    suite: suite(new Date(Date.now() - 60000)),
    purpose: new jsigs.purposes.AssertionProofPurpose(),
    documentLoader,
  });

  // VC-JOSE: the registered claims, the fully specified alg, and an extra header.
  const jwk = await Ed25519Multikey.toJwk({keyPair, secretKey: true});
  // The library keeps the 64-byte secret (seed and public key); a JWK's d is the seed.
  jwk.d = jose.base64url.encode(jose.base64url.decode(jwk.d).slice(0, 32));
  const privateKey = await jose.importJWK(jwk, 'Ed25519');
  const jwtCredential = structuredClone(template);
  jwtCredential.issuer = {id: did, name: 'Peer Training Office'};
  jwtCredential.id = `urn:uuid:${crypto.randomUUID()}`;
  const now = Math.floor(Date.now() / 1000);
  const jwt = await new jose.SignJWT(jwtCredential)
    .setProtectedHeader({
      alg: 'Ed25519', kid: keyPair.id, typ: 'vc+jwt', cty: 'vc',
      'x-peer': 'interop',
    })
    .setIssuer(did)
    .setSubject(jwtCredential.credentialSubject.id)
    .setJti(jwtCredential.id)
    .setIssuedAt(now)
    .setNotBefore(now - 5)
    .setExpirationTime(now + 3600)
    .sign(privateKey);

  // Check here too that what was made verifies with the library that made it.
  const check = await vc.verifyCredential({
    credential: twice, suite: suite(), documentLoader,
  });
  if (!check.verified) {
    throw new Error(`the peer does not verify its own credential: ${JSON.stringify(check.error)}`);
  }
  return {did, dataIntegrity: twice, jwt, didDocument: dids.get(did)};
}

async function verify() {
  const results = [];
  for (const credential of input.dataIntegrity ?? []) {
    const result = await vc.verifyCredential({
      credential,
      suite: new DataIntegrityProof({cryptosuite: eddsaRdfc2022}),
      documentLoader,
      // Status is fedgate's to check; this peer checks the proofs.
      checkStatus: async () => ({verified: true}),
    });
    results.push({
      format: 'data-integrity',
      id: credential.id,
      proofs: [credential.proof].flat().length,
      verified: result.verified,
      error: result.verified ? undefined : String(result.error?.errors?.[0]?.message ?? result.error),
    });
  }
  for (const token of input.jwt ?? []) {
    let verified = false;
    let error;
    let id;
    try {
      const header = jose.decodeProtectedHeader(token);
      const [did] = header.kid.split('#');
      const doc = dids.get(did);
      const vm = doc.verificationMethod.find(v => v.id === header.kid);
      const keyPair = await Ed25519Multikey.from({...vm, '@context': doc['@context']});
      const key = await jose.importJWK(await Ed25519Multikey.toJwk({keyPair}), header.alg);
      const {payload, protectedHeader} = await jose.jwtVerify(token, key, {typ: 'vc+jwt'});
      const issuer = typeof payload.issuer === 'string' ? payload.issuer : payload.issuer?.id;
      if (issuer !== did) {
        throw new Error('signed by a key that is not the issuer\'s');
      }
      id = payload.id;
      verified = protectedHeader.kid === header.kid;
    } catch (e) {
      error = String(e?.message ?? e);
    }
    results.push({format: 'jwt', id, verified, error});
  }
  return {results};
}

try {
  if (mode === 'issue') {
    process.stdout.write(JSON.stringify(await issue()));
  } else if (mode === 'verify') {
    const out = await verify();
    process.stdout.write(JSON.stringify(out));
    if (!out.results.length || out.results.some(r => !r.verified)) {
      process.exit(1);
    }
  } else {
    throw new Error('usage: vc-interop.mjs issue|verify < input.json');
  }
} catch (e) {
  process.stderr.write(`vc-interop: ${e?.stack ?? e}\n`);
  process.exit(2);
}
