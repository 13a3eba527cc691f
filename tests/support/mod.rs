//! Integration test harness: real processes on port 0 and real peers.
//!
//! - [`Pki`] makes a throwaway CA and issues leaf certificates (checked-in code, no pasted blobs).
//! - [`Echo`] runs the project's echo upstream on a real loopback socket.
//! - [`Edge`] starts the `vestibule` binary on a generated configuration, learns its ports from
//!   `--ports-file`, and waits for `/readyz`.
//! - [`Edge::curl`] drives requests with the real `curl`; [`tls_connect`] is a real rustls client.

#![allow(dead_code)]

pub mod identity;
pub mod load;
pub mod pebble;
pub mod redis;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

pub const BINARY: &str = env!("CARGO_BIN_EXE_vestibule");

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("vestibule-test-")
        .tempdir()
        .expect("temp dir")
}

/// A throwaway certificate authority.
pub struct Pki {
    directory: PathBuf,
    ca_key: KeyPair,
    ca_params: CertificateParams,
    pub ca_path: PathBuf,
    counter: std::cell::Cell<usize>,
}

impl Pki {
    pub fn new(directory: &Path) -> Self {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Vestibule test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let ca_path = directory.join("test-ca.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        Pki {
            directory: directory.to_path_buf(),
            ca_key,
            ca_params,
            ca_path,
            counter: Default::default(),
        }
    }

    /// Issues a certificate for `names`; returns (chain path, key path).
    pub fn issue(&self, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let issuer = Issuer::new(self.ca_params.clone(), &self.ca_key);
        let certificate = params.signed_by(&key, &issuer).unwrap();
        let index = self.counter.get();
        self.counter.set(index + 1);
        let chain = self.directory.join(format!("leaf-{index}.pem"));
        let key_path = self.directory.join(format!("leaf-{index}.key"));
        std::fs::write(&chain, certificate.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (chain, key_path)
    }

    pub fn root_store(&self) -> rustls::RootCertStore {
        let pem = std::fs::read(&self.ca_path).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for certificate in rustls_pemfile::certs(&mut &pem[..]) {
            roots.add(certificate.unwrap()).unwrap();
        }
        roots
    }
}

/// The project's echo upstream on a loopback port, in a thread of its own.
pub struct Echo {
    pub address: SocketAddr,
}

impl Echo {
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let _ = vestibule::ops::echo::serve(listener).await;
            });
        });
        Echo { address }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

/// A loopback port that was free a moment ago (for peers that must know a port in advance).
pub fn free_port() -> u16 {
    dead_port()
}

/// A free loopback port nobody listens on (for "upstream down").
pub fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The `[server]` and `[listeners]` sections every test configuration starts with.
pub fn base_config(directory: &Path) -> String {
    base_config_on(directory, 0)
}

/// Like [`base_config`], with the https listener on `https_port`.
pub fn base_config_on(directory: &Path, https_port: u16) -> String {
    format!(
        r#"
[server]
threads = 2
pid_file = "{dir}/vestibule.pid"
upgrade_socket = "{dir}/upgrade.sock"
graceful_shutdown_timeout_seconds = 5

[listeners]
https = "127.0.0.1:{https_port}"
http = "127.0.0.1:0"
admin = "127.0.0.1:0"

[observability]
access_log = "{dir}/access.log"
log_level = "info"
"#,
        dir = directory.display(),
    )
}

/// A running `vestibule run`.
pub struct Edge {
    child: Child,
    pub directory: PathBuf,
    pub config_path: PathBuf,
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub ca_path: PathBuf,
}

/// An HTTP response as curl saw it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.body))
    }

    /// For echo upstream responses: the values the upstream received for `name`.
    pub fn received(&self, name: &str) -> Vec<String> {
        self.json()["headers"][name]
            .as_array()
            .map(|values| values.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    }
}

impl Edge {
    /// Writes `config` and starts the binary; panics with its stderr if it does not get ready.
    pub fn start(directory: &Path, config: &str, ca_path: &Path) -> Edge {
        let config_path = directory.join("vestibule.toml");
        std::fs::write(&config_path, config).unwrap();
        Self::start_with(directory, &config_path, ca_path, &[])
    }

    pub fn start_with(directory: &Path, config_path: &Path, ca_path: &Path, extra: &[&str]) -> Edge {
        let ports_file = directory.join("ports.json");
        let _ = std::fs::remove_file(&ports_file);
        let stderr = std::fs::File::create(directory.join("stderr.log")).unwrap();
        let mut command = Command::new(BINARY);
        command
            .arg("run")
            .arg("--config")
            .arg(config_path)
            .arg("--ports-file")
            .arg(&ports_file)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = command.spawn().expect("start vestibule");
        let deadline = Instant::now() + Duration::from_secs(30);
        let ports = loop {
            if let Ok(text) = std::fs::read_to_string(&ports_file)
                && let Ok(value) = serde_json::from_str::<serde_json::Value>(&text)
            {
                break value;
            }
            assert!(
                Instant::now() < deadline,
                "no ports file; stderr:\n{}",
                read(directory.join("stderr.log"))
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let address = |key: &str| ports[key].as_str().unwrap().parse().unwrap();
        let mut edge = Edge {
            child,
            directory: directory.to_path_buf(),
            config_path: config_path.to_path_buf(),
            https: address("https"),
            http: address("http"),
            admin: address("admin"),
            ca_path: ca_path.to_path_buf(),
        };
        edge.wait_ready(deadline);
        edge
    }

    fn wait_ready(&mut self, deadline: Instant) {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("vestibule exited with {status}; stderr:\n{}", self.stderr());
            }
            let ready = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2"])
                .arg(format!("http://{}/readyz", self.admin))
                .output()
                .is_ok_and(|output| output.stdout == b"200");
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "never ready; stderr:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        read(self.directory.join("stderr.log"))
    }

    pub fn access_log(&self) -> String {
        read(self.directory.join("access.log"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs curl against the edge: every https name connects to the https listener, every http
    /// name to the http listener. `args` are extra curl arguments ending with the URL.
    pub fn curl(&self, args: &[&str]) -> Response {
        let url = args.last().expect("a URL");
        let port = if url.starts_with("https://") {
            self.https.port()
        } else {
            self.http.port()
        };
        let connect_to = format!("::127.0.0.1:{port}");
        curl(
            &["--cacert", self.ca_path.to_str().unwrap(), "--connect-to", &connect_to],
            args,
        )
    }

    pub fn get(&self, url: &str) -> Response {
        self.curl(&[url])
    }

    pub fn metrics(&self) -> String {
        curl(&[], &[&format!("http://{}/metrics", self.admin)]).body
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Runs curl and parses its `-i` output (the last response when redirects are followed).
pub fn curl(prefix: &[&str], args: &[&str]) -> Response {
    let output: Output = Command::new("curl")
        .args(["-s", "-S", "-i", "--max-time", "30"])
        .args(prefix)
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    parse_response(&text).unwrap_or_else(|| {
        panic!(
            "curl {args:?} failed: {}\n{text}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn parse_response(text: &str) -> Option<Response> {
    // With -L or a 100-continue there may be several heads; keep the last.
    let mut rest = text;
    let mut parsed = None;
    while rest.starts_with("HTTP/") {
        let (head, body) = rest.split_once("\r\n\r\n")?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?;
        let mut parts = status_line.split(' ');
        let version = parts.next()?.to_owned();
        let status = parts.next()?.parse().ok()?;
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        parsed = Some(Response {
            status,
            version,
            headers,
            body: body.to_owned(),
        });
        rest = body;
    }
    parsed
}

/// A real rustls client handshake with `server_name` as SNI.
pub async fn tls_connect(
    address: SocketAddr,
    server_name: &str,
    roots: rustls::RootCertStore,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = tokio::net::TcpStream::connect(address).await?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    connector.connect(name, stream).await
}

/// Polls `condition` until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The value of a Prometheus series line (exact name and labels), if present.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line[series.len()..].trim().parse().ok())
}

/// Reads a response head, byte by byte (nothing after it is consumed), as sent.
pub async fn read_head<S>(stream: &mut S) -> String
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// One HTTP/1.1 exchange on an open connection: writes `request`, reads one response framed by
/// `Content-Length`, and returns its head (lower-cased) and body.
pub async fn exchange<S>(stream: &mut S, request: &str) -> (String, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(stream).await.to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |value| value.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    (head, String::from_utf8(body).unwrap())
}
