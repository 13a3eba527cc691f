//! Identity peers for the auth tests: the certified OpenID provider (`oidc-provider` on Node), a
//! JWKS server for hand-made tokens, and a cookie-keeping browser (curl with a cookie jar).

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::{Response, curl};

const OP_DIRECTORY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/op");

/// `oidc-provider` on a loopback port, configured by `config` (see tests/support/op/server.js).
pub struct Op {
    child: Child,
    pub port: u16,
}

impl Op {
    pub fn start(config: &serde_json::Value) -> Op {
        let modules = Path::new(OP_DIRECTORY).join("node_modules/oidc-provider");
        assert!(
            modules.is_dir(),
            "oidc-provider is not installed: run ./scripts/install-test-deps.sh (the test suite never skips it)"
        );
        let mut child = Command::new("node")
            .arg(Path::new(OP_DIRECTORY).join("server.js"))
            .arg(config.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node (the machine's Node.js)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|value| value["port"].as_u64())
            .unwrap_or_else(|| panic!("the OpenID provider did not start: {line:?}")) as u16;
        Op { child, port }
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the provider: it is unreachable from now on.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What the provider did, in order.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let response = curl(&[], &[&format!("{}/test/events", self.issuer())]);
        response.json().as_array().cloned().unwrap_or_default()
    }

    pub fn count(&self, event: &str, grant_type: Option<&str>) -> usize {
        self.events()
            .iter()
            .filter(|e| e["event"] == event && grant_type.is_none_or(|g| e["grant_type"] == g))
            .count()
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A JWKS endpoint that counts fetches and can be switched off.
pub struct JwksServer {
    pub address: SocketAddr,
    keys: Arc<Mutex<serde_json::Value>>,
    fetches: Arc<AtomicUsize>,
    stop: Arc<tokio::sync::Notify>,
}

impl JwksServer {
    pub fn start(keys: serde_json::Value) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(tokio::sync::Notify::new());
        let (served, counted, stopped) = (keys.clone(), fetches.clone(), stop.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let accepted = tokio::select! {
                        accepted = listener.accept() => accepted,
                        _ = stopped.notified() => return, // drops the listener: connections refused
                    };
                    let Ok((mut stream, _)) = accepted else { continue };
                    counted.fetch_add(1, Ordering::SeqCst);
                    let body = served.lock().unwrap().to_string();
                    tokio::spawn(async move {
                        let mut request = [0u8; 4096];
                        let _ = stream.read(&mut request).await;
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(response.as_bytes()).await;
                    });
                }
            });
        });
        JwksServer {
            address,
            keys,
            fetches,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/jwks", self.address)
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    pub fn set_keys(&self, keys: serde_json::Value) {
        *self.keys.lock().unwrap() = keys;
    }

    /// Stops listening: the identity provider is unreachable from now on.
    pub fn stop(&self) {
        self.stop.notify_one();
    }
}

/// One stored cookie (RFC 6265 §5.3, the parts our peers use).
#[derive(Debug, Clone)]
struct StoredCookie {
    /// Host for host-only cookies, domain for `Domain=` cookies.
    domain: String,
    host_only: bool,
    path: String,
    name: String,
    value: String,
    expires: Option<std::time::SystemTime>,
    secure: bool,
}

/// A browser: curl as transport, with its own cookie jar (curl 7.88 keeps a cookie when one
/// response deletes several, which real browsers do not), sending navigation headers and following
/// no redirect on its own. Every name it uses resolves to the edge on loopback.
pub struct Browser {
    jar: Mutex<Vec<StoredCookie>>,
    resolves: Vec<String>,
    ca: PathBuf,
}

fn default_path(path: &str) -> String {
    match path.rfind('/') {
        Some(0) | None => "/".to_owned(),
        Some(index) => path[..index].to_owned(),
    }
}

fn path_matches(cookie_path: &str, request_path: &str) -> bool {
    request_path == cookie_path
        || (request_path.starts_with(cookie_path)
            && (cookie_path.ends_with('/') || request_path.as_bytes().get(cookie_path.len()) == Some(&b'/')))
}

impl Browser {
    pub fn new(_directory: &Path, _name: &str, edge_port: u16, hosts: &[&str], ca: &Path) -> Self {
        Browser {
            jar: Mutex::new(Vec::new()),
            resolves: hosts
                .iter()
                .map(|host| format!("{host}:{edge_port}:127.0.0.1"))
                .collect(),
            ca: ca.to_path_buf(),
        }
    }

    fn cookie_header_for(&self, url: &url::Url) -> Option<String> {
        let host = url.host_str()?.to_ascii_lowercase();
        let now = std::time::SystemTime::now();
        let jar = self.jar.lock().unwrap();
        let mut matching: Vec<&StoredCookie> = jar
            .iter()
            .filter(|c| c.expires.is_none_or(|at| at > now))
            .filter(|c| {
                if c.host_only {
                    c.domain == host
                } else {
                    host == c.domain || host.ends_with(&format!(".{}", c.domain))
                }
            })
            .filter(|c| path_matches(&c.path, url.path()))
            .filter(|c| !c.secure || url.scheme() == "https")
            .collect();
        matching.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
        (!matching.is_empty()).then(|| {
            matching
                .iter()
                .map(|c| format!("{}={}", c.name, c.value))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    fn store(&self, url: &url::Url, set_cookie: &str) {
        let Some(host) = url.host_str().map(str::to_ascii_lowercase) else {
            return;
        };
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|pair| pair.split_once('=')) else {
            return;
        };
        let mut cookie = StoredCookie {
            domain: host.clone(),
            host_only: true,
            path: default_path(url.path()),
            name: name.trim().to_owned(),
            value: value.trim().to_owned(),
            expires: None,
            secure: false,
        };
        let now = std::time::SystemTime::now();
        let mut max_age_seen = false;
        for attribute in parts {
            let (key, argument) = attribute.split_once('=').unwrap_or((attribute, ""));
            match key.trim().to_ascii_lowercase().as_str() {
                "path" if argument.trim().starts_with('/') => cookie.path = argument.trim().to_owned(),
                "domain" => {
                    let domain = argument.trim().trim_start_matches('.').to_ascii_lowercase();
                    if !domain.is_empty() {
                        cookie.domain = domain;
                        cookie.host_only = false;
                    }
                }
                "secure" => cookie.secure = true,
                "max-age" => {
                    max_age_seen = true;
                    let seconds: i64 = argument.trim().parse().unwrap_or(0);
                    cookie.expires = Some(if seconds <= 0 {
                        std::time::UNIX_EPOCH
                    } else {
                        now + std::time::Duration::from_secs(seconds as u64)
                    });
                }
                "expires" if !max_age_seen => cookie.expires = httpdate::parse_http_date(argument.trim()).ok(),
                _ => {}
            }
        }
        let mut jar = self.jar.lock().unwrap();
        jar.retain(|c| !(c.name == cookie.name && c.domain == cookie.domain && c.path == cookie.path));
        if cookie.expires.is_none_or(|at| at > now) {
            jar.push(cookie);
        }
    }

    /// A top-level navigation to `url`.
    pub fn navigate(&self, url: &str) -> Response {
        self.request(&["-H", "Accept: text/html", "-H", "Sec-Fetch-Mode: navigate", url])
    }

    /// Any request, with extra curl arguments (URL last).
    pub fn request(&self, args: &[&str]) -> Response {
        let target = url::Url::parse(args.last().expect("a URL")).expect("an absolute URL");
        let mut base: Vec<String> = vec!["--cacert".into(), self.ca.display().to_string()];
        for resolve in &self.resolves {
            base.push("--resolve".into());
            base.push(resolve.clone());
        }
        if let Some(header) = self.cookie_header_for(&target) {
            base.push("-H".into());
            base.push(format!("Cookie: {header}"));
        }
        let base: Vec<&str> = base.iter().map(String::as_str).collect();
        let response = curl(&base, args);
        for (name, value) in &response.headers {
            if name == "set-cookie" {
                self.store(&target, value);
            }
        }
        response
    }

    /// Navigates from `url`, following redirects until `stop_before` returns true for the next
    /// URL, or no redirect is left. Returns every response.
    pub fn follow(&self, url: &str, mut stop_before: impl FnMut(&str) -> bool) -> Vec<Response> {
        let mut responses = Vec::new();
        let mut next = url.to_owned();
        for _ in 0..10 {
            let response = self.navigate(&next);
            let location = response.header("location").map(str::to_owned);
            responses.push(response);
            let Some(location) = location else { break };
            let absolute = absolutize(&next, &location);
            if stop_before(&absolute) {
                break;
            }
            next = absolute;
        }
        responses
    }

    /// The value of cookie `name` this browser holds for `host`.
    pub fn cookie(&self, host: &str, name: &str) -> Option<String> {
        self.cookies(host).into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// All live cookies this browser holds for exactly `host`.
    pub fn cookies(&self, host: &str) -> Vec<(String, String)> {
        let now = std::time::SystemTime::now();
        self.jar
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.domain == host && c.expires.is_none_or(|at| at > now))
            .map(|c| (c.name.clone(), c.value.clone()))
            .collect()
    }

    /// The `Cookie` header this browser would send to `host` at `/`.
    pub fn cookie_header(&self, host: &str) -> String {
        self.cookie_header_for(&url::Url::parse(&format!("https://{host}/")).unwrap())
            .unwrap_or_default()
    }
}

/// Resolves a `Location` against the URL it came from.
pub fn absolutize(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_owned();
    }
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let origin_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    format!("{}{location}", &base[..origin_end])
}
