//! The spine, end to end: host forms → tenant headers, header stripping, TLS/SNI behaviour,
//! plain-HTTP redirects, upstream failures, WebSocket pass-through, and `vestibule check`.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Fixture {
    _directory: tempfile::TempDir,
    edge: Edge,
    pki: Pki,
}

/// Three applications: a development portal (every host form), a production app, and one whose
/// upstream is down. Separate certificates per name group so SNI/Host mismatches are detectable.
fn fixture() -> Fixture {
    fixture_with("")
}

/// The fixture with extra keys in its `[tls]` section.
fn fixture_with(tls_extra: &str) -> Fixture {
    fixture_of(tls_extra, "", "")
}

/// The fixture with extra keys in its `[tls]` and `[server]` sections, and extra sections.
fn fixture_of(tls_extra: &str, server_extra: &str, sections: &str) -> Fixture {
    let directory = temp_dir();
    let path = directory.path();
    let pki = Pki::new(path);
    let echo = Echo::start();
    let (vanity_cert, vanity_key) = pki.issue(&["*.us.edge.test"]);
    let (custom_cert, custom_key) = pki.issue(&["auth.portal.test", "*.auth.portal.test"]);
    let (tenant_cert, tenant_key) = pki.issue(&["login.acme.test"]);
    let config = format!(
        r#"{base}
[platform]
apex_domain = "edge.test"
region = "us"
account = "acct"

[tls]
{tls_extra}
certificates = [
  {{ certificate = "{vanity_cert}", private_key = "{vanity_key}" }},
  {{ certificate = "{custom_cert}", private_key = "{custom_key}" }},
  {{ certificate = "{tenant_cert}", private_key = "{tenant_key}" }},
]

[[applications]]
id = "app_portal"
domain_name = "portal"
production_validations = false
custom_domain = "auth.portal.test"
upstream = "{echo}"

[[applications.tenants]]
id = "tnt_acme"
domain_name = "acme"
custom_domain = "login.acme.test"

[[applications.tenants]]
id = "tnt_globex"
domain_name = "globex"

[[applications]]
id = "app_billing"
domain_name = "billing"
production_validations = true
upstream = "https://192.0.2.10"

[[applications.tenants]]
id = "tnt_initech"
domain_name = "initech"

[[applications]]
id = "app_down"
domain_name = "down"
production_validations = false
upstream = "http://127.0.0.1:{dead}"

{sections}
"#,
        base = base_config(path).replace("[server]\n", &format!("[server]\n{server_extra}\n")),
        vanity_cert = vanity_cert.display(),
        vanity_key = vanity_key.display(),
        custom_cert = custom_cert.display(),
        custom_key = custom_key.display(),
        tenant_cert = tenant_cert.display(),
        tenant_key = tenant_key.display(),
        echo = echo.url(),
        dead = dead_port(),
        tls_extra = tls_extra,
        sections = sections,
    );
    let edge = Edge::start(path, &config, &pki.ca_path);
    Fixture {
        _directory: directory,
        edge,
        pki,
    }
}

#[test]
fn every_host_form_reaches_its_tenant() {
    let Fixture { edge, _directory, .. } = fixture();
    let cases = [
        ("https://acme-portal-acct.us.edge.test/a", Some(("tnt_acme", "acme"))),
        (
            "https://globex-portal-acct.us.edge.test/a",
            Some(("tnt_globex", "globex")),
        ),
        ("https://acme.auth.portal.test/a", Some(("tnt_acme", "acme"))),
        ("https://globex.auth.portal.test/a", Some(("tnt_globex", "globex"))),
        ("https://login.acme.test/a", Some(("tnt_acme", "acme"))),
        ("https://LOGIN.Acme.TEST./a", Some(("tnt_acme", "acme"))),
        ("https://portal-acct.us.edge.test/a", None),
        ("https://auth.portal.test/a", None),
    ];
    for http2 in [false, true] {
        for (url, tenant) in cases {
            let version = if http2 { "--http2" } else { "--http1.1" };
            let response = edge.curl(&[version, url]);
            assert_eq!(response.status, 200, "{url}: {response:?}");
            assert_eq!(response.version, if http2 { "HTTP/2" } else { "HTTP/1.1" });
            assert_eq!(response.received("x-application-id"), ["app_portal"], "{url}");
            match tenant {
                Some((id, domain)) => {
                    assert_eq!(response.received("x-tenant-id"), [id], "{url}");
                    assert_eq!(response.received("x-tenant-domain"), [domain], "{url}");
                }
                None => {
                    assert!(response.received("x-tenant-id").is_empty(), "{url}");
                    assert!(response.received("x-tenant-domain").is_empty(), "{url}");
                }
            }
            let host = url
                .trim_start_matches("https://")
                .split('/')
                .next()
                .unwrap()
                .to_ascii_lowercase();
            assert_eq!(
                response.received("x-forwarded-host"),
                [host.trim_end_matches('.')],
                "{url}"
            );
            assert_eq!(response.received("x-forwarded-proto"), ["https"]);
            assert_eq!(response.received("x-forwarded-for"), ["127.0.0.1"]);
            let request_id = response.received("x-request-id");
            assert_eq!(request_id.len(), 1);
            assert_eq!(
                response.header("x-request-id"),
                Some(request_id[0].as_str()),
                "echoed to the client"
            );
        }
    }
    let log = edge.access_log();
    let line = log
        .lines()
        .find(|line| line.contains("\"tnt_globex\""))
        .expect("an access log line");
    let entry: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(entry["application"], "app_portal");
    assert_eq!(entry["path"], "/a");
    assert_eq!(entry["tls_version"], "TLSv1_3");
}

#[test]
fn spoofed_identity_headers_are_stripped() {
    let Fixture { edge, _directory, .. } = fixture();
    for version in ["--http1.1", "--http2"] {
        let response = edge.curl(&[
            version,
            "-H",
            "X-Tenant-Id: tnt_globex",
            "-H",
            "x_tenant_id: tnt_globex",
            "-H",
            "X-TENANT-DOMAIN: globex",
            "-H",
            "X-Application-Id: other",
            "-H",
            "X-User-Id: admin",
            "-H",
            "x_user_email: ceo@example.com",
            "-H",
            "X-User-Roles: superuser",
            "-H",
            "X-Forwarded-For: 6.6.6.6",
            "-H",
            "X-Forwarded-Host: evil.test",
            "-H",
            "Forwarded: for=6.6.6.6;host=evil.test",
            "-H",
            "X-Request-Id: forged",
            "-H",
            "X-Custom: kept",
            "https://login.acme.test/spoof?x=1",
        ]);
        assert_eq!(response.status, 200, "{response:?}");
        let echoed = response.json();
        let headers = echoed["headers"].as_object().unwrap();
        assert_eq!(response.received("x-tenant-id"), ["tnt_acme"], "{version}");
        assert_eq!(response.received("x-tenant-domain"), ["acme"]);
        assert_eq!(response.received("x-application-id"), ["app_portal"]);
        assert_eq!(response.received("x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(response.received("x-forwarded-host"), ["login.acme.test"]);
        assert_ne!(response.received("x-request-id"), ["forged"]);
        for gone in ["x_tenant_id", "x-user-id", "x_user_email", "x-user-roles", "forwarded"] {
            assert!(
                !headers.contains_key(gone),
                "{version}: {gone} reached the upstream: {headers:?}"
            );
        }
        assert_eq!(response.received("x-custom"), ["kept"]);
        assert_eq!(echoed["path"], "/spoof?x=1");
    }
}

#[test]
fn host_not_covered_by_the_connection_certificate_is_misdirected() {
    let Fixture { edge, _directory, .. } = fixture();
    // SNI login.acme.test (its own certificate), Host of a tenant under another certificate.
    let response = edge.curl(&["-H", "Host: globex.auth.portal.test", "https://login.acme.test/"]);
    assert_eq!(response.status, 421, "{response:?}");
    assert_eq!(response.json()["error"], "misdirected_request");
    // Same certificate (wildcard) but a name no tenant has: unknown host on TLS is also 421.
    let response = edge.get("https://nobody.auth.portal.test/");
    assert_eq!(response.status, 421);
    assert_eq!(response.json()["error"], "unknown_host");
    // HTTP/2 with a mismatched :authority.
    let response = edge.curl(&[
        "--http2",
        "-H",
        "Host: acme-portal-acct.us.edge.test",
        "https://login.acme.test/",
    ]);
    assert_eq!(response.status, 421);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sni_gets_an_unrecognized_name_alert() {
    let Fixture { edge, pki, _directory } = tokio::task::spawn_blocking(fixture).await.unwrap();
    for name in ["nobody.test", "evil-portal-acct.us.edge.test.attacker.test"] {
        let started = Instant::now();
        let Err(error) = tls_connect(edge.https, name, pki.root_store(), &[b"http/1.1"]).await else {
            panic!("{name}: the handshake should have been refused");
        };
        let text = format!("{error:?}");
        assert!(
            text.contains("UnrecognisedName") || text.contains("UnrecognizedName"),
            "{name}: {text}"
        );
        assert!(started.elapsed() < Duration::from_millis(500), "refused fast");
    }
    // A known name still handshakes.
    let stream = tls_connect(edge.https, "login.acme.test", pki.root_store(), &[b"http/1.1"]).await;
    assert!(stream.is_ok(), "{stream:?}");
    // No SNI at all (an IP literal): also refused with the alert.
    let curl = std::process::Command::new("curl")
        .args(["-s", "-k", "-v", &format!("https://127.0.0.1:{}/", edge.https.port())])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&curl.stderr);
    assert!(stderr.contains("unrecognized name"), "{stderr}");
    let metrics = edge.metrics();
    let refused = metric_value(
        &metrics,
        r#"vestibule_tls_handshake_failures_total{reason="unknown_sni"}"#,
    );
    assert_eq!(refused, Some(2.0), "{metrics}");
    assert_eq!(
        metric_value(&metrics, r#"vestibule_tls_handshake_failures_total{reason="no_sni"}"#),
        Some(1.0)
    );
}

#[test]
fn malformed_hosts_are_400_and_unknown_plain_hosts_404() {
    let Fixture { edge, _directory, .. } = fixture();
    for version in ["--http1.1", "--http2"] {
        for host in [
            "bad_host.test",
            "a..b.test",
            "login.acme.test:port",
            "-x.test",
            "a.test:99999999",
        ] {
            let response = edge.curl(&[version, "-H", &format!("Host: {host}"), "https://login.acme.test/"]);
            assert_eq!(response.status, 400, "{version} {host}: {response:?}");
            assert_eq!(response.json()["error"], "bad_host");
        }
    }
    // Non-ASCII bytes: the edge answers 400 on HTTP/1.1; on HTTP/2 the protocol layer resets the
    // stream as a malformed request (RFC 9113 §8.1.1). Either way nothing is forwarded.
    let response = edge.curl(&["--http1.1", "-H", "Host: m\u{fc}nchen.test", "https://login.acme.test/"]);
    assert_eq!(response.status, 400, "{response:?}");
    let h2 = std::process::Command::new("curl")
        .args([
            "-s",
            "--http2",
            "--cacert",
            edge.ca_path.to_str().unwrap(),
            "-H",
            "Host: m\u{fc}nchen.test",
        ])
        .args([
            "--connect-to",
            &format!("::127.0.0.1:{}", edge.https.port()),
            "https://login.acme.test/",
        ])
        .output()
        .unwrap();
    assert_eq!(h2.status.code(), Some(92), "HTTP/2 stream error expected: {h2:?}");
    let response = edge.get("http://nobody.test/");
    assert_eq!(response.status, 404);
    assert_eq!(response.json()["error"], "unknown_host");
    assert!(
        !edge.access_log().contains("m\u{fc}nchen"),
        "raw hosts are never logged"
    );
}

#[test]
fn plain_http_redirects_production_applications_only() {
    let Fixture { edge, _directory, .. } = fixture();
    let response = edge.get("http://initech-billing-acct.us.edge.test/reports?period=q3");
    assert_eq!(response.status, 308);
    let expected = format!(
        "https://initech-billing-acct.us.edge.test:{}/reports?period=q3",
        edge.https.port()
    );
    assert_eq!(response.header("location"), Some(expected.as_str()));
    let response = edge.get("http://acme.auth.portal.test/dev");
    assert_eq!(response.status, 200, "non-production apps may be served over http");
    assert_eq!(response.received("x-forwarded-proto"), ["http"]);
    assert_eq!(response.received("x-tenant-id"), ["tnt_acme"]);
}

#[test]
fn upstream_down_is_a_prompt_502() {
    let Fixture { edge, _directory, .. } = fixture();
    let started = Instant::now();
    let response = edge.get("http://down-acct.us.edge.test/");
    assert_eq!(response.status, 502, "{response:?}");
    assert_eq!(response.json()["error"], "upstream_unreachable");
    assert!(started.elapsed() < Duration::from_secs(5));
    let metrics = edge.metrics();
    assert!(
        metric_value(
            &metrics,
            r#"vestibule_upstream_errors_total{application="app_down",kind="upstream_unreachable"}"#
        )
        .is_some_and(|count| count >= 1.0),
        "{metrics}"
    );
}

#[test]
fn request_bodies_are_streamed_and_hop_by_hop_fields_stop_at_the_edge() {
    let Fixture { edge, _directory, .. } = fixture();
    let payload_path = _directory.path().join("payload.bin");
    let payload: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&payload_path, &payload).unwrap();
    let payload_arg = format!("@{}", payload_path.display());
    let url = "https://login.acme.test/upload";

    // Content-Length over HTTP/1.1, chunked over HTTP/1.1, and an HTTP/2 stream: all arrive whole.
    for (label, extra) in [
        ("content-length", &["--http1.1"][..]),
        ("chunked", &["--http1.1", "-H", "Transfer-Encoding: chunked"][..]),
        ("http2", &["--http2"][..]),
    ] {
        let mut args = extra.to_vec();
        args.extend(["--data-binary", &payload_arg, url]);
        let response = edge.curl(&args);
        assert_eq!(response.status, 200, "{label}: {response:?}");
        let echoed = response.json();
        assert_eq!(echoed["method"], "POST", "{label}");
        assert_eq!(echoed["body_length"], payload.len(), "{label}");
        if label == "chunked" {
            assert_eq!(response.received("transfer-encoding"), ["chunked"]);
        }
    }

    // An upstream that answers before reading the body: its answer reaches the client.
    for version in ["--http1.1", "--http2"] {
        let response = edge.curl(&[
            version,
            "--data-binary",
            &payload_arg,
            "https://login.acme.test/too-large",
        ]);
        assert_eq!(response.status, 413, "{version}: {response:?}");
    }

    // Fields meant for this hop only do not reach the upstream, nor do the ones Connection names.
    let response = edge.curl(&[
        "--http1.1",
        "-H",
        "Connection: keep-alive, X-Hop-Secret",
        "-H",
        "X-Hop-Secret: for-the-edge-only",
        "-H",
        "Keep-Alive: timeout=5",
        "-H",
        "TE: trailers",
        "-H",
        "Upgrade: h2c",
        "-H",
        "Proxy-Authorization: Basic c2VjcmV0",
        "-H",
        "X-Custom: kept",
        url,
    ]);
    assert_eq!(response.status, 200, "{response:?}");
    let headers = response.json()["headers"].as_object().unwrap().clone();
    for gone in ["x-hop-secret", "keep-alive", "te", "upgrade", "proxy-authorization"] {
        assert!(!headers.contains_key(gone), "{gone} reached the upstream: {headers:?}");
    }
    assert_eq!(response.received("x-custom"), ["kept"]);
    assert_eq!(response.received("host"), ["login.acme.test"]);

    // HTTP/2 requests reach the HTTP/1.1 upstream with Host taken from :authority.
    let response = edge.curl(&["--http2", url]);
    assert_eq!(response.version, "HTTP/2", "{response:?}");
    assert_eq!(response.received("host"), ["login.acme.test"]);
}

#[test]
fn an_upstream_closing_idle_connections_costs_no_request() {
    let Fixture { edge, _directory, .. } = fixture();
    // Each `/close` leaves the edge a pooled connection that the upstream has already closed
    // without saying so; the next request, whatever its method, must not land on it.
    for method in ["GET", "POST", "DELETE", "POST"] {
        let first = edge.curl(&["--http1.1", "https://login.acme.test/close"]);
        assert_eq!(first.status, 200, "{first:?}");
        let next = edge.curl(&["--http1.1", "-X", method, "https://login.acme.test/after"]);
        assert_eq!(next.status, 200, "{method} after an upstream close: {next:?}");
        assert_eq!(next.json()["method"], method);
    }
}

#[test]
fn a_response_cut_short_upstream_is_not_passed_off_as_complete() {
    let Fixture { edge, _directory, .. } = fixture();
    let port = edge.https.port().to_string();
    for version in ["--http1.1", "--http2"] {
        let output = std::process::Command::new("curl")
            .args(["-s", "--max-time", "10", "--cacert"])
            .arg(&edge.ca_path)
            .args(["--connect-to", &format!("::127.0.0.1:{port}"), version])
            .arg("https://login.acme.test/truncated")
            .output()
            .unwrap();
        // HTTP/1: the connection closes before the last chunk (curl 18/56); HTTP/2: the stream is
        // reset (curl 92). Never a clean end of a body that was not all sent.
        assert!(!output.status.success(), "{version}: {output:?}");
        if version == "--http1.1" {
            // What did arrive was passed on as it came.
            assert_eq!(String::from_utf8_lossy(&output.stdout), "partia", "{output:?}");
        }
    }
    assert_eq!(edge.get("https://login.acme.test/after").status, 200);
}

#[test]
fn an_upstream_dying_after_its_head_is_a_502_not_an_empty_answer() {
    let Fixture { edge, _directory, .. } = fixture();
    // A head with a length waits for its body, so nothing of it reached the client and an error
    // answer still can: on the edge's own HTTP/1.1 server, on HTTP/2 and on pingora's HTTP/1
    // session (HTTP/1.0 requests go there; without ALPN, as the edge offers `h2` and `http/1.1`).
    for version in [&["--http1.1"][..], &["--http2"], &["--http1.0", "--no-alpn"]] {
        let response = edge.curl(&[version, &["https://login.acme.test/head-only"]].concat());
        assert_eq!(response.status, 502, "{version:?}: {response:?}");
        assert_eq!(response.json()["error"], "upstream_failed", "{version:?}: {response:?}");
    }
    assert_eq!(edge.get("https://login.acme.test/after").status, 200);
}

#[test]
fn hop_by_hop_fields_of_the_upstream_response_stop_at_the_edge() {
    let Fixture { edge, _directory, .. } = fixture();
    for version in ["--http1.1", "--http2"] {
        let response = edge.curl(&[version, "https://login.acme.test/hop-by-hop"]);
        assert_eq!(response.status, 200, "{version}: {response:?}");
        for gone in ["x-upstream-hop", "keep-alive", "proxy-connection", "upgrade"] {
            assert_eq!(
                response.header(gone),
                None,
                "{version}: {gone} reached the client: {response:?}"
            );
        }
        assert_eq!(response.header("x-upstream-kept"), Some("yes"), "{version}");
        if version == "--http1.1" {
            // The edge's own connection management, not the upstream's.
            assert_eq!(response.header("connection"), Some("keep-alive"), "{response:?}");
        }
    }
}

/// The test upstream's `/keep-alive/2` on `stream`: asserts a 200 and returns which upstream
/// connection answered (the upstream numbers its connections).
async fn upstream_connection_answering<S>(stream: &mut S, request: &str) -> serde_json::Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (head, body) = exchange(stream, request).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["connection"].clone()
}

const KEEP_ALIVE_REQUEST: &str = "GET /keep-alive/2 HTTP/1.1\r\nHost: login.acme.test\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_connection_is_retired_before_its_announced_idle_timeout() {
    let Fixture { edge, pki, _directory } = tokio::task::spawn_blocking(fixture).await.unwrap();
    let mut stream = tls_connect(edge.https, "login.acme.test", pki.root_store(), &[b"http/1.1"])
        .await
        .unwrap();
    // One client connection: every request runs on the same worker thread, with the same pool.
    let first = upstream_connection_answering(&mut stream, KEEP_ALIVE_REQUEST).await;
    assert_eq!(
        upstream_connection_answering(&mut stream, KEEP_ALIVE_REQUEST).await,
        first,
        "a fresh upstream connection is reused"
    );
    // The upstream closes after 2 s idle; the edge must stop using the connection a second
    // before, instead of racing the close with a request it may not be able to replay.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let post = KEEP_ALIVE_REQUEST
        .replace("GET", "POST")
        .replace("\r\n\r\n", "\r\nContent-Length: 0\r\n\r\n");
    assert_ne!(
        upstream_connection_answering(&mut stream, &post).await,
        first,
        "reused a connection the upstream was about to close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_idle_upstream_connections_allowed_each_request_gets_a_new_one() {
    let Fixture { edge, pki, _directory } =
        tokio::task::spawn_blocking(|| fixture_of("", "", "[upstream]\nmax_idle_connections = 0"))
            .await
            .unwrap();
    let mut stream = tls_connect(edge.https, "login.acme.test", pki.root_store(), &[b"http/1.1"])
        .await
        .unwrap();
    let first = upstream_connection_answering(&mut stream, KEEP_ALIVE_REQUEST).await;
    assert_ne!(
        upstream_connection_answering(&mut stream, KEEP_ALIVE_REQUEST).await,
        first,
        "an upstream connection was kept idle against the bound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_dribbling_clients_lose_their_connections() {
    let Fixture { edge, pki, _directory } = tokio::task::spawn_blocking(|| {
        fixture_of(
            "",
            "keepalive_timeout_seconds = 1\nrequest_header_timeout_seconds = 1",
            "",
        )
    })
    .await
    .unwrap();
    let request = "GET /idle HTTP/1.1\r\nHost: login.acme.test\r\n\r\n";

    // Keep-alive works, and an idle connection is closed after the keep-alive timeout, even when
    // the client asks for longer.
    let mut stream = tls_connect(edge.https, "login.acme.test", pki.root_store(), &[b"http/1.1"])
        .await
        .unwrap();
    exchange(&mut stream, request).await;
    let long_wish = request.replace(
        "\r\n\r\n",
        "\r\nConnection: keep-alive\r\nKeep-Alive: timeout=600\r\n\r\n",
    );
    let (head, _) = exchange(&mut stream, &long_wish).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let idle_since = Instant::now();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "idle connection still open after 5 s: {read:?}"
    );
    let idle = idle_since.elapsed();
    assert!(idle >= Duration::from_millis(800), "closed after only {idle:?}");

    // A client sending its header a field at a time is cut off once the header budget
    // (keep-alive wait + header timeout = 2 s here) is spent, though every read brings bytes.
    let mut stream = tls_connect(edge.https, "login.acme.test", pki.root_store(), &[b"http/1.1"])
        .await
        .unwrap();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: login.acme.test\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let closed = loop {
        if started.elapsed() > Duration::from_secs(8) {
            break false;
        }
        tokio::select! {
            read = stream.read(&mut byte) => {
                assert!(!matches!(read, Ok(n) if n > 0), "answered a header that never ended");
                break true;
            }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                if stream.write_all(b"x-dribble: 1\r\n").await.is_err() {
                    break true;
                }
            }
        }
    };
    assert!(closed, "a dribbling client kept its connection for 8 s");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut off only after {:?}",
        started.elapsed()
    );
}

/// Opens a WebSocket to the echo upstream through the edge; returns the stream and the head of
/// the edge's answer.
async fn open_websocket(edge: &Edge, pki: &Pki) -> (tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String) {
    let mut stream = tls_connect(edge.https, "login.acme.test", pki.root_store(), &[b"http/1.1"])
        .await
        .unwrap();
    stream
        .write_all(
            b"GET /socket HTTP/1.1\r\nHost: login.acme.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    (stream, head)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through() {
    let Fixture { edge, pki, _directory } = tokio::task::spawn_blocking(fixture).await.unwrap();
    let (mut stream, head) = open_websocket(&edge, &pki).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    for message in [&b"hello through the edge"[..], b"second frame"] {
        stream.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, message);
    }
}

fn check(config_path: &Path) -> std::process::Output {
    std::process::Command::new(BINARY)
        .args(["check", "--config"])
        .arg(config_path)
        .output()
        .unwrap()
}

#[test]
fn check_lists_every_problem_with_its_key_path() {
    let directory = temp_dir();
    let config = format!(
        r#"{base}
[platform]
apex_domain = "edge.test"
region = "us"
account = "acct"

[[applications]]
id = "app_prod"
domain_name = "prod"
production_validations = true
custom_domain = "auth.localhost"
upstream = ["http://localhost:3000", "https://127.0.0.1:8443"]
login_url = "http://{{tenant_domain}}.prod.example/login"

[applications.identity_provider]
name = "idp"
issuers = ["https://idp.example/{{tenant_domain}}"]
jwks_url = "https://localhost/jwks"
algorithms = ["HS256", "none"]

[[applications.tenants]]
id = "tnt_a"
domain_name = "alpha"
colour = "blue"

[[applications.tenants]]
id = "tnt_b"
domain_name = "beta"
custom_domain = "login.localhost"

[[applications.tenants]]
id = "tnt_c"
domain_name = "beta"
"#,
        base = base_config(directory.path())
    );
    let config_path = directory.path().join("bad.toml");
    std::fs::write(&config_path, config).unwrap();
    let output = check(&config_path);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "applications[0].custom_domain",
        "applications[0].upstream[0]: `http://localhost:3000` must use https",
        "applications[0].upstream[0]: `http://localhost:3000` points at a loopback",
        "applications[0].upstream[1]: `https://127.0.0.1:8443` points at a loopback",
        "applications[0].login_url",
        "applications[0].identity_provider.issuers[0]",
        "applications[0].identity_provider.jwks_url",
        "applications[0].identity_provider.algorithms[0]",
        "applications[0].identity_provider.algorithms[1]",
        "applications[0].tenants[0].colour",
        "applications[0].tenants[1].custom_domain",
    ] {
        assert!(stderr.contains(expected), "missing `{expected}` in:\n{stderr}");
    }
}

#[test]
fn check_reports_name_conflicts_and_prints_the_host_table() {
    let directory = temp_dir();
    let base = base_config(directory.path());
    let conflicting = format!(
        r#"{base}
[platform]
apex_domain = "edge.test"
region = "us"
account = "acct"

[[applications]]
id = "app_a"
domain_name = "portal"
production_validations = false
upstream = "http://127.0.0.1:3000"

[[applications.tenants]]
id = "tnt_1"
domain_name = "acme"
custom_domain = "login.acme.test"

[[applications.tenants]]
id = "tnt_2"
domain_name = "acme"
custom_domain = "login.acme.test"
"#
    );
    let config_path = directory.path().join("conflict.toml");
    std::fs::write(&config_path, conflicting).unwrap();
    let output = check(&config_path);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("applications[0].tenants[1].domain_name"), "{stderr}");
    assert!(stderr.contains("applications[0].tenants[1].custom_domain"), "{stderr}");

    let valid = format!(
        r#"{base}
[platform]
apex_domain = "edge.test"
region = "us"
account = "acct"

[[applications]]
id = "app_a"
domain_name = "portal"
production_validations = false
custom_domain = "auth.portal.test"
upstream = "http://127.0.0.1:3000"

[[applications.tenants]]
id = "tnt_1"
domain_name = "acme"
custom_domain = "login.acme.test"
"#
    );
    std::fs::write(&config_path, valid).unwrap();
    let output = check(&config_path);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    for (host, kind) in [
        ("login.acme.test", "tenant-custom-domain"),
        ("acme.auth.portal.test", "tenant-subdomain"),
        ("acme-portal-acct.us.edge.test", "tenant-vanity"),
        ("portal-acct.us.edge.test", "application-vanity"),
        ("auth.portal.test", "application-custom-domain"),
    ] {
        let line = stdout
            .lines()
            .find(|line| line.starts_with(host))
            .unwrap_or_else(|| panic!("{host}: {stdout}"));
        assert!(line.contains(kind) && line.contains("app_a"), "{line}");
    }
}

#[test]
fn clients_without_sni_get_the_default_name_when_one_is_configured() {
    let Fixture { edge, _directory, .. } = fixture_with("default_server_name = \"login.acme.test\"");
    let by_ip = |host: &str| {
        curl(
            &["-k"],
            &[
                "-H",
                &format!("Host: {host}"),
                &format!("https://127.0.0.1:{}/ip", edge.https.port()),
            ],
        )
    };
    let response = by_ip("login.acme.test");
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.received("x-tenant-id"), ["tnt_acme"]);
    // The default certificate still has to cover the Host.
    assert_eq!(by_ip("globex.auth.portal.test").status, 421);
    // An IP literal sent as SNI (wrk and some load balancers do) is handled the same way, and a
    // client cannot fill the log with it: rustls's warning about it is not logged per connection.
    let handshake = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{}", edge.https.port())])
        .args(["-servername", "127.0.0.1", "-alpn", "http/1.1"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let output = String::from_utf8_lossy(&handshake.stdout);
    assert!(
        output.contains("Verify return code") && output.contains("CN"),
        "{output}"
    );
    assert!(!edge.stderr().contains("Illegal SNI"), "{}", edge.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_ends_at_the_read_timeout_without_counting_as_a_failure() {
    let Fixture { edge, pki, _directory } =
        tokio::task::spawn_blocking(|| fixture_of("", "", "[upstream]\nread_timeout_ms = 1000"))
            .await
            .unwrap();
    let (mut stream, head) = open_websocket(&edge, &pki).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "idle tunnel still open: {read:?}"
    );
    let metrics = tokio::task::spawn_blocking(move || (edge.metrics(), edge))
        .await
        .unwrap()
        .0;
    assert!(
        !metrics.contains("vestibule_upstream_errors_total{"),
        "an idle tunnel counted as an upstream failure:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_connection_at_the_send_timeout() {
    let Fixture { edge, pki, _directory } =
        tokio::task::spawn_blocking(|| fixture_of("", "send_timeout_seconds = 1", ""))
            .await
            .unwrap();
    const SIZE: usize = 256 << 20;
    let mut stream = tls_connect(edge.https, "login.acme.test", pki.root_store(), &[b"http/1.1"])
        .await
        .unwrap();
    stream
        .write_all(format!("GET /bytes/{SIZE} HTTP/1.1\r\nHost: login.acme.test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Not reading: the socket buffers fill and the edge's writes stall.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut received = 0usize;
    let mut buffer = vec![0u8; 1 << 20];
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => received += read,
            }
            if received >= SIZE {
                return;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "still receiving after 60 s ({received} bytes)");
    assert!(
        received < SIZE,
        "the whole response arrived: the edge waited for the client instead of giving up"
    );
}

#[test]
fn a_chunked_upstream_answer_reaches_http_1_0_clients_unchunked() {
    let Fixture { edge, _directory, .. } = fixture();
    let response = edge.curl(&["--http1.1", "https://login.acme.test/chunked"]);
    assert_eq!(
        (response.status, response.body.as_str()),
        (200, "hello, world"),
        "{response:?}"
    );
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    // HTTP/1.0 has no chunked coding (RFC 9112 §6.1): the body ends with the connection. (Without
    // ALPN: `http/1.0` is not a protocol the edge offers, and RFC 7301 §3.2 makes that fatal.)
    let response = edge.curl(&["--http1.0", "--no-alpn", "https://login.acme.test/chunked"]);
    assert_eq!(
        (response.status, response.body.as_str()),
        (200, "hello, world"),
        "{response:?}"
    );
    assert_eq!(response.header("transfer-encoding"), None, "{response:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unframed_upstream_answer_is_framed_for_http_1_1_clients() {
    let Fixture { edge, pki, _directory } = tokio::task::spawn_blocking(fixture).await.unwrap();
    let mut stream = tls_connect(edge.https, "login.acme.test", pki.root_store(), &[b"http/1.1"])
        .await
        .unwrap();
    stream
        .write_all(b"GET /unframed HTTP/1.1\r\nHost: login.acme.test\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    // The answer must end on its own (chunked); the connection then serves another request.
    let complete = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let read = stream.read(&mut buffer).await.unwrap();
            assert!(read > 0, "closed: {}", String::from_utf8_lossy(&received));
            received.extend_from_slice(&buffer[..read]);
            if received.ends_with(b"0\r\n\r\n") {
                return;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&received).to_ascii_lowercase();
    assert!(complete.is_ok(), "no end of body in 5 s: {text}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(text.contains("hello, world"), "{text}");
    let (head, _) = exchange(&mut stream, "GET /again HTTP/1.1\r\nHost: login.acme.test\r\n\r\n").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
}

#[test]
fn an_upstream_answering_past_its_response_never_answers_the_next_request() {
    let Fixture { edge, _directory, .. } = fixture();
    for version in ["--http1.1", "--http2"] {
        let response = edge.curl(&[version, "https://login.acme.test/overrun"]);
        assert_eq!((response.status, response.body.as_str()), (200, "ok"), "{response:?}");
        // The bytes sent behind that answer, while the connection idled in the pool, must not be
        // taken for the answer to anyone's next request.
        std::thread::sleep(vestibule::ops::echo::OVERRUN_DELAY * 5);
        for _ in 0..3 {
            let next = edge.curl(&[version, "https://login.acme.test/next"]);
            assert_eq!(next.status, 200, "{next:?}");
            assert!(!next.body.contains("smuggled"), "{next:?}");
            assert_eq!(next.json()["path"], "/next");
        }
    }
}

#[test]
fn a_false_content_length_beside_chunks_does_not_reach_clients() {
    let Fixture { edge, _directory, .. } = fixture();
    for version in ["--http1.1", "--http2"] {
        let response = edge.curl(&[version, "https://login.acme.test/both-framings"]);
        assert_eq!(
            (response.status, response.body.as_str()),
            (200, "ok"),
            "{version}: {response:?}"
        );
        assert_eq!(response.header("content-length"), None, "{version}: {response:?}");
    }
}

/// Bodiless requests are served by the edge's own HTTP/1.1 code, the rest by pingora's session;
/// one connection switches between them and keeps its order, pipelined requests included.
#[tokio::test]
async fn one_connection_serves_every_kind_of_request_in_order() {
    let Fixture { edge, pki, _directory } = tokio::task::spawn_blocking(fixture).await.unwrap();
    let mut stream = tls_connect(edge.https, "login.acme.test", pki.root_store(), &[b"http/1.1"])
        .await
        .unwrap();
    let json = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap();
    let (head, body) = exchange(&mut stream, "GET /one HTTP/1.1\r\nHost: login.acme.test\r\n\r\n").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: keep-alive"), "{head}");
    assert_eq!(head.matches("\r\ndate: ").count(), 1, "{head}");
    assert_eq!(json(&body)["path"], "/one");
    let (head, body) = exchange(
        &mut stream,
        "POST /two HTTP/1.1\r\nHost: login.acme.test\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(
        (json(&body)["path"].clone(), json(&body)["body_length"].clone()),
        ("/two".into(), 5.into())
    );
    // Three requests in one write: a bodiless one, one with a body, a bodiless one.
    stream
        .write_all(
            b"GET /three HTTP/1.1\r\nHost: login.acme.test\r\n\r\n\
              POST /four HTTP/1.1\r\nHost: login.acme.test\r\nContent-Length: 2\r\n\r\nhi\
              GET /five HTTP/1.1\r\nHost: login.acme.test\r\n\r\n",
        )
        .await
        .unwrap();
    for path in ["/three", "/four", "/five"] {
        let (head, body) = exchange(&mut stream, "").await;
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        assert_eq!(json(&body)["path"], path);
    }
    stream
        .write_all(b"HEAD /six HTTP/1.1\r\nHost: login.acme.test\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await.to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 200") && head.contains("content-length: "),
        "{head}"
    );
    // HEAD's answer has no body even though it carries the length: the next answer follows it.
    let (head, body) = exchange(&mut stream, "GET /seven HTTP/1.1\r\nHost: login.acme.test\r\n\r\n").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(json(&body)["path"], "/seven");
    let (head, _) = exchange(
        &mut stream,
        "GET /last HTTP/1.1\r\nHost: login.acme.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.contains("connection: close"), "{head}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the edge closes after `Connection: close`: {rest:?}"
    );
}
