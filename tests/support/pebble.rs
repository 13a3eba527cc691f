//! Pebble (Debian's `pebble`, an RFC 8555 ACME test server) and its mock DNS
//! (`pebble-challtestsrv`), started on loopback for the on-demand certificate tests.
//!
//! Debian's package has no test certificates, so each run makes a CA and a certificate for
//! Pebble's HTTPS listener with [`super::Pki`]; the edge trusts that CA through `acme.ca_root`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Pki, curl, eventually};

/// How Pebble validates and issues.
#[derive(Clone)]
pub struct PebbleOptions {
    /// `PEBBLE_VA_ALWAYS_VALID`: skip real validation (fast, deterministic).
    pub always_valid: bool,
    /// Where Pebble's validation authority connects for HTTP-01 and TLS-ALPN-01.
    pub http_port: u16,
    pub tls_port: u16,
    /// Mock DNS for real validation.
    pub dns: Option<SocketAddr>,
    /// Certificate lifetime in seconds (Pebble's default is five years).
    pub validity_seconds: Option<u64>,
}

impl Default for PebbleOptions {
    fn default() -> Self {
        PebbleOptions {
            always_valid: true,
            http_port: 5002,
            tls_port: 5001,
            dns: None,
            validity_seconds: None,
        }
    }
}

pub struct Pebble {
    child: Option<Child>,
    pub port: u16,
    pub management: u16,
    pub ca_path: PathBuf,
    directory: PathBuf,
    log: PathBuf,
    certificate: (PathBuf, PathBuf),
}

impl Pebble {
    /// Starts Pebble on free loopback ports, its HTTPS certificate issued by `pki`.
    pub fn start(directory: &Path, pki: &Pki, options: &PebbleOptions) -> Pebble {
        let certificate = pki.issue(&["localhost", "127.0.0.1"]);
        let mut pebble = Pebble {
            child: None,
            port: super::free_port(),
            management: super::free_port(),
            ca_path: pki.ca_path.clone(),
            directory: directory.to_path_buf(),
            log: directory.join("pebble.log"),
            certificate,
        };
        pebble.run(options);
        pebble
    }

    /// (Re)starts the process on the same ports: a fresh CA state, as after a Pebble restart.
    pub fn run(&mut self, options: &PebbleOptions) {
        self.stop();
        let mut settings = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{}", self.port),
            "managementListenAddress": format!("127.0.0.1:{}", self.management),
            "certificate": self.certificate.0,
            "privateKey": self.certificate.1,
            "httpPort": options.http_port,
            "tlsPort": options.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        });
        if let Some(validity) = options.validity_seconds {
            settings["certificateValidityPeriod"] = validity.into();
        }
        let config = self.directory.join("pebble.json");
        std::fs::write(&config, serde_json::json!({ "pebble": settings }).to_string()).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new("pebble");
        command
            .arg("-config")
            .arg(&config)
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_VA_ALWAYS_VALID", if options.always_valid { "1" } else { "0" })
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(dns) = options.dns {
            command.arg("-dnsserver").arg(dns.to_string());
        }
        self.child = Some(
            command
                .spawn()
                .expect("start pebble (Debian package `pebble`; run ./scripts/install-test-deps.sh)"),
        );
        let directory_url = self.directory_url();
        let ca = self.ca_path.display().to_string();
        let ready = eventually(Duration::from_secs(15), || {
            Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--cacert",
                    &ca,
                    &directory_url,
                ])
                .output()
                .is_ok_and(|output| output.stdout == b"200")
        });
        assert!(
            ready,
            "pebble did not start:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The root every certificate of this Pebble run chains to, from the management API.
    pub fn root_pem(&self) -> String {
        let response = curl(
            &["--cacert", self.ca_path.to_str().unwrap()],
            &[&format!("https://127.0.0.1:{}/roots/0", self.management)],
        );
        assert_eq!(response.status, 200, "{response:?}");
        response.body
    }

    pub fn root_store(&self) -> rustls::RootCertStore {
        let pem = self.root_pem();
        let mut roots = rustls::RootCertStore::empty();
        for certificate in rustls_pemfile::certs(&mut pem.as_bytes()) {
            roots.add(certificate.unwrap()).unwrap();
        }
        roots
    }

    /// New orders Pebble received since it was first started (all runs), from its log.
    pub fn orders(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains("POST /order-plz"))
            .count()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `pebble-challtestsrv` as a DNS server answering 127.0.0.1 for every name.
pub struct MockDns {
    child: Child,
    pub address: SocketAddr,
}

impl MockDns {
    pub fn start() -> MockDns {
        let port = super::free_port();
        let management = super::free_port();
        let child = Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &format!("127.0.0.1:{port}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .args([
                "-management",
                &format!("127.0.0.1:{management}"),
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble-challtestsrv");
        let listening = eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", management)).is_ok()
        });
        assert!(listening, "pebble-challtestsrv did not start");
        MockDns {
            child,
            address: ([127, 0, 0, 1], port).into(),
        }
    }
}

impl Drop for MockDns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
