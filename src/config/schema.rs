//! The configuration file exactly as written: serde types with `deny_unknown_fields`.
//!
//! Nothing here is trusted or defaulted beyond `Option`; [`super::validate`] turns these into the
//! validated [`super::Snapshot`]. Defaults live beside the validated fields they fill.

use serde::Deserialize;

/// Top-level keys, in the order sections are read and reported.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "server",
    "listeners",
    "platform",
    "tls",
    "headers",
    "upstream",
    "session",
    "assertion",
    "acme",
    "observability",
    "applications",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub threads: Option<usize>,
    pub grace_period_seconds: Option<u64>,
    pub graceful_shutdown_timeout_seconds: Option<u64>,
    pub pid_file: Option<String>,
    pub upgrade_socket: Option<String>,
    pub work_stealing: Option<bool>,
    pub keepalive_timeout_seconds: Option<u64>,
    pub request_header_timeout_seconds: Option<u64>,
    pub client_read_timeout_seconds: Option<u64>,
    pub send_timeout_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenersSection {
    pub https: String,
    pub http: Option<String>,
    pub admin: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformSection {
    pub apex_domain: String,
    pub region: String,
    pub account: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    #[serde(default)]
    pub certificates: Vec<CertificateSection>,
    pub client_hello_timeout_ms: Option<u64>,
    /// Name assumed for ClientHellos without SNI (or with an IP literal, which RFC 6066 forbids).
    pub default_server_name: Option<String>,
    pub read_buffer_bytes: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSection {
    pub certificate: String,
    pub private_key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersSection {
    pub tenant_id: Option<String>,
    pub tenant_domain: Option<String>,
    pub application_id: Option<String>,
    pub forwarded_host: Option<String>,
    pub forwarded_proto: Option<String>,
    pub forwarded_for: Option<String>,
    pub request_id: Option<String>,
    pub user_id: Option<String>,
    pub user_email: Option<String>,
    pub idp_name: Option<String>,
    pub client_id: Option<String>,
    pub access_token: Option<String>,
    pub assertion: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub connect_timeout_ms: Option<u64>,
    pub read_timeout_ms: Option<u64>,
    pub write_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub max_idle_connections: Option<usize>,
    pub health_check_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSection {
    /// Literal secrets, `env:NAME` or `file:PATH`; the first encrypts, all decrypt.
    pub secrets: Vec<String>,
    pub cookie_name: Option<String>,
    pub idle_timeout_seconds: Option<u64>,
    pub absolute_timeout_seconds: Option<u64>,
    pub login_state_timeout_seconds: Option<u64>,
    pub refresh_leeway_seconds: Option<u64>,
    pub store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionSection {
    /// PEM PKCS#8 ECDSA P-256 key; generated per process when absent.
    pub private_key: Option<String>,
    pub issuer: Option<String>,
    pub lifetime_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSection {
    pub directory_url: String,
    #[serde(default)]
    pub contact: Vec<String>,
    pub ca_root: Option<String>,
    pub storage: Option<String>,
    pub redis_url: Option<String>,
    pub redis_key_prefix: Option<String>,
    pub challenges: Option<Vec<String>>,
    pub max_concurrent_orders: Option<usize>,
    pub orders_per_minute: Option<u32>,
    pub handshake_wait_ms: Option<u64>,
    pub failure_backoff_initial_seconds: Option<u64>,
    pub failure_backoff_max_seconds: Option<u64>,
    pub renew_check_interval_seconds: Option<u64>,
    pub renewal_fraction: Option<f64>,
    pub order_timeout_seconds: Option<u64>,
    pub key_type: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservabilitySection {
    pub access_log: Option<String>,
    pub log_level: Option<String>,
    /// Label metrics by tenant id (off by default: tenant ids can be many).
    pub tenant_labels: Option<bool>,
}

/// One upstream target or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(value) => vec![value],
            OneOrMany::Many(values) => values,
        }
    }
}

/// An application without its tenants (those are read one by one, see `super::validate`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationSection {
    pub id: String,
    pub domain_name: String,
    pub production_validations: Option<bool>,
    pub custom_domain: Option<String>,
    pub upstream: OneOrMany,
    #[serde(default)]
    pub public_paths: Vec<String>,
    pub login_url: Option<String>,
    pub tenant_discovery_url: Option<String>,
    pub ask_url: Option<String>,
    pub ask_ttl_seconds: Option<u64>,
    pub identity_provider: Option<IdentityProviderSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSection {
    pub id: String,
    pub domain_name: String,
    pub custom_domain: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityProviderSection {
    pub name: String,
    #[serde(default)]
    pub issuers: Vec<String>,
    pub discovery_url: Option<String>,
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub tenant_claim: Option<String>,
    pub algorithms: Option<Vec<String>>,
    pub token_type: Option<String>,
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    pub logout_url: Option<String>,
    pub revocation_url: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub leeway_seconds: Option<u64>,
    pub jwks_refresh_seconds: Option<u64>,
    pub jwks_cooldown_seconds: Option<u64>,
    pub allow_tokens_without_tenant: Option<bool>,
    pub forward_access_token: Option<bool>,
    pub forward_assertion: Option<bool>,
}
