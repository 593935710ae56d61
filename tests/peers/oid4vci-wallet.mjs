// An independent OpenID4VCI 1.0 wallet against fedgate's issuer: @openid4vc/openid4vci and
// @openid4vc/oauth2 (versions pinned in package.json). Usage:
//   node oid4vci-wallet.mjs OFFER_URL TX_CODE FORMAT
// Resolves the offer and the issuer's metadata, redeems the pre-authorized code with the
// transaction code, gets a c_nonce from the nonce endpoint, signs the key proof with a fresh
// P-256 key named by `jwk`, and asks for the credential of the offered configuration in
// FORMAT. Prints {configurationId, credentials, holderJwk} as JSON; on a refusal, prints
// {error} and exits 1.
import crypto from 'node:crypto';
import { Openid4vciClient, setGlobalConfig } from '@openid4vc/openid4vci';
import { clientAuthenticationAnonymous } from '@openid4vc/oauth2';

// The issuer runs on loopback over plain http in the test.
setGlobalConfig({ allowInsecureUrls: true });

const [offerUrl, txCode, format] = process.argv.slice(2);
const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const publicJwk = publicKey.export({ format: 'jwk' });
const b64 = (data) => Buffer.from(data).toString('base64url');
const hashes = { 'sha-256': 'sha256', 'sha-384': 'sha384', 'sha-512': 'sha512' };

const callbacks = {
  fetch,
  hash: (data, alg) => new Uint8Array(crypto.createHash(hashes[alg]).update(data).digest()),
  generateRandom: (n) => new Uint8Array(crypto.randomBytes(n)),
  clientAuthentication: clientAuthenticationAnonymous(),
  signJwt: async (_signer, { header, payload }) => {
    const input = `${b64(JSON.stringify(header))}.${b64(JSON.stringify(payload))}`;
    const signature = crypto.sign('sha256', Buffer.from(input), {
      key: privateKey,
      dsaEncoding: 'ieee-p1363',
    });
    return { jwt: `${input}.${b64(signature)}`, signerJwk: publicJwk };
  },
};

try {
  const client = new Openid4vciClient({ callbacks });
  const credentialOffer = await client.resolveCredentialOffer(offerUrl);
  const issuerMetadata = await client.resolveIssuerMetadata(credentialOffer.credential_issuer);
  const supported = issuerMetadata.credentialIssuer.credential_configurations_supported;
  const configurationId = credentialOffer.credential_configuration_ids.find(
    (id) => supported[id]?.format === format,
  );
  if (!configurationId) throw new Error(`the offer has no ${format} configuration`);
  const { accessTokenResponse } = await client.retrievePreAuthorizedCodeAccessTokenFromOffer({
    credentialOffer,
    issuerMetadata,
    txCode,
  });
  const { c_nonce } = await client.requestNonce({ issuerMetadata });
  const { jwt } = await client.createCredentialRequestJwtProof({
    issuerMetadata,
    credentialConfigurationId: configurationId,
    nonce: c_nonce,
    signer: { method: 'jwk', publicJwk, alg: 'ES256' },
  });
  const response = await client.retrieveCredentials({
    issuerMetadata,
    accessToken: accessTokenResponse.access_token,
    credentialConfigurationId: configurationId,
    proofs: { jwt: [jwt] },
  });
  console.log(
    JSON.stringify({
      configurationId,
      credentials: response.credentialResponse.credentials,
      holderJwk: publicJwk,
    }),
  );
} catch (e) {
  const detail = e?.errorResponse ?? e?.response?.body ?? null;
  console.log(JSON.stringify({ error: String(e?.message ?? e), detail }));
  process.exit(1);
}
