//! The edge's own per-request work outside authentication: the upstream header (strip
//! client copies of identity headers, set the edge's), and request ids.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderValue;
use pingora_http::RequestHeader;
use vestibule::config::{self, Source};
use vestibule::proxy::headers::{self, Forwarded, IdentityValues, RequestIds, ReservedHeaders, TenantValues};

const CONFIG: &str = r#"
[listeners]
https = "127.0.0.1:0"
[platform]
apex_domain = "bench.test"
region = "us"
account = "acct"
[[applications]]
id = "app"
domain_name = "app"
production_validations = false
upstream = "http://127.0.0.1:9"
"#;

/// A browser-like request, with two spoofed identity headers.
fn request() -> RequestHeader {
    let mut request = RequestHeader::build("GET", b"/api/v1/orders?page=2", None).unwrap();
    for (name, value) in [
        ("Host", "acme-app-acct.us.bench.test"),
        (
            "User-Agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)",
        ),
        ("Accept", "application/json"),
        ("Accept-Language", "en-US,en;q=0.9"),
        ("Accept-Encoding", "gzip, deflate, br"),
        ("Authorization", "Bearer eyJhbGciOiJFUzI1NiJ9.e30.signature"),
        ("Cookie", "theme=dark; _ga=GA1.2.3"),
        ("X-Tenant-Id", "spoofed"),
        ("x_user_id", "spoofed"),
        ("Referer", "https://acme-app-acct.us.bench.test/orders"),
    ] {
        request.append_header(name.to_owned(), value).unwrap();
    }
    request
}

fn request_path(c: &mut Criterion) {
    let snapshot = config::parse(CONFIG, &Source::Embedded).unwrap();
    let reserved = ReservedHeaders::new(&snapshot.headers);
    let names = snapshot.headers.clone();
    let tenant = TenantValues {
        id: HeaderValue::from_static("tnt_acme"),
        domain_name: HeaderValue::from_static("acme"),
    };
    let application = HeaderValue::from_static("app");
    let request_id = HeaderValue::from_static("0123456789abcdef0123456789abcdef");
    let identity = IdentityValues {
        user_id: Some(HeaderValue::from_static("user-1")),
        user_email: Some(HeaderValue::from_static("user@acme.example")),
        idp_name: Some(HeaderValue::from_static("idp")),
        client_id: Some(HeaderValue::from_static("client")),
        access_token: None,
        assertion: None,
    };
    let template = request();
    // The whole upstream header, built from the client's (copy, strip, add, frame).
    c.bench_function("upstream_header", |b| {
        b.iter(|| {
            let forwarded = Forwarded {
                application_id: &application,
                tenant: Some(&tenant),
                host: &HeaderValue::from_static("acme-app-acct.us.bench.test"),
                tls: true,
                client_ip: Some("10.1.2.3".parse().unwrap()),
                request_id: &request_id,
                identity: Some(&identity),
            };
            black_box(headers::upstream_request(&template, &reserved, &names, &forwarded, false).unwrap())
        })
    });
    let ids = RequestIds::new();
    c.bench_function("request_id", |b| b.iter(|| black_box(ids.next())));
}

criterion_group!(benches, request_path);
criterion_main!(benches);
