//! On-demand certificates against a real ACME server (Pebble): first handshakes, bursts,
//! refusals, restarts, CA outages, both challenge types with real validation, renewal, and
//! several instances sharing certificates, locks and challenge answers through a real Redis.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use support::pebble::{MockDns, Pebble, PebbleOptions};
use support::redis::Redis;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TENANTS: usize = 30;

fn tenant_domain(index: usize) -> String {
    format!("login.c{index}.test")
}

/// An edge with tenants c0..c29, each with custom domain `login.c{i}.test`, and ACME on `pebble`.
fn edge_config(
    directory: &Path,
    pebble: &Pebble,
    https_port: u16,
    http_port: u16,
    echo: &Echo,
    acme_extra: &str,
) -> String {
    let mut text = base_config_on(directory, https_port)
        .replace("http = \"127.0.0.1:0\"", &format!("http = \"127.0.0.1:{http_port}\""));
    text.push_str(&format!(
        r#"
[platform]
apex_domain = "edge.test"
region = "us"
account = "acct"

[acme]
directory_url = "{directory_url}"
ca_root = "{ca}"
storage = "{storage}"
contact = ["mailto:ops@edge.test"]
failure_backoff_initial_seconds = 1
failure_backoff_max_seconds = 2
renew_check_interval_seconds = 1
{acme_extra}

[[applications]]
id = "app_portal"
domain_name = "portal"
production_validations = false
custom_domain = "auth.portal.test"
upstream = "{echo}"
"#,
        directory_url = pebble.directory_url(),
        ca = pebble.ca_path.display(),
        storage = directory.join("acme").display(),
        echo = echo.url(),
    ));
    for index in 0..TENANTS {
        text.push_str(&format!(
            "\n[[applications.tenants]]\nid = \"tnt_c{index}\"\ndomain_name = \"c{index}\"\ncustom_domain = \"{}\"\n",
            tenant_domain(index)
        ));
    }
    text
}

/// A full TLS handshake and one request; returns the leaf certificate's DER and the status.
async fn fetch(address: SocketAddr, name: &str, roots: rustls::RootCertStore) -> std::io::Result<(Vec<u8>, u16)> {
    let mut stream = tls_connect(address, name, roots, &[b"http/1.1"]).await?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    stream
        .write_all(format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let status = String::from_utf8_lossy(&response)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((leaf, status))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn orders_metric(edge: &Edge, result: &str) -> f64 {
    metric_value(
        &edge.metrics(),
        &format!(r#"vestibule_acme_orders_total{{result="{result}"}}"#),
    )
    .unwrap_or(0.0)
}

struct World {
    directory: tempfile::TempDir,
    pki: Pki,
    echo: Echo,
    pebble: Pebble,
}

fn world(options: &PebbleOptions) -> World {
    let directory = temp_dir();
    let pki = Pki::new(directory.path());
    let pebble = Pebble::start(directory.path(), &pki, options);
    World {
        echo: Echo::start(),
        pki,
        pebble,
        directory,
    }
}

fn start_edge(world: &World, acme_extra: &str) -> Edge {
    let text = edge_config(world.directory.path(), &world.pebble, 0, 0, &world.echo, acme_extra);
    Edge::start(world.directory.path(), &text, &world.pki.ca_path)
}

#[test]
fn first_handshake_waits_for_a_pebble_certificate_that_verifies() {
    let world = world(&PebbleOptions::default());
    let edge = start_edge(&world, "");
    let runtime = runtime();
    let started = Instant::now();
    let (leaf, status) = runtime
        .block_on(fetch(edge.https, &tenant_domain(0), world.pebble.root_store()))
        .expect("handshake with a Pebble chain");
    let elapsed = started.elapsed();
    assert_eq!(status, 200);
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    assert!(parsed.issuer().to_string().contains("Pebble"), "{}", parsed.issuer());
    // curl, with the root from Pebble's management API, agrees.
    let root = world.directory.path().join("pebble-root.pem");
    std::fs::write(&root, world.pebble.root_pem()).unwrap();
    let response = curl(
        &[
            "--cacert",
            root.to_str().unwrap(),
            "--connect-to",
            &format!("::127.0.0.1:{}", edge.https.port()),
        ],
        &[&format!("https://{}/", tenant_domain(0))],
    );
    assert_eq!(response.received("x-tenant-id"), ["tnt_c0"]);
    // Stored durably, the key private.
    use std::os::unix::fs::PermissionsExt;
    let key = world.directory.path().join("acme/certificates/login.c0.test/key.pem");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(world.directory.path().join("acme/account.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(orders_metric(&edge, "success"), 1.0);
    let metrics = edge.metrics();
    assert!(
        metric_value(
            &metrics,
            r#"vestibule_certificate_expiry_seconds{certificate="login.c0.test",source="managed"}"#
        )
        .is_some()
    );
}

#[test]
fn a_burst_of_twenty_new_names_succeeds_with_one_order_each() {
    let world = world(&PebbleOptions::default());
    let edge = start_edge(&world, "");
    let runtime = runtime();
    let roots = world.pebble.root_store();
    let orders_before = world.pebble.orders();
    let results = runtime.block_on(async {
        let mut tasks = Vec::new();
        for index in 0..20 {
            for _ in 0..3 {
                let roots = roots.clone();
                let https = edge.https;
                tasks.push(tokio::spawn(async move {
                    (index, fetch(https, &tenant_domain(index), roots).await)
                }));
            }
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        results
    });
    let failed: Vec<_> = results.iter().filter(|(_, r)| !matches!(r, Ok((_, 200)))).collect();
    assert!(
        failed.is_empty(),
        "{} of 60 handshakes failed: {failed:?}\nedge stderr:\n{}\npebble log:\n{}",
        failed.len(),
        edge.stderr(),
        std::fs::read_to_string(world.directory.path().join("pebble.log")).unwrap_or_default()
    );
    assert_eq!(world.pebble.orders() - orders_before, 20, "exactly one order per name");
    assert_eq!(orders_metric(&edge, "success"), 20.0);
}

#[test]
fn unknown_names_are_refused_fast_without_any_order() {
    let world = world(&PebbleOptions::default());
    let edge = start_edge(&world, "");
    let runtime = runtime();
    for name in [
        "nobody.test",
        "login.c999.test",
        "c0-portal-acct.us.edge.test",
        "auth.portal.test",
        "x.login.c0.test",
    ] {
        let started = Instant::now();
        let Err(error) = runtime.block_on(tls_connect(edge.https, name, world.pebble.root_store(), &[b"http/1.1"]))
        else {
            panic!("{name}: handshake should be refused");
        };
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "{name}: refused in {:?}",
            started.elapsed()
        );
        assert!(format!("{error:?}").contains("UnrecognisedName"), "{name}: {error:?}");
    }
    assert_eq!(world.pebble.orders(), 0, "no ACME traffic for refused names");
    let metrics = edge.metrics();
    assert!(
        metric_value(&metrics, r#"vestibule_acme_refusals_total{reason="unknown_name"}"#).unwrap() >= 3.0,
        "{metrics}"
    );
}

#[test]
fn certificates_survive_restarts_and_reloads_and_new_tenants_qualify_without_restart() {
    let world = world(&PebbleOptions::default());
    let runtime = runtime();
    let roots = world.pebble.root_store();
    let first_leaf = {
        let edge = start_edge(&world, "");
        runtime
            .block_on(fetch(edge.https, &tenant_domain(0), roots.clone()))
            .unwrap()
            .0
    };
    let orders = world.pebble.orders();
    let edge = start_edge(&world, "");
    let (again, status) = runtime
        .block_on(fetch(edge.https, &tenant_domain(0), roots.clone()))
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(again, first_leaf, "the same certificate after a restart");
    assert_eq!(world.pebble.orders(), orders, "no new order after a restart");
    assert_eq!(orders_metric(&edge, "success"), 0.0);

    // A reload adds a tenant: its name is eligible at once, the stored certificate stays.
    let mut text = std::fs::read_to_string(&edge.config_path).unwrap();
    text.push_str(
        "\n[[applications.tenants]]\nid = \"tnt_late\"\ndomain_name = \"late\"\ncustom_domain = \"login.late.test\"\n",
    );
    std::fs::write(&edge.config_path, text).unwrap();
    edge.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || {
        metric_value(&edge.metrics(), r#"vestibule_config_reloads_total{result="success"}"#) == Some(2.0)
    }));
    assert_eq!(
        runtime
            .block_on(fetch(edge.https, "login.late.test", roots.clone()))
            .unwrap()
            .1,
        200
    );
    assert_eq!(
        runtime.block_on(fetch(edge.https, &tenant_domain(0), roots)).unwrap().0,
        first_leaf
    );
}

#[test]
fn a_ca_outage_keeps_existing_certificates_and_new_names_recover() {
    let mut world = world(&PebbleOptions::default());
    let edge = start_edge(&world, "handshake_wait_ms = 5000");
    let runtime = runtime();
    let roots = world.pebble.root_store();
    assert_eq!(
        runtime
            .block_on(fetch(edge.https, &tenant_domain(0), roots.clone()))
            .unwrap()
            .1,
        200
    );
    world.pebble.stop();
    // Existing certificates keep serving.
    assert_eq!(
        runtime.block_on(fetch(edge.https, &tenant_domain(0), roots)).unwrap().1,
        200
    );
    // A new name fails cleanly: an alert, promptly, and no stuck handshake.
    let started = Instant::now();
    let Err(error) = runtime.block_on(tls_connect(
        edge.https,
        &tenant_domain(1),
        rustls::RootCertStore::empty(),
        &[b"http/1.1"],
    )) else {
        panic!("no certificate can exist while the CA is down");
    };
    assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
    assert!(format!("{error:?}").contains("InternalError"), "{error:?}");
    assert!(orders_metric(&edge, "failure") >= 1.0);
    // The CA returns (fresh state: the account must be registered again); the name recovers.
    world.pebble.run(&PebbleOptions::default());
    let roots = world.pebble.root_store();
    let recovered = eventually(Duration::from_secs(15), || {
        matches!(
            runtime.block_on(fetch(edge.https, &tenant_domain(1), roots.clone())),
            Ok((_, 200))
        )
    });
    assert!(
        recovered,
        "the new name got its certificate once the CA was back:\n{}",
        edge.stderr()
    );
}

#[test]
fn both_challenge_types_validate_for_real_and_fall_back() {
    let dns = MockDns::start();
    let https_port = free_port();
    let http_port = free_port();
    let dead = dead_port();
    // Pebble validates for real, through the mock DNS, against the edge's own listeners.
    let tls_only = PebbleOptions {
        always_valid: false,
        http_port: dead,
        tls_port: https_port,
        dns: Some(dns.address),
        validity_seconds: None,
    };
    let mut world = world(&tls_only);
    let text = edge_config(
        world.directory.path(),
        &world.pebble,
        https_port,
        http_port,
        &world.echo,
        r#"challenges = ["tls-alpn-01", "http-01"]"#,
    );
    let edge = Edge::start(world.directory.path(), &text, &world.pki.ca_path);
    let runtime = runtime();
    let first = runtime.block_on(fetch(edge.https, &tenant_domain(0), world.pebble.root_store()));
    assert!(
        matches!(first, Ok((_, 200))),
        "TLS-ALPN-01: {first:?}\n{}\n{}",
        edge.stderr(),
        std::fs::read_to_string(world.directory.path().join("pebble.log")).unwrap_or_default()
    );
    let metrics = edge.metrics();
    assert!(
        metric_value(
            &metrics,
            r#"vestibule_acme_challenges_answered_total{challenge="tls-alpn-01"}"#
        )
        .unwrap()
            >= 1.0,
        "{metrics}"
    );

    // TLS-ALPN-01 cannot reach the edge any more: the order falls back to HTTP-01.
    let http_only = PebbleOptions {
        always_valid: false,
        http_port,
        tls_port: dead,
        dns: Some(dns.address),
        validity_seconds: None,
    };
    world.pebble.run(&http_only);
    let (_, status) = runtime
        .block_on(fetch(edge.https, &tenant_domain(1), world.pebble.root_store()))
        .unwrap();
    assert_eq!(status, 200, "HTTP-01 after TLS-ALPN-01 failed:\n{}", edge.stderr());
    let metrics = edge.metrics();
    assert!(
        metric_value(
            &metrics,
            r#"vestibule_acme_challenges_answered_total{challenge="http-01"}"#
        )
        .unwrap()
            >= 1.0,
        "{metrics}"
    );
    assert!(edge.stderr().contains("trying the next type"));
}

#[test]
fn short_lived_certificates_renew_without_a_failed_request() {
    let options = PebbleOptions {
        validity_seconds: Some(30),
        ..PebbleOptions::default()
    };
    let world = world(&options);
    let edge = start_edge(&world, "");
    let runtime = runtime();
    let roots = world.pebble.root_store();
    let (first, status) = runtime
        .block_on(fetch(edge.https, &tenant_domain(0), roots.clone()))
        .unwrap();
    assert_eq!(status, 200);
    // New connections, one after another, until a renewed certificate is served (due at 20 s).
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut served = 0;
    let renewed = loop {
        match runtime.block_on(fetch(edge.https, &tenant_domain(0), roots.clone())) {
            Ok((leaf, 200)) => {
                served += 1;
                if leaf != first {
                    break true;
                }
            }
            other => failures.push(format!("{:?}", other.map(|(_, status)| status))),
        }
        if started.elapsed() > Duration::from_secs(28) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(renewed, "no renewal within the certificate's lifetime");
    assert!(failures.is_empty(), "{failures:?}");
    assert!(served > 50);
    assert!(metric_value(&edge.metrics(), r#"vestibule_acme_renewals_total{result="success"}"#).unwrap() >= 1.0);
}

/// An edge of a group sharing `redis`, with its own directory (and so its own local storage).
fn shared_edge(world: &World, redis: &Redis, instance: &str, https_port: u16) -> Edge {
    shared_edge_on(world, redis, instance, https_port, 0)
}

fn shared_edge_on(world: &World, redis: &Redis, instance: &str, https_port: u16, http_port: u16) -> Edge {
    let directory = world.directory.path().join(instance);
    std::fs::create_dir_all(&directory).unwrap();
    let text = edge_config(
        &directory,
        &world.pebble,
        https_port,
        http_port,
        &world.echo,
        &format!("redis_url = \"{}\"\nredis_key_prefix = \"group-1\"", redis.url()),
    );
    Edge::start(&directory, &text, &world.pki.ca_path)
}

#[test]
fn instances_sharing_redis_order_each_name_once_and_serve_the_same_certificate() {
    let world = world(&PebbleOptions::default());
    let redis = Redis::start(world.directory.path());
    let a = shared_edge(&world, &redis, "a", 0);
    let b = shared_edge(&world, &redis, "b", 0);
    let runtime = runtime();
    let roots = world.pebble.root_store();
    let orders_before = world.pebble.orders();
    const NAMES: usize = 10;
    let results = runtime.block_on(async {
        let mut tasks = Vec::new();
        for index in 0..NAMES {
            for https in [a.https, b.https, a.https, b.https] {
                let roots = roots.clone();
                tasks.push(tokio::spawn(async move {
                    (index, https, fetch(https, &tenant_domain(index), roots).await)
                }));
            }
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        results
    });
    let failed: Vec<_> = results.iter().filter(|(_, _, r)| !matches!(r, Ok((_, 200)))).collect();
    assert!(
        failed.is_empty(),
        "{} handshakes failed: {failed:?}\nA:\n{}\nB:\n{}",
        failed.len(),
        a.stderr(),
        b.stderr()
    );
    assert_eq!(
        world.pebble.orders() - orders_before,
        NAMES,
        "one order per name across both instances"
    );
    assert_eq!(
        orders_metric(&a, "success") + orders_metric(&b, "success"),
        NAMES as f64
    );
    for index in 0..NAMES {
        let leaves: Vec<&Vec<u8>> = results
            .iter()
            .filter(|(i, _, _)| *i == index)
            .map(|(_, _, result)| &result.as_ref().unwrap().0)
            .collect();
        assert!(
            leaves.windows(2).all(|pair| pair[0] == pair[1]),
            "both instances serve the one certificate of {}",
            tenant_domain(index)
        );
    }
    assert_eq!(redis.cli(&["SCARD", "group-1:certificates"]), NAMES.to_string());
    assert_eq!(redis.cli(&["EXISTS", "group-1:account"]), "1", "one shared account");
    assert!(
        eventually(Duration::from_secs(5), || redis
            .cli(&["KEYS", "group-1:lock:*"])
            .is_empty()),
        "every issuance lock released"
    );

    // A new instance with empty local storage serves every name from Redis from the start.
    let c = shared_edge(&world, &redis, "c", 0);
    let orders_before = world.pebble.orders();
    for index in 0..NAMES {
        let (leaf, status) = runtime
            .block_on(fetch(c.https, &tenant_domain(index), roots.clone()))
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            &leaf,
            &results
                .iter()
                .find(|(i, _, _)| *i == index)
                .unwrap()
                .2
                .as_ref()
                .unwrap()
                .0
        );
    }
    assert_eq!(world.pebble.orders(), orders_before, "no new order");
    assert!(c.stderr().contains(&format!("certificates={NAMES}")), "{}", c.stderr());
}

#[test]
fn validations_are_answered_by_the_instance_that_did_not_order() {
    let dns = MockDns::start();
    let (validated_https, validated_http) = (free_port(), free_port());
    // Pebble validates against instance A's ports only; every order starts on instance B.
    let tls_only = PebbleOptions {
        always_valid: false,
        http_port: dead_port(),
        tls_port: validated_https,
        dns: Some(dns.address),
        validity_seconds: None,
    };
    let mut world = world(&tls_only);
    let redis = Redis::start(world.directory.path());
    let a = shared_edge_on(&world, &redis, "a", validated_https, validated_http);
    let b = shared_edge(&world, &redis, "b", 0);
    let runtime = runtime();
    let answered = |edge: &Edge, challenge: &str| {
        metric_value(
            &edge.metrics(),
            &format!(r#"vestibule_acme_challenges_answered_total{{challenge="{challenge}"}}"#),
        )
        .unwrap_or(0.0)
    };

    // TLS-ALPN-01: A answers in its pre-TLS hook with the key authorization B put in Redis.
    let result = runtime.block_on(fetch(b.https, &tenant_domain(0), world.pebble.root_store()));
    assert!(
        matches!(result, Ok((_, 200))),
        "{result:?}\nA:\n{}\nB:\n{}",
        a.stderr(),
        b.stderr()
    );
    assert!(answered(&a, "tls-alpn-01") >= 1.0, "A answered from Redis");
    assert_eq!(answered(&b, "tls-alpn-01"), 0.0, "B never saw the validation");

    // HTTP-01: A answers on its plain listener.
    let http_only = PebbleOptions {
        always_valid: false,
        http_port: validated_http,
        tls_port: dead_port(),
        dns: Some(dns.address),
        validity_seconds: None,
    };
    world.pebble.run(&http_only);
    let result = runtime.block_on(fetch(b.https, &tenant_domain(1), world.pebble.root_store()));
    assert!(
        matches!(result, Ok((_, 200))),
        "{result:?}\nA:\n{}\nB:\n{}",
        a.stderr(),
        b.stderr()
    );
    assert!(answered(&a, "http-01") >= 1.0, "A answered from Redis");
    assert_eq!(answered(&b, "http-01"), 0.0);

    assert_eq!(orders_metric(&a, "success"), 0.0);
    assert_eq!(orders_metric(&b, "success"), 2.0);
    assert_eq!(
        redis.cli(&["KEYS", "group-1:challenge:*"]),
        "",
        "answers withdrawn after the orders"
    );
}

#[test]
fn a_redis_outage_keeps_certificates_serving_and_recovers() {
    let world = world(&PebbleOptions::default());
    let mut redis = Redis::start(world.directory.path());
    let a = shared_edge(&world, &redis, "a", 0);
    let runtime = runtime();
    let roots = world.pebble.root_store();
    let (issued, status) = runtime
        .block_on(fetch(a.https, &tenant_domain(0), roots.clone()))
        .unwrap();
    assert_eq!(status, 200);

    // A hung Redis (connections open, no answers): served names are unaffected, a new name fails
    // with an alert after the command deadline, not after the handshake wait, and recovers.
    redis.freeze(true);
    let (leaf, status) = runtime
        .block_on(fetch(a.https, &tenant_domain(0), roots.clone()))
        .unwrap();
    assert_eq!((leaf == issued, status), (true, 200));
    let started = Instant::now();
    let refused = runtime.block_on(fetch(a.https, &tenant_domain(2), roots.clone()));
    assert!(refused.is_err(), "{refused:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    redis.freeze(false);
    let recovered = eventually(Duration::from_secs(15), || {
        matches!(
            runtime.block_on(fetch(a.https, &tenant_domain(2), roots.clone())),
            Ok((_, 200))
        )
    });
    assert!(recovered, "{}", a.stderr());

    redis.stop();
    let orders_before = world.pebble.orders();
    let (leaf, status) = runtime
        .block_on(fetch(a.https, &tenant_domain(0), roots.clone()))
        .unwrap();
    assert_eq!(
        (leaf == issued, status),
        (true, 200),
        "existing certificate keeps serving"
    );
    // No shared lock, no order: a new name fails cleanly with an alert.
    let refused = runtime.block_on(fetch(a.https, &tenant_domain(1), roots.clone()));
    assert!(
        matches!(&refused, Err(error) if error.to_string().contains("InternalError")),
        "{refused:?}"
    );
    assert_eq!(world.pebble.orders(), orders_before, "no order without the lock");
    assert!(a.stderr().contains("redis"), "{}", a.stderr());

    // A restart during the outage still serves what this instance issued (its local copy).
    drop(a);
    let a = shared_edge(&world, &redis, "a", 0);
    let (leaf, _) = runtime
        .block_on(fetch(a.https, &tenant_domain(0), roots.clone()))
        .unwrap();
    assert_eq!(leaf, issued);

    redis.run();
    let recovered = eventually(Duration::from_secs(15), || {
        matches!(
            runtime.block_on(fetch(a.https, &tenant_domain(1), roots.clone())),
            Ok((_, 200))
        )
    });
    assert!(recovered, "{}", a.stderr());
}
