//! File schema → [`Snapshot`], collecting every problem with its key path.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use serde::de::DeserializeOwned;

use super::schema::*;
use super::*;
use crate::tenancy::host::{canonical_domain, canonical_label, is_loopback_name};
use crate::tenancy::{HostTableBuilder, VanityZone};
use crate::tls::LoadedCertificate;

pub(super) fn snapshot(text: &str, source: &Source) -> Result<Snapshot, Problems> {
    let mut problems = Problems::default();
    let mut table: toml::Table = match text.parse() {
        Ok(table) => table,
        Err(error) => {
            problems.add("", format!("not valid TOML: {error}"));
            return Err(problems);
        }
    };
    let unknown: Vec<String> = table
        .keys()
        .filter(|key| !TOP_LEVEL_KEYS.contains(&key.as_str()))
        .cloned()
        .collect();
    for key in unknown {
        problems.add(
            key,
            format!("unknown section; expected one of: {}", TOP_LEVEL_KEYS.join(", ")),
        );
    }
    let directory = source.directory();
    let context = Context { directory: &directory };

    let server = take::<ServerSection>(&mut table, "server", &mut problems).unwrap_or_default();
    let listeners = take_required::<ListenersSection>(&mut table, "listeners", &mut problems);
    let platform = take_required::<PlatformSection>(&mut table, "platform", &mut problems);
    let tls = take::<TlsSection>(&mut table, "tls", &mut problems).unwrap_or_default();
    let headers = take::<HeadersSection>(&mut table, "headers", &mut problems).unwrap_or_default();
    let upstream = take::<UpstreamSection>(&mut table, "upstream", &mut problems).unwrap_or_default();
    let session = take::<SessionSection>(&mut table, "session", &mut problems);
    let assertion = take::<AssertionSection>(&mut table, "assertion", &mut problems).unwrap_or_default();
    let acme = take::<AcmeSection>(&mut table, "acme", &mut problems);
    let observability = take::<ObservabilitySection>(&mut table, "observability", &mut problems).unwrap_or_default();
    let applications = take_applications(&mut table, &mut problems);

    let server = context.server(server, &mut problems);
    let listeners = listeners.and_then(|section| listeners_settings(section, &mut problems));
    let zone = platform.and_then(|section| vanity_zone(section, &mut problems));
    let tls = context.tls(tls, &mut problems);
    let headers = header_names(headers, &mut problems);
    let upstream = context.upstream(upstream, &mut problems);
    let session = session.and_then(|section| session_settings(section, &context, &mut problems));
    let assertion = context.assertion(assertion, &mut problems);
    let acme = acme.and_then(|section| context.acme(section, &mut problems));
    let observability = context.observability(observability, &mut problems);

    let mut validated = Vec::new();
    let mut ids = HashSet::new();
    for (index, (section, tenants)) in applications.into_iter().enumerate() {
        let path = format!("applications[{index}]");
        if let Some(application) = application(section, tenants, &path, &context, &mut problems) {
            if !ids.insert(application.id.clone()) {
                problems.add(
                    format!("{path}.id"),
                    format!("`{}` is already used by another application", application.id),
                );
            }
            validated.push(application);
        }
    }
    if session.is_none() {
        for (index, application) in validated.iter().enumerate() {
            if application.identity.as_ref().is_some_and(|idp| idp.login_enabled()) {
                problems.add(
                    format!("applications[{index}].identity_provider.client_id"),
                    "the login flow needs a [session] section with at least one secret",
                );
            }
        }
    }
    let hosts = zone
        .as_ref()
        .and_then(|zone| host_table(zone, &validated, &mut problems));

    match (listeners, zone, hosts, headers) {
        (Some(listeners), Some(zone), Some(hosts), Some(headers)) if problems.is_empty() => Ok(Snapshot {
            source: source.clone(),
            fingerprint: fingerprint(text),
            server,
            listeners,
            zone,
            tls,
            headers,
            upstream,
            session,
            assertion,
            acme,
            observability,
            applications: validated,
            hosts,
        }),
        _ => Err(problems),
    }
}

fn fingerprint(text: &str) -> Box<str> {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<String>()
        .into()
}

/// Deserializes `value`, reporting a failure at `path` plus the inner key path serde saw.
fn read<T: DeserializeOwned>(value: toml::Value, path: &str, problems: &mut Problems) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(parsed) => Some(parsed),
        Err(error) => {
            let inner = error.path().to_string();
            let full = match (path.is_empty(), inner.as_str()) {
                (_, ".") => path.to_owned(),
                (true, _) => inner,
                (false, _) if inner.starts_with('[') => format!("{path}{inner}"),
                (false, _) => format!("{path}.{inner}"),
            };
            problems.add(full, error.into_inner().to_string().trim_end().to_owned());
            None
        }
    }
}

fn take<T: DeserializeOwned>(table: &mut toml::Table, key: &str, problems: &mut Problems) -> Option<T> {
    table.remove(key).and_then(|value| read(value, key, problems))
}

fn take_required<T: DeserializeOwned>(table: &mut toml::Table, key: &str, problems: &mut Problems) -> Option<T> {
    if !table.contains_key(key) {
        problems.add(key, "this section is required");
        return None;
    }
    take(table, key, problems)
}

/// Applications and their tenants, each read on its own so one bad entry hides nothing.
fn take_applications(
    table: &mut toml::Table,
    problems: &mut Problems,
) -> Vec<(ApplicationSection, Vec<Option<TenantSection>>)> {
    let Some(value) = table.remove("applications") else {
        return Vec::new();
    };
    let toml::Value::Array(entries) = value else {
        problems.add("applications", "must be an array of tables ([[applications]])");
        return Vec::new();
    };
    let mut applications = Vec::new();
    for (index, entry) in entries.into_iter().enumerate() {
        let path = format!("applications[{index}]");
        let toml::Value::Table(mut entry) = entry else {
            problems.add(path, "must be a table");
            continue;
        };
        let tenants = match entry.remove("tenants") {
            None => Vec::new(),
            Some(toml::Value::Array(tenants)) => tenants
                .into_iter()
                .enumerate()
                .map(|(tenant_index, tenant)| read(tenant, &format!("{path}.tenants[{tenant_index}]"), problems))
                .collect(),
            Some(_) => {
                problems.add(
                    format!("{path}.tenants"),
                    "must be an array of tables ([[applications.tenants]])",
                );
                Vec::new()
            }
        };
        if let Some(section) = read::<ApplicationSection>(toml::Value::Table(entry), &path, problems) {
            applications.push((section, tenants));
        }
    }
    applications
}

struct Context<'a> {
    directory: &'a Path,
}

impl Context<'_> {
    fn path(&self, value: &str) -> PathBuf {
        let path = Path::new(value);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.directory.join(path)
        }
    }

    fn server(&self, section: ServerSection, problems: &mut Problems) -> ServerSettings {
        let threads = section.threads.unwrap_or(DEFAULT_THREADS);
        if threads > 1024 {
            problems.add("server.threads", "must be at most 1024");
        }
        let mut seconds = |value: Option<u64>, default: Duration, key: &str| {
            let value = value.map_or(default, Duration::from_secs);
            if value.is_zero() {
                problems.add(format!("server.{key}"), "must be greater than zero");
            }
            value
        };
        ServerSettings {
            threads,
            grace_period: section
                .grace_period_seconds
                .map_or(DEFAULT_GRACE_PERIOD, Duration::from_secs),
            graceful_shutdown_timeout: section
                .graceful_shutdown_timeout_seconds
                .map_or(DEFAULT_SHUTDOWN_TIMEOUT, Duration::from_secs),
            pid_file: section
                .pid_file
                .map_or_else(|| PathBuf::from(DEFAULT_PID_FILE), |p| self.path(&p)),
            work_stealing: section.work_stealing.unwrap_or(DEFAULT_WORK_STEALING),
            keepalive_timeout: seconds(
                section.keepalive_timeout_seconds,
                DEFAULT_KEEPALIVE_TIMEOUT,
                "keepalive_timeout_seconds",
            ),
            request_header_timeout: seconds(
                section.request_header_timeout_seconds,
                DEFAULT_REQUEST_HEADER_TIMEOUT,
                "request_header_timeout_seconds",
            ),
            client_read_timeout: seconds(
                section.client_read_timeout_seconds,
                DEFAULT_CLIENT_READ_TIMEOUT,
                "client_read_timeout_seconds",
            ),
            send_timeout: seconds(
                section.send_timeout_seconds,
                DEFAULT_SEND_TIMEOUT,
                "send_timeout_seconds",
            ),
            upgrade_socket: section
                .upgrade_socket
                .map_or_else(|| PathBuf::from(DEFAULT_UPGRADE_SOCKET), |p| self.path(&p)),
        }
    }

    fn assertion(&self, section: AssertionSection, problems: &mut Problems) -> AssertionSettings {
        let private_key = section.private_key.and_then(|file| {
            let path = self.path(&file);
            let pem = match std::fs::read(&path) {
                Ok(pem) => pem,
                Err(error) => {
                    problems.add(
                        "assertion.private_key",
                        format!("cannot read {}: {error}", path.display()),
                    );
                    return None;
                }
            };
            match rustls_pemfile::private_key(&mut &pem[..]) {
                Ok(Some(rustls::pki_types::PrivateKeyDer::Pkcs8(der))) => {
                    Some(Secret::new(der.secret_pkcs8_der().to_vec()))
                }
                _ => {
                    problems.add(
                        "assertion.private_key",
                        "must be a PEM PKCS#8 ECDSA P-256 key (BEGIN PRIVATE KEY)",
                    );
                    None
                }
            }
        });
        let lifetime = section
            .lifetime_seconds
            .map_or(DEFAULT_ASSERTION_LIFETIME, Duration::from_secs);
        if lifetime.is_zero() || lifetime > Duration::from_secs(3600) {
            problems.add("assertion.lifetime_seconds", "must be between 1 and 3600");
        }
        AssertionSettings {
            private_key,
            issuer: section
                .issuer
                .unwrap_or_else(|| DEFAULT_ASSERTION_ISSUER.to_owned())
                .into(),
            lifetime,
        }
    }

    fn tls(&self, section: TlsSection, problems: &mut Problems) -> TlsSettings {
        let mut certificates = Vec::new();
        for (index, entry) in section.certificates.iter().enumerate() {
            let certificate = self.path(&entry.certificate);
            let private_key = self.path(&entry.private_key);
            match LoadedCertificate::load(&certificate, &private_key) {
                Ok(loaded) => certificates.push(Arc::new(loaded)),
                Err(error) => problems.add(format!("tls.certificates[{index}]"), error.to_string()),
            }
        }
        let client_hello_timeout = section
            .client_hello_timeout_ms
            .map_or(DEFAULT_CLIENT_HELLO_TIMEOUT, Duration::from_millis);
        if client_hello_timeout.is_zero() || client_hello_timeout > MAX_HANDSHAKE_WAIT {
            problems.add("tls.client_hello_timeout_ms", "must be between 1 ms and 50 s");
        }
        let default_server_name = section.default_server_name.as_deref().and_then(|name| {
            canonical_domain(name)
                .map_err(|error| problems.add("tls.default_server_name", error.to_string()))
                .ok()
        });
        let read_buffer_bytes = section.read_buffer_bytes.unwrap_or(DEFAULT_TLS_READ_BUFFER);
        if read_buffer_bytes > MAX_TLS_READ_BUFFER {
            problems.add("tls.read_buffer_bytes", "must be at most 1048576 (0: no buffer)");
        }
        TlsSettings {
            certificates,
            client_hello_timeout,
            default_server_name,
            read_buffer_bytes,
        }
    }

    fn upstream(&self, section: UpstreamSection, problems: &mut Problems) -> UpstreamSettings {
        let max_idle_connections = match section.max_idle_connections {
            None => DEFAULT_UPSTREAM_MAX_IDLE_CONNECTIONS,
            Some(count) if count > MAX_UPSTREAM_IDLE_CONNECTIONS => {
                problems.add(
                    "upstream.max_idle_connections",
                    format!("at most {MAX_UPSTREAM_IDLE_CONNECTIONS}"),
                );
                DEFAULT_UPSTREAM_MAX_IDLE_CONNECTIONS
            }
            Some(count) => count,
        };
        let mut duration = |value: Option<u64>, default: Duration, key: &str| {
            let value = value.map_or(default, Duration::from_millis);
            if value.is_zero() {
                problems.add(format!("upstream.{key}"), "must be greater than zero");
            }
            value
        };
        UpstreamSettings {
            connect_timeout: duration(
                section.connect_timeout_ms,
                DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
                "connect_timeout_ms",
            ),
            read_timeout: duration(
                section.read_timeout_ms,
                DEFAULT_UPSTREAM_READ_TIMEOUT,
                "read_timeout_ms",
            ),
            write_timeout: duration(
                section.write_timeout_ms,
                DEFAULT_UPSTREAM_WRITE_TIMEOUT,
                "write_timeout_ms",
            ),
            idle_timeout: duration(
                section.idle_timeout_ms,
                DEFAULT_UPSTREAM_IDLE_TIMEOUT,
                "idle_timeout_ms",
            ),
            max_idle_connections,
            health_check_interval: duration(
                section.health_check_interval_ms,
                DEFAULT_HEALTH_CHECK_INTERVAL,
                "health_check_interval_ms",
            ),
        }
    }

    fn acme(&self, section: AcmeSection, problems: &mut Problems) -> Option<AcmeSettings> {
        let before = problems.len();
        match url::Url::parse(&section.directory_url) {
            Ok(url) if url.scheme() == "https" => {}
            Ok(_) => problems.add("acme.directory_url", "ACME requires https (RFC 8555 §6.1)"),
            Err(error) => problems.add("acme.directory_url", format!("not a valid URL: {error}")),
        }
        for (index, contact) in section.contact.iter().enumerate() {
            if !contact.starts_with("mailto:") || contact.len() <= "mailto:".len() {
                problems.add(format!("acme.contact[{index}]"), "must be a `mailto:` URL");
            }
        }
        let ca_root = section.ca_root.map(|root| self.path(&root));
        if let Some(root) = &ca_root
            && !root.is_file()
        {
            problems.add("acme.ca_root", format!("{} does not exist", root.display()));
        }
        let challenges = match section.challenges {
            None => vec![ChallengeKind::TlsAlpn01, ChallengeKind::Http01],
            Some(names) => {
                let mut kinds = Vec::new();
                for (index, name) in names.iter().enumerate() {
                    match name.as_str() {
                        "tls-alpn-01" => kinds.push(ChallengeKind::TlsAlpn01),
                        "http-01" => kinds.push(ChallengeKind::Http01),
                        other => problems.add(
                            format!("acme.challenges[{index}]"),
                            format!("unknown challenge `{other}`; expected tls-alpn-01 or http-01"),
                        ),
                    }
                }
                if names.is_empty() {
                    problems.add("acme.challenges", "needs at least one challenge type");
                }
                kinds
            }
        };
        let max_concurrent_orders = section.max_concurrent_orders.unwrap_or(DEFAULT_MAX_CONCURRENT_ORDERS);
        if max_concurrent_orders == 0 {
            problems.add("acme.max_concurrent_orders", "must be at least 1");
        }
        let orders_per_minute = section.orders_per_minute.unwrap_or(DEFAULT_ORDERS_PER_MINUTE);
        if orders_per_minute == 0 {
            problems.add("acme.orders_per_minute", "must be at least 1");
        }
        let handshake_wait = section
            .handshake_wait_ms
            .map_or(DEFAULT_HANDSHAKE_WAIT, Duration::from_millis);
        if handshake_wait.is_zero() || handshake_wait > MAX_HANDSHAKE_WAIT {
            problems.add(
                "acme.handshake_wait_ms",
                format!(
                    "must be between 1 ms and {} ms (pingora ends handshakes at 60 s)",
                    MAX_HANDSHAKE_WAIT.as_millis()
                ),
            );
        }
        let order_timeout = section
            .order_timeout_seconds
            .map_or(DEFAULT_ORDER_TIMEOUT, Duration::from_secs);
        if order_timeout.is_zero() || order_timeout >= ISSUANCE_LOCK_TTL {
            problems.add(
                "acme.order_timeout_seconds",
                format!(
                    "must be between 1 and {} (below the issuance lock's lifetime)",
                    ISSUANCE_LOCK_TTL.as_secs() - 1
                ),
            );
        }
        let renewal_fraction = section.renewal_fraction.unwrap_or(DEFAULT_RENEWAL_FRACTION);
        if !(renewal_fraction > 0.0 && renewal_fraction < 1.0) {
            problems.add("acme.renewal_fraction", "must be between 0 and 1 (exclusive)");
        }
        if let Some(key_type) = &section.key_type
            && key_type != "ecdsa-p256"
        {
            problems.add("acme.key_type", "only `ecdsa-p256` is supported");
        }
        let failure_backoff_initial = section
            .failure_backoff_initial_seconds
            .map_or(DEFAULT_FAILURE_BACKOFF_INITIAL, Duration::from_secs);
        let failure_backoff_max = section
            .failure_backoff_max_seconds
            .map_or(DEFAULT_FAILURE_BACKOFF_MAX, Duration::from_secs);
        if failure_backoff_max < failure_backoff_initial {
            problems.add(
                "acme.failure_backoff_max_seconds",
                "must not be less than failure_backoff_initial_seconds",
            );
        }
        let key_prefix = section
            .redis_key_prefix
            .unwrap_or_else(|| DEFAULT_REDIS_KEY_PREFIX.to_owned());
        if key_prefix.is_empty()
            || key_prefix.len() > 64
            || !key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
        {
            problems.add(
                "acme.redis_key_prefix",
                "must be 1 to 64 characters of letters, digits, `_`, `-`, `.` or `:`",
            );
        }
        let redis = match section.redis_url.as_deref().map(|url| redis_settings(url, key_prefix)) {
            None => None,
            Some(Ok(settings)) => Some(settings),
            Some(Err(message)) => {
                problems.add("acme.redis_url", message);
                None
            }
        };
        (problems.len() == before).then(|| AcmeSettings {
            directory_url: section.directory_url,
            contact: section.contact,
            ca_root,
            storage: self.path(section.storage.as_deref().unwrap_or(DEFAULT_ACME_STORAGE)),
            redis,
            challenges,
            max_concurrent_orders,
            orders_per_minute,
            handshake_wait,
            failure_backoff_initial,
            failure_backoff_max,
            renew_check_interval: section
                .renew_check_interval_seconds
                .map_or(DEFAULT_RENEW_CHECK_INTERVAL, Duration::from_secs),
            renewal_fraction,
            order_timeout,
        })
    }

    fn observability(&self, section: ObservabilitySection, problems: &mut Problems) -> ObservabilitySettings {
        let access_log = match section.access_log.as_deref().unwrap_or(DEFAULT_ACCESS_LOG) {
            "off" => AccessLogTarget::Off,
            "stdout" => AccessLogTarget::Stdout,
            "" => {
                problems.add("observability.access_log", "use `off`, `stdout` or a file path");
                AccessLogTarget::Off
            }
            file => AccessLogTarget::File(self.path(file)),
        };
        let log_level = section.log_level.unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            problems.add(
                "observability.log_level",
                format!("`{log_level}` is not a valid log filter"),
            );
        }
        ObservabilitySettings {
            access_log,
            log_level: log_level.into(),
            tenant_labels: section.tenant_labels.unwrap_or(false),
        }
    }
}

fn socket_address(value: &str, path: &str, problems: &mut Problems) -> Option<SocketAddr> {
    match value.parse() {
        Ok(address) => Some(address),
        Err(_) => {
            problems.add(
                path,
                format!("`{value}` is not an address like 127.0.0.1:8443 or [::]:443"),
            );
            None
        }
    }
}

fn listeners_settings(section: ListenersSection, problems: &mut Problems) -> Option<ListenerSettings> {
    let https = socket_address(&section.https, "listeners.https", problems);
    let http = section
        .http
        .as_deref()
        .map(|v| socket_address(v, "listeners.http", problems));
    let admin = section
        .admin
        .as_deref()
        .map(|v| socket_address(v, "listeners.admin", problems));
    let (https, http, admin) = (
        https?,
        http.map(|v| v.ok_or(())).transpose().ok()?,
        admin.map(|v| v.ok_or(())).transpose().ok()?,
    );
    let mut seen = HashSet::new();
    for (name, address) in [("https", Some(https)), ("http", http), ("admin", admin)] {
        if let Some(address) = address
            && address.port() != 0
            && !seen.insert(address)
        {
            problems.add(
                format!("listeners.{name}"),
                format!("{address} is used by another listener"),
            );
        }
    }
    Some(ListenerSettings { https, http, admin })
}

fn vanity_zone(section: PlatformSection, problems: &mut Problems) -> Option<VanityZone> {
    let apex = canonical_domain(&section.apex_domain)
        .map_err(|error| problems.add("platform.apex_domain", error.to_string()))
        .ok();
    let region = canonical_label(&section.region)
        .map_err(|error| problems.add("platform.region", error.to_string()))
        .ok();
    let account = canonical_label(&section.account)
        .map_err(|error| problems.add("platform.account", error.to_string()))
        .ok();
    Some(VanityZone {
        apex_domain: apex?,
        region: region?,
        account: account?,
    })
}

fn header_names(section: HeadersSection, problems: &mut Problems) -> Option<HeaderNames> {
    /// Headers that carry protocol meaning or credentials: never usable as identity headers.
    const FORBIDDEN: &[&str] = &[
        "host",
        "cookie",
        "set-cookie",
        "authorization",
        "connection",
        "content-length",
        "content-type",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "forwarded",
        "via",
    ];
    let mut seen = HashSet::new();
    let mut name = |value: Option<String>, default: &str, key: &str| -> Option<HeaderName> {
        let text = value.unwrap_or_else(|| default.to_owned()).to_ascii_lowercase();
        let path = format!("headers.{key}");
        let Ok(parsed) = HeaderName::from_bytes(text.as_bytes()) else {
            problems.add(path, format!("`{text}` is not a valid header name"));
            return None;
        };
        if FORBIDDEN.contains(&text.as_str()) {
            problems.add(path, format!("`{text}` has protocol meaning and cannot carry identity"));
            return None;
        }
        if !seen.insert(text.replace('_', "-")) {
            problems.add(path, format!("`{text}` is already used by another header setting"));
            return None;
        }
        Some(parsed)
    };
    let names = (
        name(section.tenant_id, DEFAULT_TENANT_ID_HEADER, "tenant_id"),
        name(section.tenant_domain, DEFAULT_TENANT_DOMAIN_HEADER, "tenant_domain"),
        name(section.application_id, DEFAULT_APPLICATION_ID_HEADER, "application_id"),
        name(section.forwarded_host, DEFAULT_FORWARDED_HOST_HEADER, "forwarded_host"),
        name(
            section.forwarded_proto,
            DEFAULT_FORWARDED_PROTO_HEADER,
            "forwarded_proto",
        ),
        name(section.forwarded_for, DEFAULT_FORWARDED_FOR_HEADER, "forwarded_for"),
        name(section.request_id, DEFAULT_REQUEST_ID_HEADER, "request_id"),
        name(section.user_id, DEFAULT_USER_ID_HEADER, "user_id"),
        name(section.user_email, DEFAULT_USER_EMAIL_HEADER, "user_email"),
        name(section.idp_name, DEFAULT_IDP_NAME_HEADER, "idp_name"),
        name(section.client_id, DEFAULT_CLIENT_ID_HEADER, "client_id"),
        name(section.access_token, DEFAULT_ACCESS_TOKEN_HEADER, "access_token"),
        name(section.assertion, DEFAULT_ASSERTION_HEADER, "assertion"),
    );
    Some(HeaderNames {
        tenant_id: names.0?,
        tenant_domain: names.1?,
        application_id: names.2?,
        forwarded_host: names.3?,
        forwarded_proto: names.4?,
        forwarded_for: names.5?,
        request_id: names.6?,
        user_id: names.7?,
        user_email: names.8?,
        idp_name: names.9?,
        client_id: names.10?,
        access_token: names.11?,
        assertion: names.12?,
    })
}

fn secret(value: &str, path: &str, context: &Context<'_>, problems: &mut Problems) -> Option<Secret> {
    let bytes = if let Some(variable) = value.strip_prefix("env:") {
        match std::env::var(variable) {
            Ok(found) => found.into_bytes(),
            Err(_) => {
                problems.add(path, format!("environment variable `{variable}` is not set"));
                return None;
            }
        }
    } else if let Some(file) = value.strip_prefix("file:") {
        let file = context.path(file);
        match std::fs::read(&file) {
            Ok(mut found) => {
                while found.last().is_some_and(|b| b.is_ascii_whitespace()) {
                    found.pop();
                }
                found
            }
            Err(error) => {
                problems.add(path, format!("cannot read {}: {error}", file.display()));
                return None;
            }
        }
    } else {
        value.as_bytes().to_vec()
    };
    Some(Secret::new(bytes))
}

fn session_settings(
    section: SessionSection,
    context: &Context<'_>,
    problems: &mut Problems,
) -> Option<SessionSettings> {
    let before = problems.len();
    if section.secrets.is_empty() {
        problems.add("session.secrets", "needs at least one secret");
    }
    let mut secrets = Vec::new();
    for (index, value) in section.secrets.iter().enumerate() {
        let path = format!("session.secrets[{index}]");
        if let Some(found) = secret(value, &path, context, problems) {
            if found.expose().len() < MINIMUM_SECRET_LENGTH {
                problems.add(path, format!("must be at least {MINIMUM_SECRET_LENGTH} bytes"));
            } else {
                secrets.push(found);
            }
        }
    }
    let cookie_name = section.cookie_name.unwrap_or_else(|| DEFAULT_SESSION_COOKIE.to_owned());
    if cookie_name.is_empty()
        || !cookie_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        || cookie_name.starts_with("__")
    {
        problems.add(
            "session.cookie_name",
            "letters, digits, `_` and `-` only, and no `__` prefix (the edge adds `__Host-` itself)",
        );
    }
    let idle_timeout = section
        .idle_timeout_seconds
        .map_or(DEFAULT_SESSION_IDLE_TIMEOUT, Duration::from_secs);
    let absolute_timeout = section
        .absolute_timeout_seconds
        .map_or(DEFAULT_SESSION_ABSOLUTE_TIMEOUT, Duration::from_secs);
    if idle_timeout.is_zero() || absolute_timeout < idle_timeout {
        problems.add(
            "session.idle_timeout_seconds",
            "must be positive and not above absolute_timeout_seconds",
        );
    }
    if let Some(store) = &section.store
        && store != "cookie"
    {
        problems.add("session.store", "only `cookie` is supported");
    }
    (problems.len() == before).then(|| SessionSettings {
        secrets,
        cookie_name: cookie_name.into(),
        idle_timeout,
        absolute_timeout,
        login_state_timeout: section
            .login_state_timeout_seconds
            .map_or(DEFAULT_LOGIN_STATE_TIMEOUT, Duration::from_secs),
        refresh_leeway: section
            .refresh_leeway_seconds
            .map_or(DEFAULT_REFRESH_LEEWAY, Duration::from_secs),
    })
}

fn upstream_target(value: &str, production: bool, path: &str, problems: &mut Problems) -> Option<UpstreamTarget> {
    let url = match url::Url::parse(value) {
        Ok(url) => url,
        Err(_) => {
            problems.add(path, format!("`{value}` must be a URL like http://10.0.0.5:8080"));
            return None;
        }
    };
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        other => {
            problems.add(path, format!("scheme `{other}` is not supported; use http or https"));
            return None;
        }
    };
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        problems.add(path, "an upstream is an origin: no path, query or fragment");
        return None;
    }
    if !url.username().is_empty() || url.password().is_some() {
        problems.add(path, "credentials in upstream URLs are not allowed");
        return None;
    }
    let Some(host) = url.host_str() else {
        problems.add(path, format!("`{value}` has no host"));
        return None;
    };
    if production {
        if !tls {
            problems.add(path, format!("`{value}` must use https (production validations)"));
        }
        if is_loopback_name(host) {
            problems.add(
                path,
                format!("`{value}` points at a loopback or localhost name (production validations)"),
            );
        }
        if !tls || is_loopback_name(host) {
            return None;
        }
    }
    let port = url.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    // Resolved once per load, never on the request path.
    let address = match (bare_host, port).to_socket_addrs().map(|mut found| found.next()) {
        Ok(Some(address)) => address,
        _ => {
            problems.add(path, format!("cannot resolve `{host}`"));
            return None;
        }
    };
    Some(UpstreamTarget {
        tls,
        host: bare_host.into(),
        address,
    })
}

fn path_pattern(value: &str, path: &str, problems: &mut Problems) -> Option<PathPattern> {
    if !value.starts_with('/') {
        problems.add(path, format!("`{value}` must start with `/`"));
        return None;
    }
    if value.contains(['?', '#']) || value.contains("..") {
        problems.add(
            path,
            format!("`{value}` must be a plain path (no query, fragment or `..`)"),
        );
        return None;
    }
    match value.strip_suffix('*') {
        Some(prefix) if prefix.contains('*') => {
            problems.add(path, "only one trailing `*` is supported");
            None
        }
        Some(prefix) => Some(PathPattern::Prefix(prefix.into())),
        None if value.contains('*') => {
            problems.add(path, "`*` is only supported at the end");
            None
        }
        None => Some(PathPattern::Exact(value.into())),
    }
}

fn template(value: &Option<String>, rules: UrlRules, path: &str, problems: &mut Problems) -> Option<UrlTemplate> {
    value
        .as_deref()
        .and_then(|value| UrlTemplate::parse(value, rules, path, problems))
}

fn application(
    section: ApplicationSection,
    tenants: Vec<Option<TenantSection>>,
    path: &str,
    context: &Context<'_>,
    problems: &mut Problems,
) -> Option<Application> {
    let before = problems.len();
    let production = section.production_validations.unwrap_or(DEFAULT_PRODUCTION_VALIDATIONS);
    if section.id.is_empty() || section.id.len() > 128 || !section.id.bytes().all(|b| b.is_ascii_graphic()) {
        problems.add(format!("{path}.id"), "must be 1 to 128 visible ASCII characters");
    }
    let domain_name = canonical_label(&section.domain_name)
        .map_err(|error| problems.add(format!("{path}.domain_name"), error.to_string()))
        .ok();
    let custom_domain = section.custom_domain.as_deref().and_then(|value| {
        let key = format!("{path}.custom_domain");
        match canonical_domain(value) {
            Ok(domain) if production && is_loopback_name(&domain) => {
                problems.add(key, format!("`{value}` is a localhost name (production validations)"));
                None
            }
            Ok(domain) => Some(domain),
            Err(error) => {
                problems.add(key, error.to_string());
                None
            }
        }
    });
    let upstream_values = section.upstream.into_vec();
    if upstream_values.is_empty() {
        problems.add(format!("{path}.upstream"), "needs at least one target");
    }
    let upstreams: Vec<UpstreamTarget> = upstream_values
        .iter()
        .enumerate()
        .filter_map(|(index, value)| upstream_target(value, production, &format!("{path}.upstream[{index}]"), problems))
        .collect();
    let public_paths = section
        .public_paths
        .iter()
        .enumerate()
        .filter_map(|(index, value)| path_pattern(value, &format!("{path}.public_paths[{index}]"), problems))
        .collect();
    let with_token = UrlRules {
        production,
        allow_token: true,
    };
    let without_token = UrlRules {
        production,
        allow_token: false,
    };
    let login_url = template(&section.login_url, with_token, &format!("{path}.login_url"), problems);
    let tenant_discovery_url = template(
        &section.tenant_discovery_url,
        without_token,
        &format!("{path}.tenant_discovery_url"),
        problems,
    );
    let ask = template(&section.ask_url, without_token, &format!("{path}.ask_url"), problems).map(|url| AskSettings {
        url,
        ttl: section.ask_ttl_seconds.map_or(DEFAULT_ASK_TTL, Duration::from_secs),
    });
    let identity = section
        .identity_provider
        .and_then(|idp| identity_provider(idp, production, &format!("{path}.identity_provider"), context, problems))
        .map(Arc::new);

    let mut validated_tenants = Vec::new();
    let mut tenant_ids = HashSet::new();
    for (index, tenant) in tenants.into_iter().enumerate() {
        let Some(tenant) = tenant else { continue };
        let tenant_path = format!("{path}.tenants[{index}]");
        if tenant.id.is_empty() || tenant.id.len() > 128 || !tenant.id.bytes().all(|b| b.is_ascii_graphic()) {
            problems.add(format!("{tenant_path}.id"), "must be 1 to 128 visible ASCII characters");
        } else if !tenant_ids.insert(tenant.id.clone()) {
            problems.add(
                format!("{tenant_path}.id"),
                format!("`{}` is already used by another tenant of this application", tenant.id),
            );
        }
        let tenant_domain = canonical_label(&tenant.domain_name)
            .map_err(|error| problems.add(format!("{tenant_path}.domain_name"), error.to_string()))
            .ok();
        let tenant_custom = tenant.custom_domain.as_deref().and_then(|value| {
            let key = format!("{tenant_path}.custom_domain");
            match canonical_domain(value) {
                Ok(domain) if production && is_loopback_name(&domain) => {
                    problems.add(key, format!("`{value}` is a localhost name (production validations)"));
                    None
                }
                Ok(domain) => Some(domain),
                Err(error) => {
                    problems.add(key, error.to_string());
                    None
                }
            }
        });
        if let Some(domain_name) = tenant_domain {
            validated_tenants.push(Tenant {
                id: tenant.id.into(),
                domain_name,
                custom_domain: tenant_custom,
            });
        }
    }
    if problems.len() != before {
        return None;
    }
    Some(Application {
        id: section.id.into(),
        domain_name: domain_name?,
        production,
        custom_domain,
        upstreams,
        public_paths,
        login_url,
        tenant_discovery_url,
        ask,
        identity,
        tenants: validated_tenants,
    })
}

fn identity_provider(
    section: IdentityProviderSection,
    production: bool,
    path: &str,
    context: &Context<'_>,
    problems: &mut Problems,
) -> Option<IdentityProvider> {
    let before = problems.len();
    let with_token = UrlRules {
        production,
        allow_token: true,
    };
    if section.name.is_empty() || !section.name.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        problems.add(format!("{path}.name"), "must be visible ASCII");
    }
    if section.issuers.is_empty() {
        problems.add(format!("{path}.issuers"), "needs at least one accepted issuer");
    }
    let issuers: Vec<UrlTemplate> = section
        .issuers
        .iter()
        .enumerate()
        .filter_map(|(index, value)| {
            UrlTemplate::parse(value, with_token, &format!("{path}.issuers[{index}]"), problems)
        })
        .collect();
    let keys = match (&section.jwks_url, &section.discovery_url) {
        (Some(jwks), None) => {
            UrlTemplate::parse(jwks, with_token, &format!("{path}.jwks_url"), problems).map(KeySource::Jwks)
        }
        (None, Some(discovery)) => {
            UrlTemplate::parse(discovery, with_token, &format!("{path}.discovery_url"), problems)
                .map(KeySource::Discovery)
        }
        (Some(_), Some(_)) => {
            problems.add(
                format!("{path}.jwks_url"),
                "set either jwks_url or discovery_url, not both",
            );
            None
        }
        (None, None) => {
            problems.add(path, "needs jwks_url or discovery_url");
            None
        }
    };
    let algorithms = match &section.algorithms {
        None => DEFAULT_ALGORITHMS.iter().filter_map(|name| name.parse().ok()).collect(),
        Some(names) => {
            if names.is_empty() {
                problems.add(format!("{path}.algorithms"), "needs at least one algorithm");
            }
            names
                .iter()
                .enumerate()
                .filter_map(|(index, name)| {
                    if !ACCEPTED_ALGORITHMS.contains(&name.as_str()) {
                        problems.add(
                            format!("{path}.algorithms[{index}]"),
                            format!(
                                "`{name}` is not accepted; asymmetric algorithms only ({}), never `none` or HS*",
                                ACCEPTED_ALGORITHMS.join(", ")
                            ),
                        );
                        return None;
                    }
                    name.parse::<jsonwebtoken::Algorithm>().ok()
                })
                .collect()
        }
    };
    let url = |value: &Option<String>, key: &str, problems: &mut Problems| {
        template(value, with_token, &format!("{path}.{key}"), problems)
    };
    let authorize_url = url(&section.authorize_url, "authorize_url", problems);
    let token_url = url(&section.token_url, "token_url", problems);
    let logout_url = url(&section.logout_url, "logout_url", problems);
    let revocation_url = url(&section.revocation_url, "revocation_url", problems);
    let client_secret = section
        .client_secret
        .as_deref()
        .and_then(|value| secret(value, &format!("{path}.client_secret"), context, problems));
    if section.client_id.is_some() {
        let discovery = section.discovery_url.is_some();
        if !discovery && (authorize_url.is_none() || token_url.is_none()) {
            problems.add(
                path,
                "the login flow (client_id) needs discovery_url, or authorize_url and token_url",
            );
        }
        if client_secret.is_none() {
            problems.add(
                format!("{path}.client_secret"),
                "the login flow (client_id) needs a client secret",
            );
        }
    }
    let scopes: Vec<Box<str>> = section
        .scopes
        .unwrap_or_else(|| DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect())
        .into_iter()
        .map(Into::into)
        .collect();
    if !scopes.iter().any(|scope| &**scope == "openid") && section.client_id.is_some() {
        problems.add(format!("{path}.scopes"), "must include `openid`");
    }
    let tenant_claim = section.tenant_claim.unwrap_or_else(|| DEFAULT_TENANT_CLAIM.to_owned());
    if tenant_claim.is_empty() {
        problems.add(format!("{path}.tenant_claim"), "must not be empty");
    }
    if problems.len() != before {
        return None;
    }
    Some(IdentityProvider {
        name: section.name.into(),
        issuers,
        keys: keys?,
        audiences: section.audiences.into_iter().map(Into::into).collect(),
        client_id: section.client_id.map(Into::into),
        client_secret,
        tenant_claim: tenant_claim.into(),
        algorithms,
        token_type: section.token_type.map(Into::into),
        authorize_url,
        token_url,
        logout_url,
        revocation_url,
        scopes,
        leeway: section.leeway_seconds.map_or(DEFAULT_LEEWAY, Duration::from_secs),
        jwks_refresh: section
            .jwks_refresh_seconds
            .map_or(DEFAULT_JWKS_REFRESH, Duration::from_secs),
        jwks_cooldown: section
            .jwks_cooldown_seconds
            .map_or(DEFAULT_JWKS_COOLDOWN, Duration::from_secs),
        allow_tokens_without_tenant: section.allow_tokens_without_tenant.unwrap_or(false),
        forward_access_token: section.forward_access_token.unwrap_or(false),
        forward_assertion: section.forward_assertion.unwrap_or(false),
    })
}

fn host_table(zone: &VanityZone, applications: &[Application], problems: &mut Problems) -> Option<HostTable> {
    let mut builder = HostTableBuilder::new(zone.clone());
    for (index, application) in applications.iter().enumerate() {
        let path = format!("applications[{index}]");
        let application_index =
            builder.add_application(&path, &application.domain_name, application.custom_domain.as_deref());
        for (tenant_index, tenant) in application.tenants.iter().enumerate() {
            builder.add_tenant(
                application_index,
                &format!("{path}.tenants[{tenant_index}]"),
                &tenant.domain_name,
                tenant.custom_domain.as_deref(),
            );
        }
    }
    match builder.build() {
        Ok(table) => Some(table),
        Err(conflicts) => {
            for conflict in conflicts {
                problems.add(conflict.path, conflict.message);
            }
            None
        }
    }
}

/// `redis://[[username]:password@]host[:port][/database]`. Messages never repeat the URL: it may
/// carry a password.
fn redis_settings(text: &str, key_prefix: String) -> Result<RedisSettings, String> {
    let url = url::Url::parse(text).map_err(|error| format!("not a URL ({error})"))?;
    match url.scheme() {
        "redis" => {}
        "rediss" => {
            return Err(
                "TLS to Redis (rediss://) is not supported; reach Redis over a private network or a local TLS tunnel"
                    .into(),
            );
        }
        _ => return Err("must be a redis:// URL".into()),
    }
    let host = match url.host() {
        Some(url::Host::Domain(name)) if !name.is_empty() => name.to_owned(),
        Some(url::Host::Ipv4(address)) => address.to_string(),
        Some(url::Host::Ipv6(address)) => address.to_string(),
        _ => return Err("needs a host".into()),
    };
    let decode = |part: &str| {
        percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .map(|text| text.into_owned())
            .map_err(|_| "the user information is not valid percent-encoded UTF-8".to_owned())
    };
    let username = (!url.username().is_empty())
        .then(|| decode(url.username()))
        .transpose()?;
    let password = url.password().map(decode).transpose()?;
    if username.is_some() && password.is_none() {
        return Err("a username needs a password (`redis://user:password@host`)".into());
    }
    let database = match url.path().trim_start_matches('/') {
        "" => 0,
        number => number
            .parse()
            .map_err(|_| "the path must be a database number (`/0`)".to_owned())?,
    };
    if url.query().is_some() || url.fragment().is_some() {
        return Err("takes no query or fragment".into());
    }
    Ok(RedisSettings {
        host,
        port: url.port().unwrap_or(DEFAULT_REDIS_PORT),
        username,
        password,
        database,
        key_prefix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme_config(extra: &str) -> String {
        format!(
            "{}\n[acme]\ndirectory_url = \"https://127.0.0.1:14000/dir\"\n{extra}\n",
            crate::config::tests_support::MINIMAL
        )
    }

    #[test]
    fn the_tls_read_buffer_is_none_by_default_and_bounded() {
        let minimal = crate::config::tests_support::MINIMAL;
        let snapshot = crate::config::parse(minimal, &crate::config::Source::Embedded).unwrap();
        assert_eq!(snapshot.tls.read_buffer_bytes, 0);
        let sized = format!("{minimal}\n[tls]\nread_buffer_bytes = 16384\n");
        let snapshot = crate::config::parse(&sized, &crate::config::Source::Embedded).unwrap();
        assert_eq!(snapshot.tls.read_buffer_bytes, 16384);
        let huge = format!("{minimal}\n[tls]\nread_buffer_bytes = 2000000\n");
        let error = crate::config::parse(&huge, &crate::config::Source::Embedded)
            .unwrap_err()
            .to_string();
        assert!(error.contains("tls.read_buffer_bytes"), "{error}");
    }

    #[test]
    fn the_upstream_idle_pool_bound_has_a_default_allows_none_and_is_bounded() {
        let minimal = crate::config::tests_support::MINIMAL;
        let parse = |text: &str| crate::config::parse(text, &crate::config::Source::Embedded);
        assert_eq!(
            parse(minimal).unwrap().upstream.max_idle_connections,
            DEFAULT_UPSTREAM_MAX_IDLE_CONNECTIONS
        );
        let none = format!("{minimal}\n[upstream]\nmax_idle_connections = 0\n");
        assert_eq!(parse(&none).unwrap().upstream.max_idle_connections, 0);
        let huge = format!("{minimal}\n[upstream]\nmax_idle_connections = 70000\n");
        let error = parse(&huge).unwrap_err().to_string();
        assert!(error.contains("upstream.max_idle_connections"), "{error}");
        let negative = format!("{minimal}\n[upstream]\nmax_idle_connections = -1\n");
        assert!(parse(&negative).is_err());
    }

    #[test]
    fn redis_urls_parse_into_settings_and_never_show_the_password() {
        let settings = redis_settings("redis://edge:s%40cret@cache.internal:6380/2", "vb".into()).unwrap();
        assert_eq!(settings.host, "cache.internal");
        assert_eq!(settings.port, 6380);
        assert_eq!(settings.username.as_deref(), Some("edge"));
        assert_eq!(settings.password.as_deref(), Some("s@cret"));
        assert_eq!(settings.database, 2);
        assert!(!format!("{settings:?}").contains("cret"));

        let plain = redis_settings("redis://127.0.0.1", DEFAULT_REDIS_KEY_PREFIX.into()).unwrap();
        assert_eq!(
            (plain.port, plain.database, plain.password),
            (DEFAULT_REDIS_PORT, 0, None)
        );
        let password_only = redis_settings("redis://:pw@[::1]:7000", "p".into()).unwrap();
        assert_eq!((password_only.host.as_str(), password_only.username), ("::1", None));

        for bad in [
            "rediss://h",
            "http://h",
            "redis://",
            "redis://h/x",
            "redis://h/0?x=1",
            "redis://user@h",
            "not a url",
        ] {
            assert!(redis_settings(bad, "p".into()).is_err(), "{bad}");
        }
    }

    #[test]
    fn redis_errors_have_key_paths_and_hide_the_url() {
        let text = acme_config("redis_url = \"rediss://:hunter2@cache:6379\"\nredis_key_prefix = \"has space\"");
        let error = crate::config::parse(&text, &crate::config::Source::Embedded)
            .unwrap_err()
            .to_string();
        assert!(error.contains("acme.redis_url"), "{error}");
        assert!(error.contains("acme.redis_key_prefix"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");

        let good = acme_config("redis_url = \"redis://127.0.0.1:6379/1\"");
        let snapshot = crate::config::parse(&good, &crate::config::Source::Embedded).unwrap();
        let redis = snapshot.acme.unwrap().redis.unwrap();
        assert_eq!(
            (redis.database, redis.key_prefix.as_str()),
            (1, DEFAULT_REDIS_KEY_PREFIX)
        );
    }
}
