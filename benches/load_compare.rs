//! Vestibule beside nginx, in one run, on one machine: `scripts/load-compare.sh` (which pins this
//! program, the load generators and the upstream to CPU 0 and both proxies to CPU 1).
//!
//! - upstream: nginx answering `200 ok` (and serving the JWKS and a 64 KiB body at `/64k`), on
//!   CPU 0;
//! - Vestibule: one worker thread, a JWT bearer check on every request (ES256, cached);
//! - nginx: one worker, plain TLS-terminating proxy with the same ECDSA P-256 certificate,
//!   keep-alive to the upstream (up to 1,024 idle connections, as the edge's default),
//!   `keepalive_requests` raised, the same listen backlog, access log off;
//! - tests, interleaved A B / B A over rounds: keep-alive HTTPS/1.1 (`wrk -t1 -c64`), the same
//!   with 64 KiB responses, 1,000 HTTPS/1.1 connections (`h2load --h1 -t1 -c1000`), HTTP/2
//!   (`h2load -t1 -c32 -m10`), new connections with a full TLS 1.3 handshake each (64 closed-loop
//!   clients, resumption disabled, like `tlsload`);
//! - per run: req/s, p50/p99 latency and proxy CPU per request (from /proc), and, where h2load
//!   logs every request, the p99 of those started after the first second (the connection burst
//!   is over by then); per test: the Vestibule/nginx ratio per round and its median; then
//!   resident memory with 10k idle TLS connections.
//!
//!     ./scripts/load-compare.sh [--rounds 5] [--duration 10]
//!
//! `--instructions N` measures instead, for each proxy, the user-space instructions it executes
//! per keep-alive HTTPS/1.1 request (valgrind's callgrind, `h2load --h1 -n N -c 4` after a
//! warm-up): a count that does not drift with the machine's load, for comparing builds; `--keep DIR`
//! keeps both profiles there for `callgrind_annotate`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::{Pki, eventually, free_port, temp_dir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vestibule::auth::crypto::{self, EdgeKey};

const HOST: &str = "acme-app-acct.us.bench.test";

struct Options {
    /// `--profile keep-alive|large|many|http2|handshakes`: record Vestibule with `perf` during that
    /// load only.
    profile: Option<String>,
    rounds: usize,
    duration: u64,
    idle_connections: usize,
}

fn options() -> Options {
    let arguments: Vec<String> = std::env::args().collect();
    let full = arguments.iter().any(|a| a == "--bench");
    let value = |name: &str| {
        arguments
            .iter()
            .position(|a| a == name)
            .and_then(|i| arguments.get(i + 1))
            .and_then(|v| v.parse().ok())
    };
    Options {
        profile: arguments
            .iter()
            .position(|a| a == "--profile")
            .and_then(|i| arguments.get(i + 1))
            .cloned(),
        rounds: value("--rounds").unwrap_or(if full { 5 } else { 1 }),
        duration: value("--duration").unwrap_or(if full { 10 } else { 1 }) as u64,
        idle_connections: value("--idle").unwrap_or(if full { 10_000 } else { 200 }),
    }
}

fn arguments_value(name: &str) -> Option<u64> {
    arguments_text(name).and_then(|v| v.parse().ok())
}

fn arguments_text(name: &str) -> Option<String> {
    let arguments: Vec<String> = std::env::args().collect();
    arguments
        .iter()
        .position(|a| a == name)
        .and_then(|i| arguments.get(i + 1))
        .cloned()
}

fn require(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "`{tool}` is missing: run ./scripts/install-test-deps.sh");
}

/// A process pinned to `cpu` with `taskset`.
fn pinned(cpu: usize, program: &str) -> Command {
    let mut command = Command::new("taskset");
    command.arg("-c").arg(cpu.to_string()).arg(program);
    command
}

struct Proxy {
    name: &'static str,
    child: Child,
    port: u16,
}

impl Proxy {
    /// Every process of the proxy (nginx: master and workers).
    fn pids(&self) -> Vec<u32> {
        let root = self.child.id();
        let mut pids = vec![root];
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{root}/task/{root}/children")) {
            pids.extend(children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
        pids
    }

    /// CPU seconds used so far (user + system).
    fn cpu_seconds(&self) -> f64 {
        let ticks = 100.0; // USER_HZ on Linux
        self.pids()
            .iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .map(|stat| {
                let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
                let fields: Vec<&str> = after_name.split_whitespace().collect();
                let user: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
                let system: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
                (user + system) / ticks
            })
            .sum()
    }

    /// Resident memory (current, peak) in MiB, summed over processes.
    fn memory(&self) -> (f64, f64) {
        let read = |pid: u32, key: &str| -> f64 {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|status| {
                    status
                        .lines()
                        .find(|l| l.starts_with(key))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                })
                .unwrap_or(0.0)
        };
        let pids = self.pids();
        let rss: f64 = pids.iter().map(|pid| read(*pid, "VmRSS:")).sum();
        let peak: f64 = pids.iter().map(|pid| read(*pid, "VmHWM:")).sum();
        (rss / 1024.0, peak / 1024.0)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SIGTERM: nginx's master takes its workers down with it (SIGKILL would orphan them).
        let pids = self.pids();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in pids {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// How long a proxy may take to listen; under valgrind, [`VALGRIND_START_TIMEOUT`].
const START_TIMEOUT: Duration = Duration::from_secs(20);
const VALGRIND_START_TIMEOUT: Duration = Duration::from_secs(120);

fn wait_port(port: u16, limit: Duration) {
    let listening = eventually(limit, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert!(listening, "nothing listens on {port} after {limit:?}");
}

fn nginx(directory: &Path, name: &'static str, cpu: usize, config: String, port: u16) -> Proxy {
    let prefix = directory.join(name);
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let path = prefix.join("nginx.conf");
    std::fs::write(&path, config).unwrap();
    let child = pinned(cpu, "nginx")
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(prefix.join("logs/error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    wait_port(port, START_TIMEOUT);
    Proxy { name, child, port }
}

/// The accept queue nginx is given, as pingora gives Vestibule (the kernel caps both at
/// `net.core.somaxconn`). nginx's own default is 511: with 1,000 clients connecting at once the
/// queue overflows, and the dropped connections retry a second later, spreading the burst of
/// handshakes over time for nginx only.
const LISTEN_BACKLOG: u32 = 65535;

const NGINX_COMMON: &str = "worker_processes 1;\nworker_rlimit_nofile 65536;\ndaemon off;\nmaster_process on;\npid nginx.pid;\nevents { worker_connections 30000; }\n";

fn upstream(directory: &Path, port: u16) -> Proxy {
    let config = format!(
        "{NGINX_COMMON}http {{\n  access_log off;\n  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n  \
         server {{\n    listen 127.0.0.1:{port} reuseport backlog={LISTEN_BACKLOG};\n    location = /jwks.json {{ default_type application/json; alias {jwks}; }}\n    \
         location = /64k {{ default_type application/octet-stream; alias {large}; }}\n    \
         location / {{ default_type text/plain; return 200 \"ok\\n\"; }}\n  }}\n}}\n",
        jwks = directory.join("jwks.json").display(),
        large = directory.join("64k").display()
    );
    std::fs::write(directory.join("64k"), vec![b'v'; 64 * 1024]).expect("write the 64 KiB body");
    nginx(directory, "upstream", 0, config, port)
}

fn nginx_proxy(directory: &Path, port: u16, upstream_port: u16, cert: &Path, key: &Path) -> Proxy {
    let config = format!(
        "{NGINX_COMMON}http {{\n  access_log off;\n  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n  \
         upstream app {{ server 127.0.0.1:{upstream_port}; keepalive 1024; }}\n  \
         server {{\n    listen 127.0.0.1:{port} ssl http2 backlog={LISTEN_BACKLOG};\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n    \
         ssl_protocols TLSv1.2 TLSv1.3;\n    http2_max_concurrent_streams 128;\n    \
         location / {{\n      proxy_pass http://app;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      \
         proxy_set_header Host $host;\n      proxy_set_header X-Forwarded-For $remote_addr;\n      proxy_set_header X-Forwarded-Proto https;\n    }}\n  }}\n}}\n",
        cert = cert.display(),
        key = key.display()
    );
    nginx(directory, "nginx-proxy", 1, config, port)
}

fn vestibule(directory: &Path, port: u16, upstream_port: u16, cert: &Path, key: &Path) -> Proxy {
    // `--no-auth` drops the identity provider: attributes cost between the edge and pingora itself.
    let identity = if std::env::args().any(|a| a == "--no-auth") {
        String::new()
    } else {
        format!(
            "[applications.identity_provider]\nname = \"bench\"\nissuers = [\"https://issuer.bench\"]\n\
             jwks_url = \"http://127.0.0.1:{upstream_port}/jwks.json\"\naudiences = [\"api\"]\n"
        )
    };
    let config = format!(
        r#"
[server]
threads = 1
pid_file = "{dir}/vestibule.pid"
upgrade_socket = "{dir}/vestibule-upgrade.sock"

[listeners]
https = "127.0.0.1:{port}"

[platform]
apex_domain = "bench.test"
region = "us"
account = "acct"

[tls]
certificates = [{{ certificate = "{cert}", private_key = "{key}" }}]
default_server_name = "{HOST}"
{read_buffer}

[observability]
access_log = "off"
log_level = "warn"

[[applications]]
id = "app"
domain_name = "app"
production_validations = false
upstream = "http://127.0.0.1:{upstream_port}"

{identity}
[[applications.tenants]]
id = "tnt_acme"
domain_name = "acme"
"#,
        dir = directory.display(),
        cert = cert.display(),
        key = key.display(),
        read_buffer = arguments_value("--read-buffer")
            .map(|bytes| format!("read_buffer_bytes = {bytes}"))
            .unwrap_or_default(),
    );
    let path = directory.join("vestibule.toml");
    std::fs::write(&path, config).unwrap();
    let child = pinned(1, support::BINARY)
        .arg("run")
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(directory.join("vestibule.stderr")).unwrap())
        .spawn()
        .expect("start vestibule");
    wait_port(port, START_TIMEOUT);
    Proxy {
        name: "vestibule",
        child,
        port,
    }
}

/// One measured run.
#[derive(Clone, Copy, Debug)]
struct Run {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// p99 of the requests started [`SETTLED_AFTER`] or later into the run, when the load
    /// generator logs each request (h2load); NaN otherwise.
    settled_p99_ms: f64,
    cpu_us_per_request: f64,
    errors: u64,
}

/// How long into a run its clients are still connecting: with 1,000 clients, the first ~0.3 s is
/// a burst of 1,000 handshakes on both sides, which the load generator's own latencies include.
const SETTLED_AFTER: Duration = Duration::from_secs(1);

fn parse_latency(text: &str) -> f64 {
    let text = text.trim();
    let (number, factor) = if let Some(v) = text.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = text.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = text.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (text, 1.0)
    };
    number.parse::<f64>().unwrap_or(f64::NAN) * factor
}

fn measured(proxy: &Proxy, work: impl FnOnce() -> (f64, f64, f64, u64, u64)) -> Run {
    let cpu_before = proxy.cpu_seconds();
    let (requests_per_second, p50_ms, p99_ms, requests, errors) = work();
    let cpu = proxy.cpu_seconds() - cpu_before;
    Run {
        requests_per_second,
        p50_ms,
        p99_ms,
        settled_p99_ms: f64::NAN,
        cpu_us_per_request: cpu * 1e6 / requests.max(1) as f64,
        errors,
    }
}

/// `wrk -t1` with `connections` for `seconds` on `path` (`/`: a 3-byte answer; `/64k`: 64 KiB).
fn keep_alive(proxy: &Proxy, token: &str, seconds: u64, path: &str, connections: u32) -> Run {
    measured(proxy, || {
        let output = pinned(0, "wrk")
            .args([
                "-t1",
                &format!("-c{connections}"),
                &format!("-d{seconds}s"),
                "--latency",
                "-H",
                &format!("Host: {HOST}"),
            ])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .arg(format!("https://127.0.0.1:{}{path}", proxy.port))
            .output()
            .expect("wrk");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let field = |prefix: &str| -> Option<&str> { text.lines().find_map(|l| l.trim().strip_prefix(prefix)) };
        let rps: f64 = field("Requests/sec:")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        let requests: u64 = text
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let errors: u64 = field("Non-2xx or 3xx responses:")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
            + field("Socket errors:").map_or(0, |_| 1);
        let p50 = field("50%").map_or(f64::NAN, parse_latency);
        let p99 = field("99%").map_or(f64::NAN, parse_latency);
        (rps, p50, p99, requests, errors)
    })
}

/// `h2load -t1` with `shape` (clients, streams, protocol) for `seconds`; latencies from its
/// per-request log.
fn h2load(proxy: &Proxy, token: &str, seconds: u64, directory: &Path, shape: &[&str]) -> Run {
    let mut settled_p99_ms = f64::NAN;
    let run = measured(proxy, || {
        let log = directory.join("h2load.log");
        let _ = std::fs::remove_file(&log);
        let output = pinned(0, "h2load")
            .arg("-t1")
            .args(shape)
            .args(["-D", &seconds.to_string(), "--log-file"])
            .arg(&log)
            .args([
                "-H",
                &format!(":authority: {HOST}"),
                "-H",
                &format!("authorization: Bearer {token}"),
            ])
            .arg(format!("https://127.0.0.1:{}/", proxy.port))
            .output()
            .expect("h2load");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let rps: f64 = text
            .lines()
            .find(|l| l.starts_with("finished in"))
            .and_then(|l| l.split(", ").nth(1)?.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let succeeded: u64 = text
            .lines()
            .find(|l| l.starts_with("requests:"))
            .and_then(|l| {
                l.split(", ")
                    .find(|p| p.ends_with("succeeded"))?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
        let ok_2xx: u64 = text
            .lines()
            .find(|l| l.starts_with("status codes:"))
            .and_then(|l| {
                l.trim_start_matches("status codes:")
                    .split(", ")
                    .next()?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
        // Log lines: start time (µs since the epoch), status, duration (µs).
        let entries: Vec<(u64, f64)> = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut fields = l.split_whitespace();
                let start = fields.next()?.parse::<u64>().ok()?;
                let duration = fields.nth(1)?.parse::<f64>().ok()?;
                Some((start, duration / 1000.0))
            })
            .collect();
        let first = entries.iter().map(|(start, _)| *start).min().unwrap_or(0);
        let settled_from = first + SETTLED_AFTER.as_micros() as u64;
        let mut latencies: Vec<f64> = entries.iter().map(|(_, ms)| *ms).collect();
        let mut settled: Vec<f64> = entries
            .iter()
            .filter(|(start, _)| *start >= settled_from)
            .map(|(_, ms)| *ms)
            .collect();
        settled.sort_by(f64::total_cmp);
        latencies.sort_by(f64::total_cmp);
        settled_p99_ms = percentile(&settled, 0.99);
        let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
        (rps, p50, p99, succeeded, succeeded.saturating_sub(ok_2xx))
    });
    Run { settled_p99_ms, ..run }
}

/// The `fraction` percentile of `sorted`; NaN when there are none.
fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    sorted
        .get(((sorted.len().max(1) - 1) as f64 * fraction).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

fn client_config() -> Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    // Every connection is a full handshake: nothing to resume from.
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Closed-loop new connections, each a full TLS 1.3 handshake and one request (as `tlsload`).
fn handshakes(proxy: &Proxy, token: &str, seconds: u64) -> Run {
    measured(proxy, || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let request = Arc::new(format!(
            "GET / HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ));
        let connector = tokio_rustls::TlsConnector::from(client_config());
        let stop = Arc::new(AtomicBool::new(false));
        let port = proxy.port;
        let started = Instant::now();
        let results = runtime.block_on(async move {
            let mut tasks = Vec::new();
            for _ in 0..64 {
                let (connector, request, stop) = (connector.clone(), request.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    let (mut latencies, mut errors) = (Vec::new(), 0u64);
                    let name = rustls::pki_types::ServerName::try_from(HOST).unwrap();
                    let mut buffer = vec![0u8; 4096];
                    while !stop.load(Ordering::Relaxed) {
                        let begun = Instant::now();
                        let outcome: std::io::Result<bool> = async {
                            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                            tcp.set_nodelay(true)?;
                            let mut tls = connector.connect(name.clone(), tcp).await?;
                            tls.write_all(request.as_bytes()).await?;
                            let mut head = Vec::new();
                            loop {
                                let read = match tls.read(&mut buffer).await {
                                    Ok(n) => n,
                                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                                    Err(e) => return Err(e),
                                };
                                if read == 0 {
                                    break;
                                }
                                if head.len() < 12 {
                                    head.extend_from_slice(&buffer[..read.min(12)]);
                                }
                            }
                            Ok(head.starts_with(b"HTTP/1.1 200"))
                        }
                        .await;
                        match outcome {
                            Ok(true) => latencies.push(begun.elapsed().as_secs_f64() * 1000.0),
                            _ => errors += 1,
                        }
                    }
                    (latencies, errors)
                }));
            }
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            stop.store(true, Ordering::Relaxed);
            let mut all = (Vec::new(), 0u64);
            for task in tasks {
                let (latencies, errors) = task.await.unwrap();
                all.0.extend(latencies);
                all.1 += errors;
            }
            all
        });
        let elapsed = started.elapsed().as_secs_f64();
        let (mut latencies, errors) = results;
        latencies.sort_by(f64::total_cmp);
        let pick = |f: f64| {
            latencies
                .get(((latencies.len().max(1) - 1) as f64 * f).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        (
            latencies.len() as f64 / elapsed,
            pick(0.5),
            pick(0.99),
            latencies.len() as u64,
            errors,
        )
    })
}

/// Opens `count` TLS connections and holds them idle; returns the proxy's (RSS, peak) in MiB.
fn idle_memory(proxy: &Proxy, count: usize) -> (f64, f64, usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config());
    let port = proxy.port;
    let held = runtime.block_on(async move {
        let mut held = Vec::with_capacity(count);
        for batch in (0..count).collect::<Vec<_>>().chunks(250) {
            let mut tasks = Vec::new();
            for _ in batch {
                let connector = connector.clone();
                tasks.push(tokio::spawn(async move {
                    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
                    let name = rustls::pki_types::ServerName::try_from(HOST).unwrap();
                    connector.connect(name, tcp).await.ok()
                }));
            }
            for task in tasks {
                if let Ok(Some(stream)) = task.await {
                    held.push(stream);
                }
            }
        }
        held
    });
    std::thread::sleep(Duration::from_millis(500));
    let (rss, peak) = proxy.memory();
    let opened = held.len();
    drop(held);
    drop(runtime);
    (rss, peak, opened)
}

fn settled_text(p99_ms: f64) -> String {
    if p99_ms.is_nan() {
        "–".to_owned()
    } else {
        format!("{p99_ms:.3}")
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return f64::NAN;
    }
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

/// Instructions per request of each proxy, each run again under callgrind on a port of its own.
fn instructions(directory: &Path, proxies: &[Proxy; 2], token: &str, requests: u64) {
    require("valgrind");
    require("callgrind_control");
    let mut counts = Vec::new();
    for proxy in proxies {
        let port = free_port();
        let (program, arguments): (&str, Vec<String>) = if proxy.name == "vestibule" {
            let config = std::fs::read_to_string(directory.join("vestibule.toml"))
                .unwrap()
                .replace(&format!("127.0.0.1:{}", proxy.port), &format!("127.0.0.1:{port}"))
                .replace("vestibule.pid", "callgrind.pid")
                .replace("vestibule-upgrade.sock", "callgrind-upgrade.sock");
            let path = directory.join("vestibule-callgrind.toml");
            std::fs::write(&path, config).unwrap();
            let arguments = vec!["run".into(), "--config".into(), path.display().to_string()];
            (support::BINARY, arguments)
        } else {
            let prefix = directory.join("nginx-callgrind");
            std::fs::create_dir_all(prefix.join("logs")).unwrap();
            let config = std::fs::read_to_string(directory.join("nginx-proxy/nginx.conf"))
                .unwrap()
                .replace(&format!("127.0.0.1:{}", proxy.port), &format!("127.0.0.1:{port}"))
                .replace("master_process on", "master_process off");
            let path = prefix.join("nginx.conf");
            std::fs::write(&path, config).unwrap();
            let arguments = ["-p", &prefix.display().to_string(), "-c", &path.display().to_string()]
                .map(String::from)
                .to_vec();
            ("nginx", arguments)
        };
        let output = directory.join(format!("callgrind.{}", proxy.name));
        let mut child = pinned(1, "valgrind")
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", output.display()))
            .arg(program)
            .args(&arguments)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(directory.join(format!("callgrind.{}.log", proxy.name))).unwrap())
            .spawn()
            .expect("valgrind");
        wait_port(port, VALGRIND_START_TIMEOUT);
        let load = |count: u64| {
            let output = pinned(0, "h2load")
                .args(["--h1", "-n", &count.to_string(), "-c", "4", "-H"])
                .arg(format!(":authority: {HOST}"))
                .arg("-H")
                .arg(format!("authorization: Bearer {token}"))
                .arg(format!("https://127.0.0.1:{port}/"))
                .output()
                .expect("h2load");
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(
                text.contains(&format!("{count} succeeded")),
                "{}: not every request succeeded:\n{text}",
                proxy.name
            );
        };
        // Warm up (handshakes, key fetch, token cache, upstream pool), then count only the load.
        load(2000);
        let control = |flag: &str| {
            let status = Command::new("callgrind_control")
                .arg(flag)
                .arg(child.id().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("callgrind_control");
            assert!(status.success(), "callgrind_control {flag}");
        };
        control("-z");
        load(requests);
        control("-d");
        let _ = Command::new("kill").arg("-INT").arg(child.id().to_string()).status();
        let _ = child.wait();
        let dump_path = format!("{}.1", output.display());
        if let Some(keep) = arguments_text("--keep") {
            // `--keep DIR`: the profile stays for callgrind_annotate.
            std::fs::create_dir_all(&keep).unwrap();
            std::fs::copy(&dump_path, Path::new(&keep).join(format!("callgrind.{}", proxy.name))).unwrap();
        }
        let dump = std::fs::read_to_string(&dump_path).expect("callgrind dump");
        let total: u64 = dump
            .lines()
            .find_map(|line| line.strip_prefix("summary: ").or_else(|| line.strip_prefix("totals: ")))
            .and_then(|value| value.trim().parse().ok())
            .expect("callgrind summary");
        counts.push(total as f64 / requests as f64);
        println!(
            "{}: {:.0} instructions per request ({requests} requests)",
            proxy.name,
            counts.last().unwrap()
        );
    }
    println!("ratio Vestibule/nginx: {:.2}", counts[0] / counts[1]);
}

fn main() {
    for tool in ["nginx", "wrk", "h2load", "taskset"] {
        require(tool);
    }
    crypto::install();
    let options = options();
    let directory = temp_dir();
    let path = directory.path();
    let pki = Pki::new(path);
    let (cert, key) = pki.issue(&["*.us.bench.test"]);
    let issuer = EdgeKey::generate().unwrap();
    std::fs::write(path.join("jwks.json"), issuer.jwks().to_string()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(issuer.key_id.clone());
    let claims = serde_json::json!({
        "iss": "https://issuer.bench", "aud": "api", "sub": "user-1", "tnt_id": "tnt_acme",
        "iat": now, "exp": now + 24 * 3600,
    });
    let token = jsonwebtoken::encode(&header, &claims, &issuer.encoding).unwrap();

    let upstream_port = free_port();
    let _upstream = upstream(path, upstream_port);
    let proxies = [
        vestibule(path, free_port(), upstream_port, &cert, &key),
        nginx_proxy(path, free_port(), upstream_port, &cert, &key),
    ];
    // Both must answer before anything is measured.
    for proxy in &proxies {
        let check = keep_alive(proxy, &token, 1, "/64k", 64);
        assert!(
            check.requests_per_second > 0.0 && check.errors == 0,
            "{}: {check:?}\n{}",
            proxy.name,
            std::fs::read_to_string(path.join("vestibule.stderr")).unwrap_or_default()
        );
    }

    if let Some(seconds) = arguments_value("--hold") {
        // Keep the rig up for manual tools (strace, perf, curl): ports, pids and the token.
        println!(
            "vestibule https 127.0.0.1:{} pid {}",
            proxies[0].port,
            proxies[0].child.id()
        );
        println!("nginx https 127.0.0.1:{} pids {:?}", proxies[1].port, proxies[1].pids());
        std::fs::write(std::env::temp_dir().join("vestibule-bench-token"), &token).unwrap();
        println!(
            "token in {}; Host {HOST}",
            std::env::temp_dir().join("vestibule-bench-token").display()
        );
        std::thread::sleep(Duration::from_secs(seconds));
        return;
    }
    if let Some(requests) = arguments_value("--instructions") {
        instructions(path, &proxies, &token, requests);
        return;
    }
    /// Each test: the key `--profile` names it by, its name (`--only` matches part of it), the run.
    type Test<'a> = (&'a str, &'a str, &'a dyn Fn(&Proxy) -> Run);
    let tests: [Test; 5] = [
        ("keep-alive", "keep-alive HTTPS/1.1 (wrk -t1 -c64)", &|p| {
            keep_alive(p, &token, options.duration, "/", 64)
        }),
        ("large", "large responses, 64 KiB over HTTPS/1.1 (wrk -t1 -c64)", &|p| {
            keep_alive(p, &token, options.duration, "/64k", 64)
        }),
        (
            "many",
            "many clients, 1,000 connections over HTTPS/1.1 (h2load --h1 -t1 -c1000)",
            &|p| h2load(p, &token, options.duration, path, &["--h1", "-c1000"]),
        ),
        ("http2", "HTTP/2 (h2load -t1 -c32 -m10)", &|p| {
            h2load(p, &token, options.duration, path, &["-c32", "-m10"])
        }),
        ("handshakes", "full TLS 1.3 handshakes (64 clients)", &|p| {
            handshakes(p, &token, options.duration)
        }),
    ];
    if let Some(kind) = &options.profile {
        let output = path.join("perf.data");
        let mut perf = Command::new("perf")
            .args([
                "record",
                "-e",
                "cpu-clock",
                "-F",
                "2000",
                "--call-graph",
                "dwarf,16384",
                "-o",
            ])
            .arg(&output)
            .arg("-p")
            .arg(proxies[0].child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("perf (Debian linux-perf)");
        std::thread::sleep(Duration::from_millis(500));
        // An unknown key profiles the first test, keep-alive.
        let (_, _, test) = tests.iter().find(|(key, _, _)| key == kind).unwrap_or(&tests[0]);
        let run = test(&proxies[0]);
        let _ = Command::new("kill").arg("-INT").arg(perf.id().to_string()).status();
        let _ = perf.wait();
        let keep = std::env::temp_dir().join("vestibule-perf.data");
        let _ = std::fs::copy(&output, &keep);
        println!(
            "{kind}: {run:?}\nprofile: perf report -i {} --no-children",
            keep.display()
        );
        return;
    }

    println!("Vestibule (JWT on every request) vs nginx (no auth); proxies on CPU 1, load and upstream on CPU 0");
    println!(
        "{} rounds of {} s per test, interleaved\n",
        options.rounds, options.duration
    );
    let mut summary = Vec::new();
    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    for (_, name, test) in &tests {
        if only.as_deref().is_some_and(|wanted| !name.contains(wanted)) {
            continue;
        }
        println!("## {name}");
        println!(
            "| round | proxy | req/s | p50 ms | p99 ms | p99 ms after {} s | proxy CPU µs/req | errors |",
            SETTLED_AFTER.as_secs()
        );
        println!("|---|---|---|---|---|---|---|---|");
        let mut ratios = Vec::new();
        let mut p99 = (Vec::new(), Vec::new());
        let mut settled = (Vec::new(), Vec::new());
        let mut cpu = (Vec::new(), Vec::new());
        for round in 1..=options.rounds {
            let order: [usize; 2] = if round % 2 == 1 { [0, 1] } else { [1, 0] };
            let mut runs = [None, None];
            for index in order {
                let run = test(&proxies[index]);
                println!(
                    "| {round} | {} | {:.0} | {:.3} | {:.3} | {} | {:.1} | {} |",
                    proxies[index].name,
                    run.requests_per_second,
                    run.p50_ms,
                    run.p99_ms,
                    settled_text(run.settled_p99_ms),
                    run.cpu_us_per_request,
                    run.errors
                );
                runs[index] = Some(run);
            }
            let (vestibule, nginx) = (runs[0].unwrap(), runs[1].unwrap());
            ratios.push(vestibule.requests_per_second / nginx.requests_per_second);
            p99.0.push(vestibule.p99_ms);
            p99.1.push(nginx.p99_ms);
            settled.0.push(vestibule.settled_p99_ms);
            settled.1.push(nginx.settled_p99_ms);
            cpu.0.push(vestibule.cpu_us_per_request);
            cpu.1.push(nginx.cpu_us_per_request);
        }
        let per_round: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        let median_ratio = median(&mut ratios.clone());
        println!(
            "ratio Vestibule/nginx per round: {}; median {median_ratio:.2}",
            per_round.join(", ")
        );
        println!(
            "median p99: Vestibule {:.3} ms, nginx {:.3} ms; median CPU/request: Vestibule {:.1} µs, nginx {:.1} µs\n",
            median(&mut p99.0),
            median(&mut p99.1),
            median(&mut cpu.0),
            median(&mut cpu.1)
        );
        let (settled_vestibule, settled_nginx) = (median(&mut settled.0), median(&mut settled.1));
        if !settled_vestibule.is_nan() {
            println!(
                "median p99 of requests started after {} s: Vestibule {settled_vestibule:.3} ms, nginx {settled_nginx:.3} ms\n",
                SETTLED_AFTER.as_secs()
            );
        }
        summary.push((name, median_ratio));
    }
    println!("## memory with {} idle TLS connections", options.idle_connections);
    println!("| proxy | connections held | RSS MiB | peak RSS MiB |");
    println!("|---|---|---|---|");
    for proxy in &proxies {
        let (rss, peak, opened) = idle_memory(proxy, options.idle_connections);
        println!("| {} | {opened} | {rss:.1} | {peak:.1} |", proxy.name);
    }
    println!("\n## summary (median of per-round ratios, Vestibule/nginx)");
    for (name, ratio) in summary {
        println!("{name}: {ratio:.2}");
    }
}
