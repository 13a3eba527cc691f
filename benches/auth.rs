//! Per-request authentication cost: a bearer token already verified (the cache), a cold one (full
//! ES256 verification), the whole `handle` step the proxy runs, and decoding a session cookie.
//!
//! The JWKS comes from a real HTTP endpoint on loopback, fetched once at start-up.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use vestibule::auth::cookies::{RequestCookies, Sealer};
use vestibule::auth::crypto::{self, EdgeKey};
use vestibule::auth::session::{CookieStore, Exchange, Session, SessionStore};
use vestibule::auth::{AuthRequest, AuthService, Decision};
use vestibule::config::{self, Source};

fn jwks_server(runtime: &tokio::runtime::Runtime, body: String) -> std::net::SocketAddr {
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let address = listener.local_addr().unwrap();
    runtime.spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 2048];
                let _ = stream.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    address
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn mint(key: &EdgeKey, subject: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(key.key_id.clone());
    let claims = serde_json::json!({
        "iss": "https://issuer.bench", "aud": "api", "sub": subject, "tnt_id": "tnt_acme",
        "email": "someone@acme.example", "exp": now() + 3600, "iat": now(),
    });
    jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap()
}

fn auth(c: &mut Criterion) {
    crypto::install();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let key = EdgeKey::generate().unwrap();
    let jwks = jwks_server(&runtime, key.jwks().to_string());
    let text = format!(
        r#"
[listeners]
https = "127.0.0.1:0"
[platform]
apex_domain = "bench.test"
region = "us"
account = "acct"
[session]
secrets = ["bench-session-secret-0123456789abcdef"]
[[applications]]
id = "app_api"
domain_name = "api"
production_validations = false
upstream = "http://127.0.0.1:9"
[applications.identity_provider]
name = "bench"
issuers = ["https://issuer.bench"]
jwks_url = "http://{jwks}/jwks"
audiences = ["api"]
[[applications.tenants]]
id = "tnt_acme"
domain_name = "acme"
"#
    );
    let snapshot = config::parse(&text, &Source::Embedded).expect("bench configuration");
    let service = Arc::new(AuthService::new(&snapshot.assertion).unwrap());
    let application = &snapshot.applications[0];
    let auth = runtime
        .block_on(async { service.application(&snapshot, application) })
        .unwrap();
    let token = mint(&key, "cached-user");
    runtime
        .block_on(auth.verify_bearer(&token, Some("acme")))
        .expect("the token verifies");

    let mut group = c.benchmark_group("auth");
    group.bench_function("bearer_cached", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(auth.verify_bearer(black_box(&token), Some("acme")).await.unwrap()) })
    });
    group.bench_function("bearer_cold_es256", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(auth.verify_uncached(black_box(&token), Some("acme")).await.unwrap()) })
    });

    let host = "acme-api-acct.us.bench.test";
    let route = snapshot.hosts.resolve(host).unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    let method = http::Method::GET;
    group.bench_function("handle_bearer_cached", |b| {
        b.to_async(&runtime).iter(|| async {
            let request = AuthRequest {
                method: &method,
                path: "/v1/orders",
                query: None,
                host,
                authority: host,
                tls: true,
                headers: &headers,
                route,
                application,
            };
            match auth.handle(&request).await {
                Decision::Forward { identity, .. } => black_box(identity),
                _ => panic!("not forwarded"),
            }
        })
    });

    let settings = snapshot.session.clone().unwrap();
    let store = CookieStore::new(Arc::new(Sealer::new(&settings.secrets)), &settings);
    let session = Session::new(
        "sid-0123456789abcdef".into(),
        "app_api",
        Some("tnt_acme"),
        "user@acme".into(),
        Some("user@acme.example".into()),
        now(),
        &settings,
    );
    let empty = http::HeaderValue::from_static("");
    let none = RequestCookies::new(std::iter::once(&empty));
    let set = store.save(
        &Exchange {
            host,
            tls: true,
            cookies: &none,
        },
        &session,
        None,
        now(),
    );
    let cookie_header: http::HeaderValue = set
        .iter()
        .map(|c| c.split(';').next().unwrap())
        .collect::<Vec<_>>()
        .join("; ")
        .parse()
        .unwrap();
    group.bench_function("session_cookie_decode", |b| {
        b.iter(|| {
            let cookies = RequestCookies::new(std::iter::once(&cookie_header));
            black_box(
                store
                    .load(&Exchange {
                        host,
                        tls: true,
                        cookies: &cookies,
                    })
                    .unwrap(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, auth);
criterion_main!(benches);
