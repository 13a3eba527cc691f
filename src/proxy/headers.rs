//! What the upstream sees: client-sent identity headers removed, the edge's own set.
//!
//! A header counts as a client copy of an identity header whatever its case and whether it is
//! spelled with `_` or `-`: many upstream stacks (CGI, WSGI, Rack, PHP) fold both to the same
//! variable, so `X_Tenant_Id` would otherwise smuggle a tenant past the edge.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::HeaderValue;
use pingora_http::RequestHeader;

use crate::config::{HeaderNames, RESERVED_USER_HEADER_PREFIX};

/// Headers the edge owns, in the `-` spelling.
pub struct ReservedHeaders {
    exact: HashSet<Box<str>, ahash::RandomState>,
}

/// Always removed as well: RFC 7239 `Forwarded` would let a client claim another origin.
const ALWAYS_RESERVED: &[&str] = &["forwarded", "x-real-ip", "x-forwarded-port", "x-forwarded-server"];

impl ReservedHeaders {
    pub fn new(names: &HeaderNames) -> Self {
        let mut exact: HashSet<Box<str>, ahash::RandomState> = HashSet::default();
        for name in names.identity_headers() {
            exact.insert(name.as_str().replace('_', "-").into());
        }
        for name in ALWAYS_RESERVED {
            exact.insert((*name).into());
        }
        ReservedHeaders { exact }
    }

    /// `name` is lowercase (as `http::HeaderName` always is).
    pub fn is_reserved(&self, name: &str) -> bool {
        if !name.contains('_') {
            return name.starts_with(RESERVED_USER_HEADER_PREFIX) || self.exact.contains(name);
        }
        let mut buffer = [0u8; 128];
        let Some(slot) = buffer.get_mut(..name.len()) else {
            return false; // longer than any reserved name
        };
        for (out, byte) in slot.iter_mut().zip(name.bytes()) {
            *out = if byte == b'_' { b'-' } else { byte };
        }
        let dashed = std::str::from_utf8(slot).unwrap_or_default();
        dashed.starts_with(RESERVED_USER_HEADER_PREFIX) || self.exact.contains(dashed)
    }
}

/// Removes every client-sent copy of a reserved header.
pub fn strip_reserved(request: &mut RequestHeader, reserved: &ReservedHeaders) {
    let doomed: Vec<http::HeaderName> = request
        .headers
        .keys()
        .filter(|name| reserved.is_reserved(name.as_str()))
        .cloned()
        .collect();
    for name in &doomed {
        request.remove_header(name);
    }
}

/// Header names as shared bytes, so inserting them copies nothing but a reference count.
#[derive(Clone)]
pub struct NameBytes {
    pub tenant_id: Bytes,
    pub tenant_domain: Bytes,
    pub application_id: Bytes,
    pub forwarded_host: Bytes,
    pub forwarded_proto: Bytes,
    pub forwarded_for: Bytes,
    pub request_id: Bytes,
    pub user_id: Bytes,
    pub user_email: Bytes,
    pub idp_name: Bytes,
    pub client_id: Bytes,
    pub access_token: Bytes,
    pub assertion: Bytes,
}

impl NameBytes {
    pub fn new(names: &HeaderNames) -> Self {
        let bytes = |name: &http::HeaderName| Bytes::copy_from_slice(name.as_str().as_bytes());
        NameBytes {
            tenant_id: bytes(&names.tenant_id),
            tenant_domain: bytes(&names.tenant_domain),
            application_id: bytes(&names.application_id),
            forwarded_host: bytes(&names.forwarded_host),
            forwarded_proto: bytes(&names.forwarded_proto),
            forwarded_for: bytes(&names.forwarded_for),
            request_id: bytes(&names.request_id),
            user_id: bytes(&names.user_id),
            user_email: bytes(&names.user_email),
            idp_name: bytes(&names.idp_name),
            client_id: bytes(&names.client_id),
            access_token: bytes(&names.access_token),
            assertion: bytes(&names.assertion),
        }
    }
}

/// Pre-built header values of a tenant (shared, so forwarding them does not allocate).
#[derive(Clone)]
pub struct TenantValues {
    pub id: HeaderValue,
    pub domain_name: HeaderValue,
}

/// Identity the auth layer established, as header values.
#[derive(Debug, Clone, Default)]
pub struct IdentityValues {
    pub user_id: Option<HeaderValue>,
    pub user_email: Option<HeaderValue>,
    pub idp_name: Option<HeaderValue>,
    pub client_id: Option<HeaderValue>,
    pub access_token: Option<HeaderValue>,
    pub assertion: Option<HeaderValue>,
}

/// Everything the edge tells the upstream about a request.
pub struct Forwarded<'a> {
    pub application_id: &'a HeaderValue,
    pub tenant: Option<&'a TenantValues>,
    /// Normalized host the request was resolved with.
    pub host: &'a HeaderValue,
    pub tls: bool,
    pub client_ip: Option<IpAddr>,
    pub request_id: &'a HeaderValue,
    pub identity: Option<&'a IdentityValues>,
}

/// Strips client copies of reserved headers and sets the edge's own.
pub fn rewrite(
    request: &mut RequestHeader,
    reserved: &ReservedHeaders,
    names: &NameBytes,
    forwarded: &Forwarded<'_>,
) -> pingora_error::Result<()> {
    strip_reserved(request, reserved);
    request.insert_header(names.application_id.clone(), forwarded.application_id.clone())?;
    if let Some(tenant) = forwarded.tenant {
        request.insert_header(names.tenant_id.clone(), tenant.id.clone())?;
        request.insert_header(names.tenant_domain.clone(), tenant.domain_name.clone())?;
    }
    request.insert_header(names.forwarded_host.clone(), forwarded.host.clone())?;
    request.insert_header(
        names.forwarded_proto.clone(),
        HeaderValue::from_static(if forwarded.tls { "https" } else { "http" }),
    )?;
    if let Some(ip) = forwarded.client_ip {
        // The edge is the first hop: the client's own X-Forwarded-For was stripped above.
        request.insert_header(names.forwarded_for.clone(), ip.to_string())?;
    }
    request.insert_header(names.request_id.clone(), forwarded.request_id.clone())?;
    if let Some(identity) = forwarded.identity {
        let pairs = [
            (&names.user_id, &identity.user_id),
            (&names.user_email, &identity.user_email),
            (&names.idp_name, &identity.idp_name),
            (&names.client_id, &identity.client_id),
            (&names.access_token, &identity.access_token),
            (&names.assertion, &identity.assertion),
        ];
        for (name, value) in pairs {
            if let Some(value) = value {
                request.insert_header(name.clone(), value.clone())?;
            }
        }
    }
    Ok(())
}

/// Request ids: a random per-process prefix and a counter, 32 hex characters, unique without
/// coordination and cheap to make.
pub struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        let mut seed = [0u8; 16];
        // The system RNG failing is fatal elsewhere too; a zero seed would only weaken uniqueness
        // across processes, never correctness.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
        RequestIds {
            prefix: u64::from_le_bytes(seed[..8].try_into().unwrap_or_default()),
            counter: AtomicU64::new(u64::from_le_bytes(seed[8..].try_into().unwrap_or_default())),
        }
    }

    pub fn next(&self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let count = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut text = [0u8; 32];
        for (index, byte) in self
            .prefix
            .to_be_bytes()
            .iter()
            .chain(count.to_be_bytes().iter())
            .enumerate()
        {
            text[index * 2] = HEX[usize::from(byte >> 4)];
            text[index * 2 + 1] = HEX[usize::from(byte & 0xf)];
        }
        HeaderValue::from_maybe_shared(Bytes::copy_from_slice(&text)).unwrap_or(HeaderValue::from_static("0"))
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> HeaderNames {
        crate::config::parse(crate::config::tests_support::MINIMAL, &crate::config::Source::Embedded)
            .unwrap()
            .headers
    }

    #[test]
    fn reserved_names_match_any_case_or_underscore_spelling() {
        let reserved = ReservedHeaders::new(&names());
        for name in [
            "x-tenant-id",
            "x_tenant_id",
            "x-tenant_id",
            "x-user-id",
            "x_user_roles",
            "x-user-anything",
            "forwarded",
            "x-forwarded-for",
        ] {
            assert!(reserved.is_reserved(name), "{name}");
        }
        for name in ["x-tenantid", "accept", "x-users", "user-agent", "cookie"] {
            assert!(!reserved.is_reserved(name), "{name}");
        }
    }

    #[test]
    fn rewrite_strips_spoofed_headers_and_sets_the_edges_own() {
        let names = names();
        let reserved = ReservedHeaders::new(&names);
        let bytes = NameBytes::new(&names);
        let mut request = RequestHeader::build("GET", b"/", None).unwrap();
        for (name, value) in [
            ("X-Tenant-Id", "evil"),
            ("x_tenant_id", "evil"),
            ("X-User-Id", "root"),
            ("X-User-Roles", "admin"),
            ("X-Forwarded-For", "1.2.3.4"),
            ("Forwarded", "for=1.2.3.4"),
            ("Accept", "text/html"),
        ] {
            request.append_header(name.to_owned(), value).unwrap();
        }
        let tenant = TenantValues {
            id: HeaderValue::from_static("t-1"),
            domain_name: HeaderValue::from_static("acme"),
        };
        let request_id = HeaderValue::from_static("rid");
        let application_id = HeaderValue::from_static("portal");
        let forwarded = Forwarded {
            application_id: &application_id,
            tenant: Some(&tenant),
            host: &HeaderValue::from_static("acme.auth.portal.io"),
            tls: true,
            client_ip: Some("10.1.2.3".parse().unwrap()),
            request_id: &request_id,
            identity: None,
        };
        rewrite(&mut request, &reserved, &bytes, &forwarded).unwrap();
        let header = |name: &str| {
            request
                .headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(header("x-tenant-id"), ["t-1"]);
        assert!(header("x_tenant_id").is_empty());
        assert!(header("x-user-id").is_empty());
        assert!(header("x-user-roles").is_empty());
        assert!(header("forwarded").is_empty());
        assert_eq!(header("x-forwarded-for"), ["10.1.2.3"]);
        assert_eq!(header("x-forwarded-proto"), ["https"]);
        assert_eq!(header("x-forwarded-host"), ["acme.auth.portal.io"]);
        assert_eq!(header("x-tenant-domain"), ["acme"]);
        assert_eq!(header("x-application-id"), ["portal"]);
        assert_eq!(header("x-request-id"), ["rid"]);
        assert_eq!(header("accept"), ["text/html"]);
        let mut wire = Vec::new();
        request.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        assert!(
            !wire.contains("evil") && !wire.contains("root") && !wire.contains("1.2.3.4"),
            "{wire}"
        );
    }

    #[test]
    fn request_ids_are_unique_hex() {
        let ids = RequestIds::new();
        let first = ids.next();
        let second = ids.next();
        assert_ne!(first, second);
        assert_eq!(first.len(), 32);
        assert!(first.to_str().unwrap().bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
