//! Operations end to end: reloads under load, metrics, health, access logs, graceful shutdown.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::load::Load;
use support::*;

struct Setup {
    directory: tempfile::TempDir,
    pki: Pki,
    echo: Echo,
    cert: (std::path::PathBuf, std::path::PathBuf),
}

fn setup() -> Setup {
    let directory = temp_dir();
    let pki = Pki::new(directory.path());
    let cert = pki.issue(&["*.us.edge.test"]);
    Setup {
        directory,
        pki,
        echo: Echo::start(),
        cert,
    }
}

/// A configuration with application `portal` and the given tenants (id `tnt_{name}`).
fn config(setup: &Setup, tenants: &[String], extra: &str) -> String {
    let mut text = format!(
        r#"{base}
[platform]
apex_domain = "edge.test"
region = "us"
account = "acct"

[tls]
certificates = [{{ certificate = "{cert}", private_key = "{key}" }}]
{extra}
[[applications]]
id = "app_portal"
domain_name = "portal"
production_validations = false
upstream = "{echo}"
"#,
        base = base_config(setup.directory.path()),
        cert = setup.cert.0.display(),
        key = setup.cert.1.display(),
        echo = setup.echo.url(),
    );
    for tenant in tenants {
        text.push_str(&format!(
            "\n[[applications.tenants]]\nid = \"tnt_{tenant}\"\ndomain_name = \"{tenant}\"\n"
        ));
    }
    text
}

/// Replaces the file atomically, as an operator's deploy tool should.
fn write_atomically(path: &Path, text: &str) {
    let temporary = path.with_extension("toml.new");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

fn reloads(edge: &Edge, result: &str) -> f64 {
    metric_value(
        &edge.metrics(),
        &format!(r#"vestibule_config_reloads_total{{result="{result}"}}"#),
    )
    .unwrap_or(0.0)
}

fn tenant_url(tenant: &str) -> String {
    format!("https://{tenant}-portal-acct.us.edge.test/")
}

#[test]
fn reloads_under_load_drop_no_request() {
    let setup = setup();
    let initial: Vec<String> = ["stable", "new0"].iter().map(|s| s.to_string()).collect();
    let edge = Edge::start(
        setup.directory.path(),
        &config(&setup, &initial, ""),
        &setup.pki.ca_path,
    );
    let load = Load::start(
        edge.https,
        "stable-portal-acct.us.edge.test",
        setup.pki.root_store(),
        4,
        100,
    );
    assert!(eventually(Duration::from_secs(10), || load
        .ok
        .load(std::sync::atomic::Ordering::Relaxed)
        > 100));

    let mut live: Vec<String> = initial.clone();
    for version in 1..=20 {
        let (successes, failures) = (reloads(&edge, "success"), reloads(&edge, "failure"));
        let invalid = version == 10;
        let mut tenants = vec![
            "stable".to_owned(),
            format!("new{version}"),
            format!("new{}", version - 1),
        ];
        let mut extra = String::new();
        if version == 15 {
            // A listener change: applied only by a restart, reported as such; the rest applies.
            extra = "[upstream]\nconnect_timeout_ms = 1500\n".to_owned();
        }
        let mut text = config(&setup, &tenants, &extra);
        if invalid {
            text.push_str("\n[[applications.tenants]]\nid = \"tnt_bad\"\ndomain_name = \"not a label!\"\n");
        }
        if version == 15 {
            text = text.replace("http = \"127.0.0.1:0\"\n", "");
        }
        write_atomically(&edge.config_path, &text);
        if invalid {
            assert!(
                eventually(Duration::from_secs(10), || reloads(&edge, "failure") > failures),
                "v{version}: no failed reload counted"
            );
            assert!(
                edge.stderr().contains("applications[0].tenants[3].domain_name"),
                "the error names its key:\n{}",
                edge.stderr()
            );
            tenants = live.clone();
        } else {
            assert!(
                eventually(Duration::from_secs(10), || reloads(&edge, "success") > successes),
                "v{version}: not reloaded"
            );
        }
        // The live configuration serves exactly its tenants.
        for tenant in &tenants {
            let response = edge.get(&tenant_url(tenant));
            assert_eq!(response.status, 200, "v{version}: {tenant}: {response:?}");
            assert_eq!(response.received("x-tenant-id"), [format!("tnt_{tenant}")]);
        }
        for removed in live.iter().filter(|t| !tenants.contains(t)) {
            let response = edge.get(&tenant_url(removed));
            assert_eq!(
                response.status, 421,
                "v{version}: {removed} should be gone: {response:?}"
            );
        }
        live = tenants;
    }
    let (ok, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} failed requests during reloads, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(ok > 500, "only {ok} requests completed");
    assert_eq!(reloads(&edge, "failure"), 1.0);
    assert_eq!(reloads(&edge, "success"), 20.0, "initial load plus 19 valid versions");
    assert!(
        edge.stderr().contains("take effect after a restart"),
        "listener change reported"
    );
    let expected = ring::digest::digest(
        &ring::digest::SHA256,
        std::fs::read(&edge.config_path).unwrap().as_slice(),
    );
    let fingerprint: String = expected.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let metrics = edge.metrics();
    assert_eq!(
        metric_value(
            &metrics,
            &format!(r#"vestibule_config_info{{fingerprint="{fingerprint}"}}"#)
        ),
        Some(1.0)
    );
    let readiness = curl(&[], &[&format!("http://{}/readyz", edge.admin)]);
    assert_eq!(readiness.body.trim(), format!("ready {fingerprint}"));
}

#[test]
fn metrics_follow_requests_reloads_and_auth_failures() {
    let setup = setup();
    let idp = format!(
        "\n[[applications]]\nid = \"app_api\"\ndomain_name = \"api\"\nproduction_validations = false\nupstream = \"{echo}\"\n\n\
         [applications.identity_provider]\nname = \"idp\"\nissuers = [\"https://issuer.test\"]\njwks_url = \"http://127.0.0.1:{dead}/jwks\"\naudiences = [\"api\"]\n\n\
         [[applications.tenants]]\nid = \"tnt_acme\"\ndomain_name = \"acme\"\n",
        echo = setup.echo.url(),
        dead = dead_port()
    );
    let tenants = vec!["acme".to_owned()];
    let text = format!("{}{idp}", config(&setup, &tenants, ""));
    let edge = Edge::start(setup.directory.path(), &text, &setup.pki.ca_path);
    let health = curl(&[], &[&format!("http://{}/healthz", edge.admin)]);
    assert_eq!((health.status, health.body.trim()), (200, "ok"));

    let before = edge.metrics();
    let value = |metrics: &str, series: &str| metric_value(metrics, series).unwrap_or(0.0);
    for _ in 0..5 {
        assert_eq!(edge.get(&tenant_url("acme")).status, 200);
    }
    assert_eq!(edge.get("https://nobody-portal-acct.us.edge.test/").status, 421);
    for _ in 0..2 {
        let response = edge.curl(&[
            "-H",
            "Authorization: Bearer not-a-jwt",
            "https://acme-api-acct.us.edge.test/v1",
        ]);
        assert_eq!(response.status, 401);
    }
    let after = edge.metrics();
    let delta = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(
        delta(r#"vestibule_requests_total{application="app_portal",status_class="2xx"}"#),
        5.0
    );
    assert_eq!(
        delta(r#"vestibule_request_duration_seconds_count{application="app_portal"}"#),
        5.0
    );
    assert_eq!(
        delta(r#"vestibule_upstream_duration_seconds_count{application="app_portal"}"#),
        5.0
    );
    assert_eq!(
        delta(r#"vestibule_edge_overhead_seconds_count{application="app_portal"}"#),
        5.0
    );
    assert_eq!(
        delta(r#"vestibule_requests_total{application="app_api",status_class="4xx"}"#),
        2.0
    );
    assert_eq!(
        delta(r#"vestibule_auth_outcomes_total{application="app_api",outcome="invalid"}"#),
        2.0
    );
    assert_eq!(delta(r#"vestibule_rejections_total{reason="invalid_token"}"#), 2.0);
    assert_eq!(delta(r#"vestibule_rejections_total{reason="unknown_host"}"#), 1.0);
    assert!(delta(r#"vestibule_tls_handshakes_total{version="TLSv1_3"}"#) >= 8.0);
    assert!(after.contains("vestibule_build_info{pingora=\"0.9.1\""), "{after}");
    let expiry = value(
        &after,
        r#"vestibule_certificate_expiry_seconds{certificate="*.us.edge.test",source="configured"}"#,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now, "certificate expiry exported");
    // No raw client host ever becomes a label.
    assert!(!after.contains("nobody-portal"), "client hosts must not be labels");

    // A reload by SIGHUP moves the reload series.
    let last_success = value(&after, "vestibule_config_last_reload_success_timestamp_seconds");
    std::thread::sleep(Duration::from_millis(1100));
    let changed = format!("{}{idp}", config(&setup, &["acme".to_owned(), "globex".to_owned()], ""));
    std::fs::write(&edge.config_path, changed).unwrap();
    edge.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || reloads(&edge, "success") >= 2.0));
    let reloaded = edge.metrics();
    assert!(value(&reloaded, "vestibule_config_last_reload_success_timestamp_seconds") > last_success);
    assert_eq!(edge.get(&tenant_url("globex")).status, 200);

    // Access log: one JSON line per request, no query strings, tokens or cookies.
    edge.curl(&[
        "-H",
        "Cookie: secret-cookie=abc",
        "https://acme-portal-acct.us.edge.test/path?token=SECRETQUERY",
    ]);
    assert!(eventually(Duration::from_secs(2), || edge
        .access_log()
        .contains("\"/path\"")));
    let log = edge.access_log();
    assert!(!log.contains("SECRETQUERY") && !log.contains("secret-cookie") && !log.contains("not-a-jwt"));
    let line: serde_json::Value = serde_json::from_str(log.lines().find(|l| l.contains("\"/path\"")).unwrap()).unwrap();
    for field in [
        "time",
        "request_id",
        "application",
        "tenant",
        "method",
        "path",
        "status",
        "bytes",
        "edge_ms",
        "upstream_ms",
        "tls_version",
        "sni",
    ] {
        assert!(line.get(field).is_some(), "{field} missing: {line}");
    }
    assert_eq!(line["tenant"], "tnt_acme");
    assert_eq!(line["sni"], "acme-portal-acct.us.edge.test");
}

#[test]
fn sigterm_drains_requests_in_flight() {
    let setup = setup();
    let text = config(&setup, &["acme".to_owned()], "").replace(
        "graceful_shutdown_timeout_seconds = 5",
        "graceful_shutdown_timeout_seconds = 5\ngrace_period_seconds = 1",
    );
    let mut edge = Edge::start(setup.directory.path(), &text, &setup.pki.ca_path);
    let in_flight: Vec<_> = ["--http1.1", "--http2"]
        .into_iter()
        .map(|version| {
            let (ca, https) = (edge.ca_path.clone(), edge.https);
            std::thread::spawn(move || {
                let started = Instant::now();
                let connect_to = format!("::127.0.0.1:{}", https.port());
                let response = curl(
                    &[version, "--cacert", ca.to_str().unwrap(), "--connect-to", &connect_to],
                    &["https://acme-portal-acct.us.edge.test/slow/1500"],
                );
                (response, started.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    edge.signal("TERM");
    // During the grace period the edge reports not ready but still serves new connections.
    assert!(eventually(Duration::from_secs(1), || {
        curl(&[], &[&format!("http://{}/readyz", edge.admin)]).body.trim() == "draining"
    }));
    let during = edge.curl(&["--http1.1", &tenant_url("acme")]);
    assert_eq!(during.status, 200, "{during:?}");
    assert_eq!(
        during.header("connection"),
        Some("close"),
        "connections close while draining"
    );
    for handle in in_flight {
        let (response, elapsed) = handle.join().unwrap();
        assert_eq!(response.status, 200, "the request in flight finished: {response:?}");
        assert!(elapsed >= Duration::from_millis(1400));
    }
    let status = edge.wait_exit(Duration::from_secs(15)).expect("exited after draining");
    assert!(status.success(), "{status}");
}

#[test]
fn graceful_upgrade_hands_over_the_listeners() {
    let setup = setup();
    let ports = [free_port(), free_port(), free_port()];
    let fixed = |text: String| {
        text.replace(
            "https = \"127.0.0.1:0\"",
            &format!("https = \"127.0.0.1:{}\"", ports[0]),
        )
        .replace("http = \"127.0.0.1:0\"", &format!("http = \"127.0.0.1:{}\"", ports[1]))
        .replace(
            "admin = \"127.0.0.1:0\"",
            &format!("admin = \"127.0.0.1:{}\"", ports[2]),
        )
    };
    let old_directory = setup.directory.path().join("old");
    let new_directory = setup.directory.path().join("new");
    std::fs::create_dir_all(&old_directory).unwrap();
    std::fs::create_dir_all(&new_directory).unwrap();
    // Both processes share the upgrade socket; the new one adds a tenant.
    let old_text = fixed(config(&setup, &["acme".to_owned()], ""));
    let new_text = fixed(config(&setup, &["acme".to_owned(), "globex".to_owned()], ""));
    let old_config = old_directory.join("vestibule.toml");
    std::fs::write(&old_config, &old_text).unwrap();
    let old = Edge::start_with(&old_directory, &old_config, &setup.pki.ca_path, &[]);

    // Fresh connections the whole time: each must succeed, none may be refused.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (stop, ca, https) = (stop.clone(), setup.pki.ca_path.clone(), old.https);
        std::thread::spawn(move || {
            let mut outcomes = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let output = std::process::Command::new("curl")
                    .args([
                        "-s",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "--max-time",
                        "10",
                        "--cacert",
                    ])
                    .arg(&ca)
                    .args([
                        "--connect-to",
                        &format!("::127.0.0.1:{}", https.port()),
                        "https://acme-portal-acct.us.edge.test/",
                    ])
                    .output()
                    .unwrap();
                outcomes.push(String::from_utf8_lossy(&output.stdout).into_owned());
            }
            outcomes
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let new_config = new_directory.join("vestibule.toml");
    std::fs::write(&new_config, &new_text).unwrap();
    let upgrade =
        std::thread::spawn(move || Edge::start_with(&new_directory, &new_config, &setup.pki.ca_path.clone(), &["-u"]));
    std::thread::sleep(Duration::from_millis(500));
    old.signal("QUIT");
    let new = upgrade.join().unwrap();
    let mut old = old;
    assert!(
        old.wait_exit(Duration::from_secs(20)).is_some(),
        "the old process exits after handing over"
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcomes = prober.join().unwrap();
    assert!(outcomes.len() > 10, "{outcomes:?}");
    assert!(
        outcomes.iter().all(|code| code == "200"),
        "requests failed during the upgrade: {outcomes:?}"
    );
    assert_eq!(
        new.get(&tenant_url("globex")).status,
        200,
        "the new process serves the new configuration"
    );
}
