// The OpenID provider the login-flow tests run against: the certified `oidc-provider` package,
// configured on loopback for Vestibule's test tenants.
//
//   node server.js '<json config>'     prints {"port": N} once listening on 127.0.0.1:N
//
// Config: { clients: [oidc client metadata], tenants: { "<domain>": "<tenant id>" },
//           audience: "<resource indicator>", access_token_ttl: seconds }
//
// Tenant-level endpoints: a request to http://{tenant}.op.localhost:N/... is for that tenant; the
// interaction logs in `user@{tenant}` without a form (the tests drive the protocol, not a UI), and
// every token carries `tnt_id` of that tenant. GET /test/events lists what the provider did
// (grants, refreshes, revocations, logouts), for the tests to assert against.

import http from 'node:http';
import { Provider } from 'oidc-provider';

const config = JSON.parse(process.argv[2] ?? process.env.OP_CONFIG ?? '{}');
const tenants = config.tenants ?? {};
const events = [];

function tenantOfHost(host) {
  const name = (host ?? '').split(':')[0].toLowerCase();
  const suffix = '.op.localhost';
  return name.endsWith(suffix) ? name.slice(0, -suffix.length) : undefined;
}

function tenantOfAccount(accountId) {
  return accountId.split('@')[1];
}

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: config.clients ?? [],
  cookies: { keys: ['vestibule-test-op-cookie-key-0123456789'] },
  claims: { openid: ['sub', 'tnt_id'], email: ['email', 'email_verified'], profile: ['name'] },
  scopes: ['openid', 'email', 'profile', 'offline_access'],
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => config.audience,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'openid email profile offline_access',
        audience: config.audience,
        accessTokenTTL: config.access_token_ttl ?? 300,
        accessTokenFormat: 'jwt',
      }),
    },
  },
  ttl: {
    AccessToken: config.access_token_ttl ?? 300,
    IdToken: 3600,
    RefreshToken: 86400,
    Interaction: 600,
    Session: 86400,
    Grant: 86400,
  },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: () => true,
  extraTokenClaims: async (ctx, token) => (token.accountId ? { tnt_id: tenants[tenantOfAccount(token.accountId)] } : undefined),
  async findAccount(ctx, id) {
    const tenant = tenantOfAccount(id);
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: id.replace('@', '@example.') + '.test', email_verified: true, name: id, tnt_id: tenants[tenant] };
      },
    };
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
});

for (const name of ['grant.success', 'grant.revoked', 'refresh_token.consumed', 'refresh_token.destroyed', 'end_session.success', 'authorization.success']) {
  provider.on(name, (ctx) => {
    events.push({ event: name, grant_type: ctx?.oidc?.params?.grant_type, host: ctx?.host, at: Date.now() });
  });
}

provider.use(async (ctx, next) => {
  if (ctx.path === '/test/events') {
    ctx.body = events;
    return;
  }
  const match = ctx.path.match(/^\/interaction\/([^/]+)$/);
  if (!match) {
    await next();
    return;
  }
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const tenant = tenantOfHost(ctx.get('host'));
  if (!tenant || !(tenant in tenants)) {
    ctx.status = 400;
    ctx.body = { error: 'unknown tenant host' };
    return;
  }
  const accountId = `user@${tenant}`;
  const { Grant } = provider;
  const grant = details.grantId ? await Grant.find(details.grantId) : new Grant({ accountId, clientId: details.params.client_id });
  const missing = details.prompt.details ?? {};
  grant.addOIDCScope([...(missing.missingOIDCScope ?? []), 'openid', 'email', 'profile', 'offline_access'].join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  if (config.audience) grant.addResourceScope(config.audience, 'openid email profile offline_access');
  const grantId = await grant.save();
  ctx.respond = false;
  await provider.interactionFinished(ctx.req, ctx.res, { login: { accountId }, consent: { grantId } }, { mergeWithLastSubmission: false });
});

server.on('request', provider.callback());
process.stdout.write(JSON.stringify({ port }) + '\n');
