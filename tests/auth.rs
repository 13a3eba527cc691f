//! Authentication end to end, against the certified OpenID provider (`oidc-provider`) and a JWKS
//! server for hand-made tokens: the browser login flow, host-bound sessions, refresh, logout,
//! tenant-bound bearer tokens, and hostile tokens.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::identity::{Browser, JwksServer, Op, absolutize};
use support::*;
use vestibule::auth::crypto::{self, EdgeKey};

const CLIENT_SECRET: &str = "vestibule-client-secret-0123456789";
const EDGE_HOSTS: [&str; 4] = [
    "acme.auth.portal.test",
    "globex.auth.portal.test",
    "login.acme.test",
    "auth.portal.test",
];

struct World {
    directory: tempfile::TempDir,
    edge: Edge,
    op: Op,
    jwks: JwksServer,
    /// Signs tokens the JWKS server publishes (issuer `https://issuer.test`).
    issuer_key: EdgeKey,
    port: u16,
}

impl World {
    fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.port)
    }

    fn browser(&self, name: &str) -> Browser {
        let mut hosts = EDGE_HOSTS.to_vec();
        hosts.extend([
            "acme-api-acct.us.edge.test",
            "globex-api-acct.us.edge.test",
            "api-acct.us.edge.test",
        ]);
        Browser::new(self.directory.path(), name, self.port, &hosts, &self.edge.ca_path)
    }

    /// A plain API client (no cookies, no navigation headers).
    fn api(&self, args: &[&str]) -> Response {
        self.browser("api-client").request(args)
    }
}

fn world(access_token_ttl: u64) -> World {
    crypto::install();
    let directory = temp_dir();
    let path = directory.path();
    let pki = Pki::new(path);
    let echo = Echo::start();
    let port = free_port();
    let callbacks: Vec<String> = EDGE_HOSTS
        .iter()
        .map(|h| format!("https://{h}:{port}/auth/callback"))
        .collect();
    let logout_returns: Vec<String> = ["acme", "globex"]
        .iter()
        .map(|t| format!("https://{t}.auth.portal.test:{port}/"))
        .collect();
    let op = Op::start(&json!({
        "clients": [{
            "client_id": "vestibule",
            "client_secret": CLIENT_SECRET,
            "redirect_uris": callbacks,
            "post_logout_redirect_uris": logout_returns,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        }],
        "tenants": { "acme": "tnt_acme", "globex": "tnt_globex" },
        "audience": "https://api.portal.test",
        "access_token_ttl": access_token_ttl,
    }));
    let issuer_key = EdgeKey::generate().unwrap();
    let jwks = JwksServer::start(issuer_key.jwks());
    let (cert, key) = pki.issue(&[
        "auth.portal.test",
        "*.auth.portal.test",
        "login.acme.test",
        "*.us.edge.test",
    ]);
    let op_port = op.port;
    let config = format!(
        r#"{base}
[platform]
apex_domain = "edge.test"
region = "us"
account = "acct"

[tls]
certificates = [{{ certificate = "{cert}", private_key = "{key}" }}]

[session]
secrets = ["test-session-secret-0123456789abcdef-XYZ"]
refresh_leeway_seconds = 1

[[applications]]
id = "app_portal"
domain_name = "portal"
production_validations = false
custom_domain = "auth.portal.test"
upstream = "{echo}"
public_paths = ["/public/*"]
login_url = "https://{{tenant_domain}}.auth.portal.test:{port}/"

[applications.identity_provider]
name = "test-op"
issuers = ["http://127.0.0.1:{op_port}"]
discovery_url = "http://127.0.0.1:{op_port}/.well-known/openid-configuration"
audiences = ["https://api.portal.test"]
client_id = "vestibule"
client_secret = "{CLIENT_SECRET}"
authorize_url = "http://{{tenant_domain}}.op.localhost:{op_port}/auth"
logout_url = "http://{{tenant_domain}}.op.localhost:{op_port}/session/end"
forward_access_token = true
forward_assertion = true

[[applications.tenants]]
id = "tnt_acme"
domain_name = "acme"
custom_domain = "login.acme.test"

[[applications.tenants]]
id = "tnt_globex"
domain_name = "globex"

[[applications]]
id = "app_api"
domain_name = "api"
production_validations = false
upstream = "{echo}"

[applications.identity_provider]
name = "test-jwks"
issuers = ["https://issuer.test"]
jwks_url = "{jwks}"
audiences = ["api"]
jwks_cooldown_seconds = 2

[[applications.tenants]]
id = "tnt_acme"
domain_name = "acme"

[[applications.tenants]]
id = "tnt_globex"
domain_name = "globex"
"#,
        base = base_config_on(path, port),
        cert = cert.display(),
        key = key.display(),
        echo = echo.url(),
        jwks = jwks.url(),
    );
    let edge = Edge::start(path, &config, &pki.ca_path);
    World {
        directory,
        edge,
        op,
        jwks,
        issuer_key,
        port,
    }
}

fn mint(key: &EdgeKey, kid: Option<&str>, claims: serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = kid.map(str::to_owned).or_else(|| Some(key.key_id.clone()));
    jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn api_claims(tenant: Option<&str>) -> serde_json::Value {
    let mut claims =
        json!({ "iss": "https://issuer.test", "aud": "api", "sub": "svc-1", "exp": now() + 600, "iat": now() });
    if let Some(tenant) = tenant {
        claims["tnt_id"] = json!(tenant);
    }
    claims
}

/// Runs the whole login from a navigation to `start`; returns the responses of the edge hops.
fn login(browser: &Browser, start: &str) -> Vec<Response> {
    let responses = browser.follow(start, |_| false);
    let last = responses.last().unwrap();
    assert!(
        last.status == 200,
        "the login did not end on the application: {responses:#?}"
    );
    responses
}

fn location(response: &Response) -> &str {
    response
        .header("location")
        .unwrap_or_else(|| panic!("no location: {response:?}"))
}

#[test]
fn browser_login_creates_a_session_bound_to_its_host() {
    let world = world(300);
    let browser = world.browser("alice");
    let start = world.url("acme.auth.portal.test", "/dashboard?tab=1");

    // Not logged in: the navigation goes to login, which goes to the tenant-level authorize URL.
    let first = browser.navigate(&start);
    assert_eq!(first.status, 302);
    assert_eq!(location(&first), "/auth/login?return_to=%2Fdashboard%3Ftab%3D1");
    let login_start = browser.navigate(&absolutize(&start, location(&first)));
    assert_eq!(login_start.status, 302);
    let authorize = location(&login_start);
    assert!(
        authorize.starts_with(&format!("http://acme.op.localhost:{}/auth?", world.op.port)),
        "{authorize}"
    );
    for part in [
        "response_type=code",
        "client_id=vestibule",
        "code_challenge_method=S256",
        "code_challenge=",
        "state=",
        "nonce=",
    ] {
        assert!(authorize.contains(part), "{part} missing in {authorize}");
    }
    let pending = login_start.header("set-cookie").unwrap();
    assert!(
        pending.starts_with("__Host-vestibule_session-login-")
            && pending.contains("Secure")
            && pending.contains("HttpOnly")
    );

    let responses = login(&browser, &start);
    let callback = responses
        .iter()
        .find(|r| {
            r.headers
                .iter()
                .any(|(n, v)| n == "set-cookie" && v.starts_with("__Host-vestibule_session="))
        })
        .expect("session set");
    assert_eq!(location(callback), "/dashboard?tab=1");
    let page = responses.last().unwrap();
    assert_eq!(page.received("x-user-id"), ["user@acme"]);
    assert_eq!(page.received("x-user-email"), ["user@example.acme.test"]);
    assert_eq!(page.received("x-idp-name"), ["test-op"]);
    assert_eq!(page.received("x-client-id"), ["vestibule"]);
    assert_eq!(page.received("x-tenant-id"), ["tnt_acme"]);
    assert_eq!(page.json()["path"], "/dashboard?tab=1");
    let access_token = page.received("x-access-token");
    assert_eq!(access_token.len(), 1, "access token forwarded");

    // The assertion verifies against the edge's published JWKS.
    let assertion = page
        .received("x-vestibule-assertion")
        .pop()
        .expect("assertion forwarded");
    let jwks = world.api(&[&world.url("acme.auth.portal.test", "/.well-known/vestibule/jwks.json")]);
    assert_eq!(jwks.status, 200);
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&jwks.body).unwrap();
    let decoding = jsonwebtoken::DecodingKey::from_jwk(&set.keys[0]).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["app_portal"]);
    validation.set_issuer(&["vestibule"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(&assertion, &decoding, &validation)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], "user@acme");
    assert_eq!(claims["tnt_id"], "tnt_acme");

    // The session works again, and nowhere else: not on another tenant, not on the same
    // tenant's custom domain.
    assert_eq!(
        browser
            .navigate(&world.url("acme.auth.portal.test", "/again"))
            .received("x-user-id"),
        ["user@acme"]
    );
    let stolen = browser.cookie_header("acme.auth.portal.test");
    assert!(stolen.contains("__Host-vestibule_session="));
    for host in ["globex.auth.portal.test", "login.acme.test"] {
        let api = world.api(&["-H", &format!("Cookie: {stolen}"), &world.url(host, "/data")]);
        assert_eq!(api.status, 401, "{host}: {api:?}");
        assert_eq!(api.json()["error"], "missing_credentials");
        let navigation = world.api(&[
            "-H",
            &format!("Cookie: {stolen}"),
            "-H",
            "Accept: text/html",
            &world.url(host, "/"),
        ]);
        assert_eq!(navigation.status, 302, "{host}");
        assert!(location(&navigation).starts_with("/auth/login"));
    }

    // A tampered session cookie is refused (and cleared): back to login.
    let session = browser
        .cookie("acme.auth.portal.test", "__Host-vestibule_session")
        .unwrap();
    let mut bytes = session.into_bytes();
    let middle = bytes.len() / 2;
    bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
    let tampered = format!("__Host-vestibule_session={}", String::from_utf8(bytes).unwrap());
    let refused = world.api(&[
        "-H",
        &format!("Cookie: {tampered}"),
        "-H",
        "Accept: text/html",
        &world.url("acme.auth.portal.test", "/"),
    ]);
    assert_eq!(refused.status, 302);
    assert!(location(&refused).starts_with("/auth/login"));
    assert!(
        refused
            .headers
            .iter()
            .any(|(n, v)| n == "set-cookie" && v.starts_with("__Host-vestibule_session=;") && v.contains("Max-Age=0"))
    );

    // Logout: cookies cleared, refresh token revoked, tenant-level logout with the login URL.
    let revoked_before = world.op.count("grant.revoked", None);
    let logout = browser.navigate(&world.url("acme.auth.portal.test", "/auth/logout"));
    assert_eq!(logout.status, 302);
    let target = location(&logout);
    assert!(
        target.starts_with(&format!("http://acme.op.localhost:{}/session/end?", world.op.port)),
        "{target}"
    );
    let expected_return = format!(
        "post_logout_redirect_uri=https%3A%2F%2Facme.auth.portal.test%3A{}%2F",
        world.port
    );
    assert!(
        target.contains(&expected_return) && target.contains("id_token_hint="),
        "{target}"
    );
    assert!(
        logout
            .headers
            .iter()
            .any(|(n, v)| n == "set-cookie" && v.starts_with("__Host-vestibule_session=;"))
    );
    assert_eq!(
        world.op.count("grant.revoked", None),
        revoked_before + 1,
        "the refresh token was revoked"
    );
    assert!(
        browser
            .cookie("acme.auth.portal.test", "__Host-vestibule_session")
            .is_none(),
        "{:?}\n{:?}",
        browser.cookies("acme.auth.portal.test"),
        logout.headers
    );
    let after = browser.navigate(&world.url("acme.auth.portal.test", "/dashboard"));
    assert_eq!(after.status, 302, "logged out");

    let metrics = world.edge.metrics();
    for outcome in ["login_started", "login_completed", "logout"] {
        let series = format!(r#"vestibule_auth_outcomes_total{{application="app_portal",outcome="{outcome}"}}"#);
        assert!(metric_value(&metrics, &series).is_some_and(|v| v >= 1.0), "{series}");
    }
    let log = world.edge.access_log();
    assert!(
        !log.contains(&access_token[0]) && !log.contains("vestibule_session="),
        "no secrets in logs"
    );
    assert!(!world.edge.stderr().contains(&access_token[0]));
}

#[test]
fn sessions_refresh_before_the_access_token_expires_and_end_when_refresh_fails() {
    let mut world = world(4);
    let browser = world.browser("bob");
    let start = world.url("globex.auth.portal.test", "/");
    let first = login(&browser, &start);
    let token_one = first.last().unwrap().received("x-access-token").pop().unwrap();
    assert_eq!(first.last().unwrap().received("x-tenant-id"), ["tnt_globex"]);
    // Within the leeway of expiry: several parallel requests share one refresh.
    std::thread::sleep(Duration::from_millis(3300));
    let refreshes_before = world.op.count("grant.success", Some("refresh_token"));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let cookie = browser.cookie_header("globex.auth.portal.test");
            let url = world.url("globex.auth.portal.test", "/parallel");
            let resolve = format!("globex.auth.portal.test:{}:127.0.0.1", world.port);
            let ca = world.edge.ca_path.display().to_string();
            std::thread::spawn(move || {
                curl(
                    &["--cacert", &ca, "--resolve", &resolve],
                    &["-H", &format!("Cookie: {cookie}"), &url],
                )
            })
        })
        .collect();
    let parallel: Vec<Response> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for response in &parallel {
        assert_eq!(response.status, 200, "{response:?}");
        let token = response.received("x-access-token").pop().unwrap();
        assert_ne!(token, token_one, "refreshed before expiry");
    }
    assert_eq!(
        world.op.count("grant.success", Some("refresh_token")),
        refreshes_before + 1,
        "one refresh for all"
    );
    // The browser keeps the refreshed cookies from any of those responses.
    let refreshed = browser.navigate(&world.url("globex.auth.portal.test", "/"));
    assert_eq!(refreshed.status, 200);

    // Provider gone: the next refresh fails, the session ends, the browser goes back to login.
    world.op.stop();
    std::thread::sleep(Duration::from_millis(4000));
    let ended = browser.navigate(&world.url("globex.auth.portal.test", "/"));
    assert_eq!(ended.status, 302, "{ended:?}");
    assert!(location(&ended).starts_with("/auth/login"));
    assert!(
        ended
            .headers
            .iter()
            .any(|(n, v)| n == "set-cookie" && v.starts_with("__Host-vestibule_session=;"))
    );
}

#[test]
fn bearer_tokens_only_work_on_their_tenants_hosts() {
    let world = world(300);
    let browser = world.browser("carol");
    let page = login(&browser, &world.url("acme.auth.portal.test", "/"));
    let token = page.last().unwrap().received("x-access-token").pop().unwrap();
    let bearer = format!("Authorization: Bearer {token}");

    let own = world.api(&["-H", &bearer, &world.url("acme.auth.portal.test", "/api/me")]);
    assert_eq!(own.status, 200, "{own:?}");
    assert_eq!(own.received("x-user-id"), ["user@acme"]);
    assert_eq!(own.received("x-client-id"), ["vestibule"]);
    // The same token replayed on another tenant's host: 403, never a redirect.
    let replay = world.api(&[
        "-H",
        &bearer,
        "-H",
        "Accept: text/html",
        &world.url("globex.auth.portal.test", "/api/me"),
    ]);
    assert_eq!(replay.status, 403, "{replay:?}");
    assert_eq!(replay.json()["error"], "wrong_tenant");
    assert_eq!(
        replay.header("www-authenticate"),
        Some("Bearer error=\"insufficient_scope\"")
    );
    // On the application-level host the token's own tenant is forwarded.
    let app_level = world.api(&["-H", &bearer, &world.url("auth.portal.test", "/api/me")]);
    assert_eq!(app_level.status, 200);
    assert_eq!(app_level.received("x-tenant-id"), ["tnt_acme"]);

    // Hand-made tokens of the JWKS issuer.
    let key = &world.issuer_key;
    let acme = mint(key, None, api_claims(Some("tnt_acme")));
    let call = |token: &str, host: &str| {
        world.api(&["-H", &format!("Authorization: Bearer {token}"), &world.url(host, "/v1")])
    };
    assert_eq!(call(&acme, "acme-api-acct.us.edge.test").status, 200);
    assert_eq!(call(&acme, "globex-api-acct.us.edge.test").status, 403);
    let tenantless = mint(key, None, api_claims(None));
    assert_eq!(
        call(&tenantless, "acme-api-acct.us.edge.test").json()["error"],
        "tenant_required"
    );
    assert_eq!(
        call(&tenantless, "api-acct.us.edge.test").status,
        403,
        "tenantless tokens are off by default"
    );
    let unknown_tenant = mint(key, None, api_claims(Some("tnt_elsewhere")));
    assert_eq!(call(&unknown_tenant, "api-acct.us.edge.test").status, 403);

    // No credentials: an API call gets a 401 challenge and JSON, never a redirect.
    let anonymous = world.api(&[&world.url("acme-api-acct.us.edge.test", "/v1")]);
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
    assert_eq!(anonymous.json()["error"], "missing_credentials");
    // Public paths need nothing.
    assert_eq!(
        world
            .api(&[&world.url("acme.auth.portal.test", "/public/logo.svg")])
            .status,
        200
    );
}

fn hmac_token(secret: &[u8], header: &serde_json::Value, claims: &serde_json::Value) -> String {
    let signing_input = format!(
        "{}.{}",
        crypto::base64_url(header.to_string().as_bytes()),
        crypto::base64_url(claims.to_string().as_bytes())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    format!(
        "{signing_input}.{}",
        crypto::base64_url(ring::hmac::sign(&key, signing_input.as_bytes()).as_ref())
    )
}

#[test]
fn hostile_tokens_are_refused() {
    let world = world(300);
    let key = &world.issuer_key;
    let host = "acme-api-acct.us.edge.test";
    let call = |token: &str| world.api(&["-H", &format!("Authorization: Bearer {token}"), &world.url(host, "/v1")]);
    let claims = api_claims(Some("tnt_acme"));
    assert_eq!(
        call(&mint(key, None, claims.clone())).status,
        200,
        "the well-formed token works"
    );

    let unsigned = format!(
        "{}.{}.",
        crypto::base64_url(br#"{"alg":"none","typ":"JWT"}"#),
        crypto::base64_url(claims.to_string().as_bytes())
    );
    // HS256 "signed" with the issuer's public key, in the forms an attacker would try.
    let jwks = key.jwks();
    let public_jwk = jwks["keys"][0].to_string();
    let hs_header = json!({ "alg": "HS256", "typ": "JWT", "kid": key.key_id });
    let mut expired = claims.clone();
    expired["exp"] = json!(now() - 3600);
    let mut future = claims.clone();
    future["nbf"] = json!(now() + 3600);
    let mut wrong_issuer = claims.clone();
    wrong_issuer["iss"] = json!("https://evil.test");
    let mut wrong_audience = claims.clone();
    wrong_audience["aud"] = json!("someone-else");
    let mut no_subject = claims.clone();
    no_subject.as_object_mut().unwrap().remove("sub");
    let mut tampered = mint(key, None, claims.clone()).into_bytes();
    let at = tampered.len() - 5;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let other_key = EdgeKey::generate().unwrap();
    let cases = [
        ("alg none", unsigned),
        (
            "HS256 with the public JWK",
            hmac_token(public_jwk.as_bytes(), &hs_header, &claims),
        ),
        (
            "HS256 with the key id",
            hmac_token(key.key_id.as_bytes(), &hs_header, &claims),
        ),
        ("expired", mint(key, None, expired)),
        ("not yet valid", mint(key, None, future)),
        ("wrong issuer", mint(key, None, wrong_issuer)),
        ("wrong audience", mint(key, None, wrong_audience)),
        ("no subject", mint(key, None, no_subject)),
        ("bad signature", String::from_utf8(tampered).unwrap()),
        (
            "signed by another key with a known kid",
            mint(&other_key, Some(&key.key_id), claims.clone()),
        ),
        ("garbage", "not.a.token".to_owned()),
        ("huge", "a".repeat(20_000)),
    ];
    for (name, token) in &cases {
        let response = call(token);
        assert_eq!(response.status, 401, "{name}: {response:?}");
        assert_eq!(response.json()["error"], "invalid_token", "{name}");
        assert!(
            response
                .header("www-authenticate")
                .unwrap()
                .starts_with("Bearer error=\"invalid_token\""),
            "{name}"
        );
    }
    let basic = world.api(&["-H", "Authorization: Basic dXNlcjpwYXNz", &world.url(host, "/v1")]);
    assert_eq!(basic.status, 401);

    // A flood of random kids costs at most one JWKS fetch per cool-down.
    std::thread::sleep(Duration::from_millis(2100)); // let the cool-down of the first fetch pass
    let fetches_before = world.jwks.fetches();
    let started = Instant::now();
    for index in 0..150 {
        let response = call(&mint(key, Some(&format!("random-kid-{index}")), claims.clone()));
        assert_eq!(response.status, 401);
    }
    let elapsed = started.elapsed();
    let fetched = world.jwks.fetches() - fetches_before;
    let windows = 1 + elapsed.as_secs() as usize / 2;
    assert!(
        fetched <= windows,
        "{fetched} fetches for 150 unknown kids in {elapsed:?}"
    );
    let metrics = world.edge.metrics();
    let invalid = metric_value(
        &metrics,
        r#"vestibule_auth_outcomes_total{application="app_api",outcome="invalid"}"#,
    )
    .unwrap();
    assert!(invalid >= (cases.len() + 150) as f64, "{invalid}");
}

#[test]
fn key_rotation_is_picked_up_and_an_outage_keeps_cached_keys() {
    let world = world(300);
    let host = "acme-api-acct.us.edge.test";
    let call = |token: &str| world.api(&["-H", &format!("Authorization: Bearer {token}"), &world.url(host, "/v1")]);
    let old = &world.issuer_key;
    assert_eq!(call(&mint(old, None, api_claims(Some("tnt_acme")))).status, 200);
    // The provider starts signing with a new key and publishes it beside the old one.
    let new = EdgeKey::generate().unwrap();
    let new_token = mint(&new, None, api_claims(Some("tnt_acme")));
    let mut both = old.jwks();
    both["keys"].as_array_mut().unwrap().push(new.jwks()["keys"][0].clone());
    world.jwks.set_keys(both);
    assert!(
        eventually(Duration::from_secs(5), || call(&new_token).status == 200),
        "the new key is fetched after the cool-down"
    );
    // The provider goes away: keys already fetched keep verifying new tokens.
    world.jwks.stop();
    std::thread::sleep(Duration::from_millis(2100));
    for key in [old, &new] {
        let fresh = mint(
            key,
            None,
            json!({ "iss": "https://issuer.test", "aud": "api", "sub": "svc-2", "exp": now() + 300, "tnt_id": "tnt_acme" }),
        );
        assert_eq!(call(&fresh).status, 200);
    }
    let unknown = mint(&EdgeKey::generate().unwrap(), None, api_claims(Some("tnt_acme")));
    let response = call(&unknown);
    assert!(matches!(response.status, 401 | 503), "{response:?}");
}

#[test]
fn login_refuses_open_redirects_and_recovers_from_bad_state() {
    let world = world(300);
    let browser = world.browser("dave");
    for hostile in [
        "https://evil.test/",
        "//evil.test/",
        "/\\evil.test",
        "javascript:alert(1)",
    ] {
        let encoded: String = url::form_urlencoded::byte_serialize(hostile.as_bytes()).collect();
        let responses = browser.follow(
            &world.url("acme.auth.portal.test", &format!("/auth/login?return_to={encoded}")),
            |_| false,
        );
        let last = responses.last().unwrap();
        assert_eq!(last.status, 200, "{hostile}: {responses:#?}");
        assert_eq!(last.json()["path"], "/", "{hostile} must land on /");
    }
    // A callback with a state this browser never started, or none: back to login, never a 500.
    for query in ["?code=x&state=forged", "?code=x"] {
        let response = browser.navigate(&world.url("acme.auth.portal.test", &format!("/auth/callback{query}")));
        assert_eq!(response.status, 302, "{query}");
        assert!(location(&response).starts_with("/auth/login?reason="), "{query}");
    }
    // At most three pending logins per host.
    let fresh = world.browser("erin");
    for _ in 0..5 {
        let response = fresh.navigate(&world.url("acme.auth.portal.test", "/auth/login"));
        assert_eq!(response.status, 302);
    }
    let pending = fresh
        .cookies("acme.auth.portal.test")
        .into_iter()
        .filter(|(name, _)| name.contains("-login-"))
        .count();
    assert_eq!(pending, 3, "{:?}", fresh.cookies("acme.auth.portal.test"));
    // On the application-level host, login moves to the tenant's host.
    let moved = fresh.navigate(&world.url("auth.portal.test", "/auth/login?tenant_domain=globex&return_to=%2Fx"));
    assert_eq!(moved.status, 302);
    assert_eq!(
        location(&moved),
        format!(
            "https://globex.auth.portal.test:{}/auth/login?return_to=%2Fx",
            world.port
        )
    );
    assert_eq!(
        fresh
            .navigate(&world.url("auth.portal.test", "/auth/login?tenant_domain=nobody"))
            .status,
        404
    );
    assert_eq!(
        fresh.navigate(&world.url("auth.portal.test", "/auth/login")).status,
        403
    );
}
