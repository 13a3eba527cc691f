//! First byte for a never-seen tenant name: TCP connect → ClientHello → ACME order against Pebble
//! (real TLS-ALPN-01 validation through mock DNS, `PEBBLE_VA_NOSLEEP=1`) → handshake → response.
//!
//!     cargo bench --bench acme_first_byte
//!
//! Prints the median and p90 over names taken one at a time, then a burst of 20 new names at
//! once (failed handshakes and the slowest first byte). Under `cargo test` it runs a short smoke
//! pass (3 names, a burst of 5).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::pebble::{MockDns, Pebble, PebbleOptions};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn first_byte(
    address: std::net::SocketAddr,
    name: &str,
    roots: rustls::RootCertStore,
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut stream = tls_connect(address, name, roots, &[b"http/1.1"])
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
    let elapsed = started.elapsed();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest).await;
    Ok(elapsed)
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

fn main() {
    let full = std::env::args().any(|argument| argument == "--bench");
    let (sequential, burst) = if full { (30, 20) } else { (3, 5) };
    let directory = temp_dir();
    let path = directory.path();
    let pki = Pki::new(path);
    let echo = Echo::start();
    let dns = MockDns::start();
    let https_port = free_port();
    let options = PebbleOptions {
        always_valid: false,
        http_port: dead_port(),
        tls_port: https_port,
        dns: Some(dns.address),
        validity_seconds: None,
    };
    let pebble = Pebble::start(path, &pki, &options);
    let mut config = base_config_on(path, https_port)
        .replace("access_log = ", "access_log = \"off\"\n# ")
        .replace("log_level = \"info\"", "log_level = \"warn,vestibule::acme=debug\"");
    config.push_str(&format!(
        "[platform]\napex_domain = \"edge.test\"\nregion = \"us\"\naccount = \"acct\"\n\n[acme]\ndirectory_url = \"{}\"\nca_root = \"{}\"\nstorage = \"{}\"\nchallenges = [\"tls-alpn-01\"]\n\n\
         [[applications]]\nid = \"app\"\ndomain_name = \"app\"\nproduction_validations = false\nupstream = \"{}\"\n",
        pebble.directory_url(),
        pebble.ca_path.display(),
        path.join("acme").display(),
        echo.url()
    ));
    for index in 0..sequential + burst {
        config.push_str(&format!("\n[[applications.tenants]]\nid = \"t{index}\"\ndomain_name = \"t{index}\"\ncustom_domain = \"login.t{index}.bench\"\n"));
    }
    let edge = Edge::start(path, &config, &pki.ca_path);
    let roots = pebble.root_store();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Warm the ACME account (created once per edge, not per name) with one name outside the sample.
    let warm = runtime.block_on(first_byte(edge.https, "login.t0.bench", roots.clone()));
    assert!(warm.is_ok(), "warm-up failed: {warm:?}\n{}", edge.stderr());

    let mut times = Vec::new();
    for index in 1..sequential {
        let name = format!("login.t{index}.bench");
        match runtime.block_on(first_byte(edge.https, &name, roots.clone())) {
            Ok(elapsed) => times.push(elapsed),
            Err(error) => panic!("{name}: {error}\n{}", edge.stderr()),
        }
    }
    times.sort();
    let names: Vec<String> = (sequential..sequential + burst)
        .map(|index| format!("login.t{index}.bench"))
        .collect();
    let started = Instant::now();
    let results: Vec<Result<Duration, String>> = runtime.block_on(async {
        let tasks: Vec<_> = names
            .iter()
            .map(|name| {
                let (name, roots, address) = (name.clone(), roots.clone(), edge.https);
                tokio::spawn(async move { first_byte(address, &name, roots).await })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        results
    });
    let burst_wall = started.elapsed();
    let failures = results.iter().filter(|r| r.is_err()).count();
    let mut burst_times: Vec<Duration> = results.into_iter().filter_map(Result::ok).collect();
    burst_times.sort();

    println!("on-demand first byte against Pebble (real TLS-ALPN-01 validation, PEBBLE_VA_NOSLEEP=1)");
    println!("  sequential new names: {}", times.len());
    println!(
        "    median {:?}  p90 {:?}  min {:?}  max {:?}",
        percentile(&times, 0.5),
        percentile(&times, 0.9),
        times[0],
        times[times.len() - 1]
    );
    println!("  burst of {burst} new names at once: {failures} failed handshakes, wall {burst_wall:?}");
    if !burst_times.is_empty() {
        println!(
            "    median {:?}  slowest {:?}",
            percentile(&burst_times, 0.5),
            burst_times[burst_times.len() - 1]
        );
    }
    let steps: Vec<String> = edge
        .stderr()
        .lines()
        .filter(|line| line.contains("login.t1.bench") && line.contains("ACME"))
        .map(|line| line.split("vestibule::acme::issuer").nth(1).unwrap_or(line).to_owned())
        .collect();
    println!("  steps of one order (elapsed since the order was created):");
    for step in steps {
        println!("    {step}");
    }
    assert_eq!(failures, 0, "failed handshakes in the burst:\n{}", edge.stderr());
}
