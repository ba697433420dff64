// node-oidc-provider configured like the standalone issuer's sample, for
// hack/oidc-provider.sh: one confidential client (client_secret_basic,
// client_credentials only), EdDSA-signed JWT access tokens for one
// resource, 15 minutes, on the address given. Run from a folder where
// `npm install oidc-provider@8` was done.
//
//   node oidc-provider.mjs 127.0.0.1:18083 CLIENT_ID CLIENT_SECRET
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const [listen, clientId, clientSecret] = process.argv.slice(2);
const [host, port] = listen.split(':');
const resource = 'https://orders.example.com';
const key = generateKeyPairSync('ed25519').privateKey.export({ format: 'jwk' });

const provider = new Provider(`http://${listen}`, {
  scopes: ['orders.read'],
  jwks: { keys: [{ ...key, alg: 'EdDSA', use: 'sig', kid: 'bench' }] },
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    // The provider holds only the EdDSA key.
    id_token_signed_response_alg: 'EdDSA',
    scope: 'orders.read',
  }],
  ttl: { ClientCredentials: 900 },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => resource,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'orders.read',
        accessTokenTTL: 900,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'EdDSA' } },
      }),
    },
  },
});
provider.listen(Number(port), host);
