//! Configuration: the TOML file, parsed into an immutable, validated [`Snapshot`].
//!
//! Contract:
//! - Parse, don't validate: [`schema`] is the file as written (`deny_unknown_fields`); every other
//!   module only ever sees a [`Snapshot`], whose fields are already checked, canonical and
//!   defaulted. A `Snapshot` never changes; a reload builds a new one and swaps it.
//! - One pass, every error: each section, application and tenant is read on its own, so one bad
//!   entry does not hide the next; every problem carries its key path
//!   (`applications[1].tenants[3].custom_domain`).
//! - Relative paths are relative to the configuration file's directory (for the embedded default,
//!   `./conf`).
//! - Secrets (`env:NAME`, `file:PATH` or literal) are resolved at load and never printed.

pub mod schema;
pub mod url_template;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use crate::tenancy::{HostTable, VanityZone};
use crate::tls::LoadedCertificate;
pub use url_template::{UrlRules, UrlTemplate};

/// The default configuration, compiled in so `vestibule run` works with no arguments.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../conf/vestibule.toml");
/// Where relative paths of the embedded default are resolved from.
pub const EMBEDDED_DEFAULT_DIRECTORY: &str = "conf";

/// A configuration problem at a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            formatter.write_str(&self.message)
        } else {
            write!(formatter, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Problems(Vec<Problem>);

impl Problems {
    pub fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.0.iter()
    }
}

impl IntoIterator for Problems {
    type Item = Problem;
    type IntoIter = std::vec::IntoIter<Problem>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.0.iter().enumerate() {
            if index > 0 {
                formatter.write_str("\n")?;
            }
            write!(formatter, "{problem}")?;
        }
        Ok(())
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{source_name} has {} problem(s):\n{problems}", problems.len())]
    Invalid { source_name: String, problems: Problems },
}

impl ConfigError {
    /// Every problem, for logs and `vestibule check`.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ConfigError::Read { path, source } => {
                vec![Problem {
                    path: String::new(),
                    message: format!("cannot read {}: {source}", path.display()),
                }]
            }
            ConfigError::Invalid { problems, .. } => problems.iter().cloned().collect(),
        }
    }
}

/// Where a configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Embedded,
}

impl Source {
    pub fn directory(&self) -> PathBuf {
        match self {
            Source::File(path) => path
                .parent()
                .filter(|parent| !parent.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            Source::Embedded => PathBuf::from(EMBEDDED_DEFAULT_DIRECTORY),
        }
    }

    pub fn read(&self) -> Result<String, ConfigError> {
        match self {
            Source::File(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            }),
            Source::Embedded => Ok(EMBEDDED_DEFAULT.to_owned()),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(path) => write!(formatter, "{}", path.display()),
            Source::Embedded => formatter.write_str("the embedded default configuration"),
        }
    }
}

/// Reads and validates a configuration.
pub fn load(source: &Source) -> Result<Snapshot, ConfigError> {
    let text = source.read()?;
    parse(&text, source)
}

/// Validates configuration text as if read from `source`.
pub fn parse(text: &str, source: &Source) -> Result<Snapshot, ConfigError> {
    validate::snapshot(text, source).map_err(|problems| ConfigError::Invalid {
        source_name: source.to_string(),
        problems,
    })
}

/// A secret value: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    pub fn new(bytes: impl Into<Arc<[u8]>>) -> Self {
        Secret(bytes.into())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn expose_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret(redacted)")
    }
}

/// A validated, immutable configuration.
#[derive(Debug)]
pub struct Snapshot {
    pub source: Source,
    /// Hex SHA-256 of the configuration text: tells which version is live.
    pub fingerprint: Box<str>,
    pub server: ServerSettings,
    pub listeners: ListenerSettings,
    pub zone: VanityZone,
    pub tls: TlsSettings,
    pub headers: HeaderNames,
    pub upstream: UpstreamSettings,
    pub session: Option<SessionSettings>,
    pub assertion: AssertionSettings,
    pub acme: Option<AcmeSettings>,
    pub observability: ObservabilitySettings,
    pub applications: Vec<Application>,
    pub hosts: HostTable,
}

impl Snapshot {
    pub fn application(&self, index: u32) -> &Application {
        &self.applications[index as usize]
    }
}

/// Process settings; changing them needs a restart (or a graceful upgrade).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Worker threads for the proxy service. Default: [`DEFAULT_THREADS`] (all cores).
    pub threads: usize,
    /// Seconds to keep serving after SIGTERM before draining. Default: [`DEFAULT_GRACE_PERIOD`].
    pub grace_period: Duration,
    /// Seconds the drain may take before the process exits. Default: [`DEFAULT_SHUTDOWN_TIMEOUT`].
    pub graceful_shutdown_timeout: Duration,
    pub pid_file: PathBuf,
    pub upgrade_socket: PathBuf,
    /// Work-stealing runtime (tasks move between threads) or one single-threaded runtime per
    /// thread (cheaper per request; connections stay on the thread that accepted them).
    /// Default: [`DEFAULT_WORK_STEALING`].
    pub work_stealing: bool,
    /// How long an idle client connection is kept open for its next request (HTTP/1.1
    /// keep-alive, and an HTTP/2 connection with no stream open); a client's `Keep-Alive:
    /// timeout=` does not lengthen it. Default: [`DEFAULT_KEEPALIVE_TIMEOUT`].
    pub keepalive_timeout: Duration,
    /// A request header must be complete within `keepalive_timeout` + this, counted from the
    /// connection's start or the end of the previous response (one budget for the idle wait and
    /// the header: pingora does not say when the first byte came): a client dribbling header
    /// bytes is cut off. Default: [`DEFAULT_REQUEST_HEADER_TIMEOUT`].
    pub request_header_timeout: Duration,
    /// Longest wait for the next bytes of a request body (HTTP/1). Default:
    /// [`DEFAULT_CLIENT_READ_TIMEOUT`].
    pub client_read_timeout: Duration,
    /// Longest wait for a client to take the next bytes of a response: a client that stops
    /// reading loses its connection instead of holding it (and an upstream connection) forever.
    /// Default: [`DEFAULT_SEND_TIMEOUT`].
    pub send_timeout: Duration,
}

/// nginx's `keepalive_timeout` is 75 s; browsers keep idle connections for about a minute.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Between nginx's `client_header_timeout` (60 s) and Apache's `mod_reqtimeout` (20-40 s).
pub const DEFAULT_REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// nginx's `client_body_timeout`.
pub const DEFAULT_CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx's `send_timeout`.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// Single-threaded runtimes measured cheaper per request (see benches/README.md).
pub const DEFAULT_WORK_STEALING: bool = false;

/// 0 means "one per available core".
pub const DEFAULT_THREADS: usize = 0;
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(0);
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_PID_FILE: &str = "/tmp/vestibule.pid";
pub const DEFAULT_UPGRADE_SOCKET: &str = "/tmp/vestibule_upgrade.sock";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSettings {
    pub https: SocketAddr,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

#[derive(Debug)]
pub struct TlsSettings {
    pub certificates: Vec<Arc<LoadedCertificate>>,
    /// How long a client may take to send its ClientHello. Default: [`DEFAULT_CLIENT_HELLO_TIMEOUT`].
    pub client_hello_timeout: Duration,
    /// Name assumed when a client sends no SNI (or an IP literal); none = such clients get
    /// `unrecognized_name`.
    pub default_server_name: Option<Box<str>>,
    /// Socket read buffer per TLS connection, 0 for none. Default: [`DEFAULT_TLS_READ_BUFFER`].
    pub read_buffer_bytes: usize,
}

/// None: rustls reads whole records into its own buffer, in reads of 4 KiB that went past a
/// buffer of that size anyway, so a socket read buffer only held memory on every connection
/// (pingora's 64 KiB default cost 1.1 GiB per 10k idle connections, 4 KiB 40 MiB; see
/// benches/README.md).
pub const DEFAULT_TLS_READ_BUFFER: usize = 0;

/// Largest `tls.read_buffer_bytes` accepted.
pub const MAX_TLS_READ_BUFFER: usize = 1 << 20;

pub const DEFAULT_CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Names of the headers the edge sets for upstreams. Client-sent copies are always removed.
#[derive(Debug, Clone)]
pub struct HeaderNames {
    pub tenant_id: HeaderName,
    pub tenant_domain: HeaderName,
    pub application_id: HeaderName,
    pub forwarded_host: HeaderName,
    pub forwarded_proto: HeaderName,
    pub forwarded_for: HeaderName,
    pub request_id: HeaderName,
    pub user_id: HeaderName,
    pub user_email: HeaderName,
    pub idp_name: HeaderName,
    pub client_id: HeaderName,
    pub access_token: HeaderName,
    pub assertion: HeaderName,
}

pub const DEFAULT_TENANT_ID_HEADER: &str = "x-tenant-id";
pub const DEFAULT_TENANT_DOMAIN_HEADER: &str = "x-tenant-domain";
pub const DEFAULT_APPLICATION_ID_HEADER: &str = "x-application-id";
pub const DEFAULT_FORWARDED_HOST_HEADER: &str = "x-forwarded-host";
pub const DEFAULT_FORWARDED_PROTO_HEADER: &str = "x-forwarded-proto";
pub const DEFAULT_FORWARDED_FOR_HEADER: &str = "x-forwarded-for";
pub const DEFAULT_REQUEST_ID_HEADER: &str = "x-request-id";
pub const DEFAULT_USER_ID_HEADER: &str = "x-user-id";
pub const DEFAULT_USER_EMAIL_HEADER: &str = "x-user-email";
pub const DEFAULT_IDP_NAME_HEADER: &str = "x-idp-name";
pub const DEFAULT_CLIENT_ID_HEADER: &str = "x-client-id";
pub const DEFAULT_ACCESS_TOKEN_HEADER: &str = "x-access-token";
pub const DEFAULT_ASSERTION_HEADER: &str = "x-vestibule-assertion";
/// Client headers starting with this prefix are always removed (identity is the edge's to set).
pub const RESERVED_USER_HEADER_PREFIX: &str = "x-user-";

impl HeaderNames {
    /// Every header the edge owns: client-sent copies never reach an upstream.
    pub fn identity_headers(&self) -> [&HeaderName; 13] {
        [
            &self.tenant_id,
            &self.tenant_domain,
            &self.application_id,
            &self.forwarded_host,
            &self.forwarded_proto,
            &self.forwarded_for,
            &self.request_id,
            &self.user_id,
            &self.user_email,
            &self.idp_name,
            &self.client_id,
            &self.access_token,
            &self.assertion,
        ]
    }
}

/// How the edge talks to upstreams.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Default: [`DEFAULT_UPSTREAM_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// Default: [`DEFAULT_UPSTREAM_READ_TIMEOUT`].
    pub read_timeout: Duration,
    /// Default: [`DEFAULT_UPSTREAM_WRITE_TIMEOUT`].
    pub write_timeout: Duration,
    /// Idle pooled connections are closed after this. Default: [`DEFAULT_UPSTREAM_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// Most idle connections kept per target and worker thread (0: none, every exchange closes
    /// its connection). Default: [`DEFAULT_UPSTREAM_MAX_IDLE_CONNECTIONS`], at most
    /// [`MAX_UPSTREAM_IDLE_CONNECTIONS`].
    pub max_idle_connections: usize,
    /// TCP health check period per target. Default: [`DEFAULT_HEALTH_CHECK_INTERVAL`].
    pub health_check_interval: Duration,
}

pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_UPSTREAM_READ_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_UPSTREAM_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// As many as nginx's default `worker_connections`: a bound below the requests a worker has in
/// flight to one target closes connections that are needed again a moment later (with 1,000
/// clients and a bound of 256, the edge opened ~6,000 upstream connections a second, each
/// leaving a TIME_WAIT behind, and served half as many requests). Connections are only made
/// when that many requests were in flight at once, and idle ones go after the idle timeout.
pub const DEFAULT_UPSTREAM_MAX_IDLE_CONNECTIONS: usize = 1024;
/// Largest `upstream.max_idle_connections` accepted.
pub const MAX_UPSTREAM_IDLE_CONNECTIONS: usize = 65_536;
pub const DEFAULT_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// One upstream target of an application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    pub tls: bool,
    /// Host name for SNI and certificate verification (https), or the IP for http.
    pub host: Box<str>,
    pub address: SocketAddr,
}

/// Session cookies and the login flow.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// At least one; the first encrypts, all decrypt (rotation).
    pub secrets: Vec<Secret>,
    /// Base name; `__Host-` is prefixed on https. Default: [`DEFAULT_SESSION_COOKIE`].
    pub cookie_name: Box<str>,
    /// Sliding expiry. Default: [`DEFAULT_SESSION_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// Hard cap since login. Default: [`DEFAULT_SESSION_ABSOLUTE_TIMEOUT`].
    pub absolute_timeout: Duration,
    /// Lifetime of a pending login. Default: [`DEFAULT_LOGIN_STATE_TIMEOUT`].
    pub login_state_timeout: Duration,
    /// Refresh this long before the access token expires. Default: [`DEFAULT_REFRESH_LEEWAY`].
    pub refresh_leeway: Duration,
}

pub const DEFAULT_SESSION_COOKIE: &str = "vestibule_session";
pub const DEFAULT_SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(8 * 3600);
pub const DEFAULT_SESSION_ABSOLUTE_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_LOGIN_STATE_TIMEOUT: Duration = Duration::from_secs(600);
pub const DEFAULT_REFRESH_LEEWAY: Duration = Duration::from_secs(60);
/// Secrets shorter than this are refused (256 bits).
pub const MINIMUM_SECRET_LENGTH: usize = 32;

/// The signed identity assertion the edge can add for upstreams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionSettings {
    /// PKCS#8 DER of the ES256 key; `None` = a key generated per process.
    pub private_key: Option<Secret>,
    /// `iss` of assertions. Default: [`DEFAULT_ASSERTION_ISSUER`].
    pub issuer: Box<str>,
    /// Default: [`DEFAULT_ASSERTION_LIFETIME`].
    pub lifetime: Duration,
}

pub const DEFAULT_ASSERTION_ISSUER: &str = "vestibule";
pub const DEFAULT_ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

/// ACME challenge types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChallengeKind {
    TlsAlpn01,
    Http01,
}

impl ChallengeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
            ChallengeKind::Http01 => "http-01",
        }
    }
}

/// On-demand certificates.
#[derive(Debug, Clone, PartialEq)]
pub struct AcmeSettings {
    pub directory_url: String,
    pub contact: Vec<String>,
    /// Extra root trusted for the ACME server's own https.
    pub ca_root: Option<PathBuf>,
    /// Default: `certs/acme` beside the configuration's parent directory ([`DEFAULT_ACME_STORAGE`]).
    pub storage: PathBuf,
    /// Shared storage, issuance locks and challenge answers for several instances.
    pub redis: Option<RedisSettings>,
    /// In order of preference; the next is tried when one fails. Default: TLS-ALPN-01, HTTP-01.
    pub challenges: Vec<ChallengeKind>,
    /// Default: [`DEFAULT_MAX_CONCURRENT_ORDERS`].
    pub max_concurrent_orders: usize,
    /// Default: [`DEFAULT_ORDERS_PER_MINUTE`].
    pub orders_per_minute: u32,
    /// How long a first handshake waits for its certificate. Default: [`DEFAULT_HANDSHAKE_WAIT`]
    /// (well under pingora's fixed 60 s handshake limit).
    pub handshake_wait: Duration,
    pub failure_backoff_initial: Duration,
    pub failure_backoff_max: Duration,
    pub renew_check_interval: Duration,
    /// Renew when this fraction of the lifetime is left. Default: [`DEFAULT_RENEWAL_FRACTION`].
    pub renewal_fraction: f64,
    /// Longest one issuance may take (account, order, validation, download) before it counts as
    /// failed. Default: [`DEFAULT_ORDER_TIMEOUT`]; below [`ISSUANCE_LOCK_TTL`], so no other
    /// instance can take the name's lock while an order still runs.
    pub order_timeout: Duration,
}

pub const DEFAULT_ORDER_TIMEOUT: Duration = Duration::from_secs(90);
/// How long an issuance lock outlives a crashed holder.
pub const ISSUANCE_LOCK_TTL: Duration = Duration::from_secs(120);

/// Where several instances share certificates, the account, locks and challenge answers.
#[derive(Clone, PartialEq)]
pub struct RedisSettings {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub database: u32,
    /// Every key starts with `{key_prefix}:`. Default: [`DEFAULT_REDIS_KEY_PREFIX`].
    pub key_prefix: String,
}

impl std::fmt::Debug for RedisSettings {
    // The password never reaches a log line.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RedisSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

pub const DEFAULT_REDIS_PORT: u16 = 6379;
pub const DEFAULT_REDIS_KEY_PREFIX: &str = "vestibule";
pub const DEFAULT_ACME_STORAGE: &str = "../certs/acme";
pub const DEFAULT_MAX_CONCURRENT_ORDERS: usize = 32;
pub const DEFAULT_ORDERS_PER_MINUTE: u32 = 300;
pub const DEFAULT_HANDSHAKE_WAIT: Duration = Duration::from_secs(25);
pub const DEFAULT_FAILURE_BACKOFF_INITIAL: Duration = Duration::from_secs(30);
pub const DEFAULT_FAILURE_BACKOFF_MAX: Duration = Duration::from_secs(3600);
pub const DEFAULT_RENEW_CHECK_INTERVAL: Duration = Duration::from_secs(600);
pub const DEFAULT_RENEWAL_FRACTION: f64 = 1.0 / 3.0;
/// `handshake_wait` must stay below pingora's fixed 60 s handshake timeout.
pub const MAX_HANDSHAKE_WAIT: Duration = Duration::from_secs(50);

#[derive(Debug, Clone)]
pub struct ObservabilitySettings {
    /// `stdout`, `off`, or a file path. Default: [`DEFAULT_ACCESS_LOG`].
    pub access_log: AccessLogTarget,
    pub log_level: Box<str>,
    pub tenant_labels: bool,
}

pub const DEFAULT_ACCESS_LOG: &str = "stdout";
pub const DEFAULT_LOG_LEVEL: &str = "info";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Off,
    Stdout,
    File(PathBuf),
}

/// Paths served without authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    Exact(Box<str>),
    /// Written with a trailing `*`.
    Prefix(Box<str>),
}

impl PathPattern {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(exact) => path == &**exact,
            PathPattern::Prefix(prefix) => path.starts_with(&**prefix),
        }
    }
}

/// An application (an environment or a product).
#[derive(Debug)]
pub struct Application {
    pub id: Box<str>,
    pub domain_name: Box<str>,
    /// https only, no localhost or loopback names. Default: [`DEFAULT_PRODUCTION_VALIDATIONS`].
    pub production: bool,
    pub custom_domain: Option<Box<str>>,
    pub upstreams: Vec<UpstreamTarget>,
    pub public_paths: Vec<PathPattern>,
    /// Where `/auth/logout` finally returns (through the IdP's logout).
    pub login_url: Option<UrlTemplate>,
    /// Where `/auth/login` on an application-level host sends users to pick their tenant.
    pub tenant_discovery_url: Option<UrlTemplate>,
    pub ask: Option<AskSettings>,
    pub identity: Option<Arc<IdentityProvider>>,
    pub tenants: Vec<Tenant>,
}

/// Safe by default: an application must opt out of production validations.
pub const DEFAULT_PRODUCTION_VALIDATIONS: bool = true;

impl Application {
    pub fn is_public(&self, path: &str) -> bool {
        self.public_paths.iter().any(|pattern| pattern.matches(path))
    }
}

/// An extra on-demand certificate gate: `GET {url}?domain=NAME` must answer 200.
#[derive(Debug, Clone)]
pub struct AskSettings {
    pub url: UrlTemplate,
    /// Default: [`DEFAULT_ASK_TTL`].
    pub ttl: Duration,
}

pub const DEFAULT_ASK_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: Box<str>,
    pub domain_name: Box<str>,
    pub custom_domain: Option<Box<str>>,
}

/// Algorithms accepted for bearer tokens and ID tokens: asymmetric only (RFC 8725 §3.1).
pub const ACCEPTED_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];
pub const DEFAULT_ALGORITHMS: &[&str] = &["RS256", "ES256", "EdDSA"];
pub const DEFAULT_TENANT_CLAIM: &str = "tnt_id";
pub const DEFAULT_SCOPES: &[&str] = &["openid", "email", "profile", "offline_access"];
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);
pub const DEFAULT_JWKS_COOLDOWN: Duration = Duration::from_secs(30);

/// Where the verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Jwks(UrlTemplate),
    Discovery(UrlTemplate),
}

/// An application's identity provider: bearer-token checks and the login flow.
#[derive(Debug)]
pub struct IdentityProvider {
    pub name: Box<str>,
    /// Accepted `iss` values (several during a domain migration); may carry `{tenant_domain}`.
    pub issuers: Vec<UrlTemplate>,
    pub keys: KeySource,
    /// Accepted `aud` values; `client_id` is always accepted too.
    pub audiences: Vec<Box<str>>,
    pub client_id: Option<Box<str>>,
    pub client_secret: Option<Secret>,
    /// Default: [`DEFAULT_TENANT_CLAIM`].
    pub tenant_claim: Box<str>,
    /// Default: [`DEFAULT_ALGORITHMS`].
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Required `typ` header, when set (for example `at+jwt`).
    pub token_type: Option<Box<str>>,
    pub authorize_url: Option<UrlTemplate>,
    pub token_url: Option<UrlTemplate>,
    pub logout_url: Option<UrlTemplate>,
    pub revocation_url: Option<UrlTemplate>,
    /// Default: [`DEFAULT_SCOPES`].
    pub scopes: Vec<Box<str>>,
    /// Clock skew allowed on `exp`/`nbf`/`iat`. Default: [`DEFAULT_LEEWAY`].
    pub leeway: Duration,
    /// Background JWKS refresh period. Default: [`DEFAULT_JWKS_REFRESH`].
    pub jwks_refresh: Duration,
    /// Minimum time between fetches caused by unknown `kid`s. Default: [`DEFAULT_JWKS_COOLDOWN`].
    pub jwks_cooldown: Duration,
    /// Accept tokens with no tenant claim on application-level hosts. Default: false.
    pub allow_tokens_without_tenant: bool,
    pub forward_access_token: bool,
    pub forward_assertion: bool,
}

impl IdentityProvider {
    /// The login flow needs a client.
    pub fn login_enabled(&self) -> bool {
        self.client_id.is_some()
    }
}

#[cfg(test)]
pub mod tests_support {
    /// The smallest valid configuration (no certificate files needed).
    pub const MINIMAL: &str = r#"
[listeners]
https = "127.0.0.1:0"

[platform]
apex_domain = "vestibule.test"
region = "us"
account = "acme"

[[applications]]
id = "portal"
domain_name = "portal"
production_validations = false
upstream = "http://127.0.0.1:3000"
"#;
}
