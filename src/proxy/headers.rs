//! What the upstream sees: client-sent identity headers removed, the edge's own set.
//!
//! A header counts as a client copy of an identity header whatever its case and whether it is
//! spelled with `_` or `-`: many upstream stacks (CGI, WSGI, Rack, PHP) fold both to the same
//! variable, so `X_Tenant_Id` would otherwise smuggle a tenant past the edge.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Version};
use pingora_http::{RequestHeader, ResponseHeader};

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
            // Longer than any exact reserved name (so longer than the prefix, which still
            // applies in any spelling).
            let prefix = RESERVED_USER_HEADER_PREFIX.as_bytes();
            return name.as_bytes()[..prefix.len()]
                .iter()
                .zip(prefix)
                .all(|(&byte, &wanted)| byte == wanted || (byte == b'_' && wanted == b'-'));
        };
        for (out, byte) in slot.iter_mut().zip(name.bytes()) {
            *out = if byte == b'_' { b'-' } else { byte };
        }
        let dashed = std::str::from_utf8(slot).unwrap_or_default();
        dashed.starts_with(RESERVED_USER_HEADER_PREFIX) || self.exact.contains(dashed)
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

/// Not among `http`'s standard names: built once, not parsed per lookup.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Fields that describe one hop and are never forwarded as received (RFC 9110 §7.6.1, RFC 9112
/// §9.6, RFC 9113 §8.2.2).
const HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// Most fields one request may nominate in `Connection`; more is refused with 400 (the list is
/// parsed per request, so it is bounded).
pub const MAX_CONNECTION_NOMINATIONS: usize = 32;

fn invalid(why: &'static str) -> Box<pingora_error::Error> {
    pingora_error::Error::explain(pingora_error::ErrorType::InvalidHTTPHeader, why)
}

/// How the body of an upstream request is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody {
    /// No body follows the head.
    Empty,
    /// Exactly this many bytes follow (the client's one canonical `Content-Length`).
    Length(u64),
    /// `Transfer-Encoding: chunked`: the client's body had no length for this hop.
    Chunked,
}

/// An upstream request as it goes on the wire.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    /// Request line and fields, ending with the empty line.
    pub head: Vec<u8>,
    pub body: RequestBody,
    /// A WebSocket opening handshake: a `101` answer turns the exchange into a byte pipe.
    pub upgrade: bool,
    /// `HEAD`: the response has no body whatever its fields say.
    pub head_method: bool,
}

/// Room for the request line and the edge's own fields, so writing the head rarely grows it.
const HEAD_SPARE: usize = 512;

/// Appends one field line.
fn put_field(head: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// The upstream request, written in one pass over the client's head: HTTP/1.1, origin-form
/// target; the client's fields minus the hop-by-hop ones, every field `Connection` nominates
/// (never `Host`) and client copies of reserved fields; the edge's own fields; `Host` from
/// `:authority` on HTTP/2 (whose split `Cookie` fields are joined, RFC 9113 §8.2.3); one
/// canonical `Content-Length`, else `Transfer-Encoding: chunked` when a body follows; WebSocket as
/// the one upgrade passed through. Field names go out in lower case, as `http` keeps them: they
/// are case-insensitive (RFC 9110 §5.1). Values are `HeaderValue`s, which hold no CR, LF or NUL,
/// so nothing written here can split the head.
pub fn upstream_request(
    downstream: &RequestHeader,
    reserved: &ReservedHeaders,
    names: &HeaderNames,
    forwarded: &Forwarded<'_>,
    body_expected: bool,
) -> pingora_error::Result<UpstreamRequest> {
    let mut nominated: Vec<HeaderName> = Vec::new();
    for value in downstream.headers.get_all(header::CONNECTION) {
        for token in list_elements(value) {
            if token.is_empty() {
                continue;
            }
            if nominated.len() == MAX_CONNECTION_NOMINATIONS {
                return Err(invalid("too many Connection nominations"));
            }
            // An unparsable token names no field. Host is never dropped: it routes the request.
            if let Ok(name) = HeaderName::from_bytes(token)
                && name != header::HOST
            {
                nominated.push(name);
            }
        }
    }
    let http2 = downstream.version == Version::HTTP_2;
    let authority = downstream.uri.authority().filter(|_| http2);

    let mut head = Vec::with_capacity(HEAD_SPARE + 64 * downstream.headers.len());
    head.extend_from_slice(downstream.method.as_str().as_bytes());
    head.push(b' ');
    let raw = downstream.raw_path();
    let target = if !downstream.raw_path_is_utf8() && raw.starts_with(b"/") {
        // Non-UTF-8 bytes go on as received, not as the URI's lossy rendering.
        raw
    } else {
        downstream
            .uri
            .path_and_query()
            .map_or(&b""[..], |path| path.as_str().as_bytes())
    };
    // The parsers before this refuse such bytes already; the request line is not left to them.
    if target.iter().any(|&byte| byte <= b' ' || byte == 0x7f) {
        return Err(invalid("control character or space in the request target"));
    }
    if target.is_empty() || target[0] == b'?' {
        // Origin-form needs a path (an HTTP/2 `:path` of `?q` means `/?q`).
        head.push(b'/');
    }
    head.extend_from_slice(target);
    head.extend_from_slice(b" HTTP/1.1\r\n");

    let mut cookies: Option<Vec<u8>> = None;
    for (name, value) in &downstream.headers {
        if HOP_BY_HOP.contains(name)
            || *name == header::CONTENT_LENGTH
            || nominated.contains(name)
            || reserved.is_reserved(name.as_str())
            || (authority.is_some() && *name == header::HOST)
        {
            continue;
        }
        if http2 && *name == header::COOKIE {
            let joined = cookies.get_or_insert_with(Vec::new);
            if !joined.is_empty() {
                joined.extend_from_slice(b"; ");
            }
            joined.extend_from_slice(value.as_bytes());
            continue;
        }
        put_field(&mut head, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(joined) = cookies {
        put_field(&mut head, b"cookie", &joined);
    }
    let upgrade = is_websocket_upgrade(downstream);
    if upgrade {
        put_field(&mut head, b"connection", b"Upgrade");
        put_field(&mut head, b"upgrade", b"websocket");
    }
    if let Some(authority) = authority {
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| invalid("invalid :authority"))?;
        put_field(&mut head, b"host", host.as_bytes());
    }
    add_edge_fields(
        &mut |name, value| put_field(&mut head, name.as_str().as_bytes(), value),
        names,
        forwarded,
    );
    // The body is re-framed for this hop: with the length the request was framed by (one
    // canonical value, never a list a lenient upstream could read differently), else chunked.
    let length = if nominated.contains(&header::CONTENT_LENGTH) {
        None
    } else {
        content_length(&downstream.headers)
    };
    let body = match length {
        Some(length) => {
            put_field(
                &mut head,
                b"content-length",
                itoa::Buffer::new().format(length).as_bytes(),
            );
            RequestBody::Length(length)
        }
        None if body_expected => {
            put_field(&mut head, b"transfer-encoding", b"chunked");
            RequestBody::Chunked
        }
        None => RequestBody::Empty,
    };
    head.extend_from_slice(b"\r\n");
    Ok(UpstreamRequest {
        head,
        body,
        upgrade,
        head_method: downstream.method == http::Method::HEAD,
    })
}

/// A message's `Content-Length`, when every copy (and every list element) agrees (for requests,
/// pingora has framed the request by it and refused disagreeing values).
pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for element in list_elements(value) {
            let parsed: u64 = std::str::from_utf8(element).ok()?.parse().ok()?;
            if length.is_some_and(|known| known != parsed) {
                return None;
            }
            length = Some(parsed);
        }
    }
    length
}

/// The elements of a comma-separated field value (RFC 9110 §5.6.1), trimmed; empty ones kept.
fn list_elements(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    list_items(value.as_bytes())
}

/// [`list_elements`] of a value not (yet) held as a `HeaderValue`.
pub(super) fn list_items(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|&byte| byte == b',').map(<[u8]>::trim_ascii)
}

/// Fields of an upstream response meant for the edge's hop only (RFC 9110 §7.6.1). Framing
/// (`Transfer-Encoding`, `Content-Length`) is not here: pingora frames the client's copy from it.
const RESPONSE_HOP_BY_HOP: [HeaderName; RESPONSE_HOP_BY_HOP_COUNT] =
    [KEEP_ALIVE, PROXY_CONNECTION, header::TE, header::UPGRADE];

const RESPONSE_HOP_BY_HOP_COUNT: usize = 4;

/// Drops from an upstream response what was meant for the edge's hop: the fields `Connection`
/// nominates (at most [`MAX_CONNECTION_NOMINATIONS`], never the framing fields), `Connection`
/// itself (pingora writes the client's own), `Keep-Alive`, `Proxy-Connection`, `TE` and `Upgrade`.
/// A `101` keeps `Connection` and `Upgrade`: they complete the client's handshake.
pub fn strip_response_hop_by_hop(response: &mut ResponseHeader) {
    let upgrade = response.status == http::StatusCode::SWITCHING_PROTOCOLS;
    // One look over the (few) names first: most responses carry `Connection` at most, and a
    // removal costs two map updates (the fields and pingora's case map).
    let mut present = [false; RESPONSE_HOP_BY_HOP_COUNT];
    let mut connection = false;
    for name in response.headers.keys() {
        connection |= *name == header::CONNECTION;
        if let Some(index) = RESPONSE_HOP_BY_HOP.iter().position(|hop| hop == name) {
            present[index] = true;
        }
    }
    if connection
        && !upgrade
        && let Some(connection) = response.remove_header(&header::CONNECTION)
    {
        let nominations = list_elements(&connection).filter(|token| !token.is_empty());
        for token in nominations.take(MAX_CONNECTION_NOMINATIONS) {
            // The usual connection options name no other field, or one removed below anyway.
            if token.eq_ignore_ascii_case(b"keep-alive") || token.eq_ignore_ascii_case(b"close") {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token)
                && name != header::TRANSFER_ENCODING
                && name != header::CONTENT_LENGTH
            {
                response.remove_header(&name);
            }
        }
    }
    for (name, present) in RESPONSE_HOP_BY_HOP.iter().zip(present) {
        if present && !(upgrade && *name == header::UPGRADE) {
            response.remove_header(name);
        }
    }
}

/// Frames a final upstream response for an HTTP/1 client: a body the upstream ended by closing
/// (no length, no chunks) goes to an HTTP/1.1 client chunked, so its connection stays usable; an
/// HTTP/1.0 client, which has no chunked coding (RFC 9112 §6.1), gets a chunked body as it was
/// decoded, ended by closing. Returns `true` when the client connection must close after it.
pub fn frame_for_http1_client(response: &mut ResponseHeader, client: Version, head_request: bool) -> bool {
    let status = response.status;
    if head_request
        || status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED
    {
        return false;
    }
    let codings = response
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .cloned();
    let Some(codings) = codings else {
        if response.headers.contains_key(header::CONTENT_LENGTH) {
            return false;
        }
        if client == Version::HTTP_11 {
            // Infallible for a map that holds one field less than the limit; a failure leaves
            // the body close-delimited, which pingora then ends by closing.
            let _ = response.insert_header(header::TRANSFER_ENCODING, "chunked");
            return false;
        }
        return true;
    };
    // Transfer-Encoding overrides Content-Length, which must not be sent beside it (RFC 9112
    // §6.1-§6.3).
    response.remove_header(&header::CONTENT_LENGTH);
    if client == Version::HTTP_10 {
        response.remove_header(&header::TRANSFER_ENCODING);
        return true;
    }
    if client == Version::HTTP_11 && !super::upstream_http1::last_coding_is_chunked(codings.as_bytes()) {
        // Codings without chunked end by closing upstream; chunked on top lets the client's
        // connection stay open. Empty list elements are dropped on the way.
        let mut value = Vec::with_capacity(codings.len() + 9);
        for coding in list_elements(&codings).filter(|coding| !coding.is_empty()) {
            value.extend_from_slice(coding);
            value.extend_from_slice(b", ");
        }
        value.extend_from_slice(b"chunked");
        if let Ok(value) = HeaderValue::from_bytes(&value) {
            let _ = response.insert_header(header::TRANSFER_ENCODING, value);
        }
    }
    false
}

/// Subtracted from the idle timeout an upstream announces, so the edge retires a connection
/// before the upstream closes it rather than racing the close with a request that cannot be
/// replayed.
pub const UPSTREAM_KEEPALIVE_MARGIN: Duration = Duration::from_secs(1);

/// How long the upstream keeps this connection for another request, as it announced in
/// `Keep-Alive: timeout=N` (RFC 2068 §19.7.1.1; Node.js sends 5 s), less
/// [`UPSTREAM_KEEPALIVE_MARGIN`]. `None` when it announced nothing.
pub fn upstream_keepalive(response: &ResponseHeader) -> Option<Duration> {
    let value = response.headers.get(&KEEP_ALIVE)?;
    list_elements(value).find_map(|parameter| {
        let equals = parameter.iter().position(|&byte| byte == b'=')?;
        let (name, seconds) = (&parameter[..equals], &parameter[equals + 1..]);
        if !name.trim_ascii().eq_ignore_ascii_case(b"timeout") {
            return None;
        }
        let seconds: u64 = std::str::from_utf8(seconds.trim_ascii()).ok()?.parse().ok()?;
        Some(Duration::from_secs(seconds).saturating_sub(UPSTREAM_KEEPALIVE_MARGIN))
    })
}

/// An HTTP/1.1 WebSocket opening handshake (RFC 6455 §4.1): `Upgrade: websocket` nominated by
/// `Connection: upgrade`.
fn is_websocket_upgrade(request: &RequestHeader) -> bool {
    let has_token = |name: HeaderName, wanted: &str| {
        request
            .headers
            .get_all(name)
            .iter()
            .any(|value| list_elements(value).any(|token| token.eq_ignore_ascii_case(wanted.as_bytes())))
    };
    request.version == Version::HTTP_11
        && has_token(header::UPGRADE, "websocket")
        && has_token(header::CONNECTION, "upgrade")
}

/// Writes the edge's own fields through `put` (client copies were never copied: see
/// [`ReservedHeaders`]).
pub fn add_edge_fields(put: &mut impl FnMut(&HeaderName, &[u8]), names: &HeaderNames, forwarded: &Forwarded<'_>) {
    put(&names.application_id, forwarded.application_id.as_bytes());
    if let Some(tenant) = forwarded.tenant {
        put(&names.tenant_id, tenant.id.as_bytes());
        put(&names.tenant_domain, tenant.domain_name.as_bytes());
    }
    put(&names.forwarded_host, forwarded.host.as_bytes());
    put(&names.forwarded_proto, if forwarded.tls { b"https" } else { b"http" });
    if let Some(ip) = forwarded.client_ip {
        // The edge is the first hop: the client's own X-Forwarded-For was not copied.
        let mut text = [0u8; IP_TEXT_BYTES];
        put(&names.forwarded_for, ip_text(ip, &mut text));
    }
    put(&names.request_id, forwarded.request_id.as_bytes());
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
                put(name, value.as_bytes());
            }
        }
    }
}

/// The longest textual IP address (an IPv4-mapped IPv6 one).
const IP_TEXT_BYTES: usize = 45;

/// `ip` as text, written into `buffer` (IPv4 without the formatting machinery: it is on every
/// request).
fn ip_text(ip: IpAddr, buffer: &mut [u8; IP_TEXT_BYTES]) -> &[u8] {
    let mut length = 0;
    match ip {
        IpAddr::V4(ip) => {
            for (index, octet) in ip.octets().into_iter().enumerate() {
                if index > 0 {
                    buffer[length] = b'.';
                    length += 1;
                }
                let mut digits = itoa::Buffer::new();
                let digits = digits.format(octet).as_bytes();
                buffer[length..length + digits.len()].copy_from_slice(digits);
                length += digits.len();
            }
        }
        IpAddr::V6(ip) => {
            let mut cursor = std::io::Cursor::new(&mut buffer[..]);
            // Infallible: the buffer holds the longest IPv6 text.
            let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{ip}"));
            length = usize::try_from(cursor.position()).unwrap_or_default();
        }
    }
    &buffer[..length]
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

    /// An upstream head read back as a peer would: (version minor, target, fields).
    struct Parsed {
        minor: u8,
        target: Vec<u8>,
        headers: HeaderMap,
    }

    fn parsed(request: &UpstreamRequest) -> Parsed {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut head = httparse::Request::new(&mut fields);
        let length = head.parse(&request.head).unwrap();
        assert_eq!(length, httparse::Status::Complete(request.head.len()), "one whole head");
        let mut headers = HeaderMap::new();
        for field in head.headers.iter() {
            headers.append(
                HeaderName::from_bytes(field.name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(field.value).unwrap(),
            );
        }
        Parsed {
            minor: head.version.unwrap(),
            target: head.path.unwrap().as_bytes().to_vec(),
            headers,
        }
    }

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
        let long = format!("x_user_{}", "a".repeat(200));
        assert!(reserved.is_reserved(&long));
        for name in ["x-tenantid", "accept", "x-users", "user-agent", "cookie"] {
            assert!(!reserved.is_reserved(name), "{name}");
        }
        assert!(!reserved.is_reserved(&format!("x_other_{}", "a".repeat(200))));
    }

    #[test]
    fn upstream_request_strips_spoofed_and_hop_by_hop_fields_and_sets_the_edges_own() {
        let names = names();
        let reserved = ReservedHeaders::new(&names);
        let mut request = RequestHeader::build("POST", b"/orders?page=2", None).unwrap();
        for (name, value) in [
            ("Host", "acme.auth.portal.io"),
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Content-Length", "5, 5"),
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
        let upstream = upstream_request(&request, &reserved, &names, &forwarded, true).unwrap();
        assert_eq!(upstream.body, RequestBody::Length(5));
        let request = parsed(&upstream);
        assert_eq!(request.minor, 1);
        assert_eq!(request.target, b"/orders?page=2");
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
        assert_eq!(header("host"), ["acme.auth.portal.io"]);
        assert_eq!(header("content-length"), ["5"], "one canonical length");
        for gone in ["connection", "x-hop", "keep-alive", "te", "transfer-encoding"] {
            assert!(header(gone).is_empty(), "{gone}");
        }
        let wire = String::from_utf8(upstream.head).unwrap();
        assert!(
            !wire.contains("evil") && !wire.contains("root") && !wire.contains("1.2.3.4"),
            "{wire}"
        );
    }

    fn forwarded<'a>(request_id: &'a HeaderValue, host: &'a HeaderValue) -> Forwarded<'a> {
        Forwarded {
            application_id: request_id,
            tenant: None,
            host,
            tls: true,
            client_ip: None,
            request_id,
            identity: None,
        }
    }

    #[test]
    fn http2_requests_get_host_from_authority_joined_cookies_and_a_framed_body() {
        let names = names();
        let reserved = ReservedHeaders::new(&names);
        let mut request = RequestHeader::build("POST", b"/submit", None).unwrap();
        request.set_uri("https://acme.auth.portal.io/submit".parse().unwrap());
        request.set_version(Version::HTTP_2);
        request.append_header("cookie", "a=1").unwrap();
        request.append_header("cookie", "b=2").unwrap();
        let value = HeaderValue::from_static("x");
        let upstream = upstream_request(&request, &reserved, &names, &forwarded(&value, &value), true).unwrap();
        assert_eq!(upstream.body, RequestBody::Chunked);
        let request = parsed(&upstream);
        assert_eq!(request.target, b"/submit", "origin-form towards the upstream");
        assert_eq!(request.headers.get("host").unwrap(), "acme.auth.portal.io");
        assert_eq!(request.headers.get_all("cookie").iter().count(), 1);
        assert_eq!(request.headers.get("cookie").unwrap(), "a=1; b=2");
        assert_eq!(request.headers.get("transfer-encoding").unwrap(), "chunked");
    }

    #[test]
    fn websocket_is_the_one_upgrade_passed_and_nominations_are_bounded() {
        let names = names();
        let reserved = ReservedHeaders::new(&names);
        let value = HeaderValue::from_static("x");
        let mut request = RequestHeader::build("GET", b"/socket", None).unwrap();
        request.append_header("Connection", "Upgrade").unwrap();
        request.append_header("Upgrade", "websocket").unwrap();
        let upgraded = upstream_request(&request, &reserved, &names, &forwarded(&value, &value), false).unwrap();
        assert!(upgraded.upgrade);
        let upgraded = parsed(&upgraded);
        assert_eq!(upgraded.headers.get("upgrade").unwrap(), "websocket");
        assert_eq!(upgraded.headers.get("connection").unwrap(), "Upgrade");
        assert!(upgraded.headers.get("transfer-encoding").is_none());

        let mut other = RequestHeader::build("GET", b"/", None).unwrap();
        other.append_header("Connection", "Upgrade").unwrap();
        other.append_header("Upgrade", "h2c").unwrap();
        let plain = upstream_request(&other, &reserved, &names, &forwarded(&value, &value), false).unwrap();
        assert!(!plain.upgrade);
        let plain = parsed(&plain);
        assert!(plain.headers.get("upgrade").is_none() && plain.headers.get("connection").is_none());

        let mut flood = RequestHeader::build("GET", b"/", None).unwrap();
        let tokens: Vec<String> = (0..=MAX_CONNECTION_NOMINATIONS).map(|i| format!("x-{i}")).collect();
        flood.append_header("Connection", tokens.join(",")).unwrap();
        assert!(upstream_request(&flood, &reserved, &names, &forwarded(&value, &value), false).is_err());
    }

    #[test]
    fn client_addresses_are_written_as_text() {
        let mut buffer = [0u8; IP_TEXT_BYTES];
        for text in [
            "0.0.0.0",
            "10.1.2.3",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(ip_text(ip, &mut buffer), text.as_bytes());
        }
        let longest: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".parse().unwrap();
        assert_eq!(ip_text(longest, &mut buffer), longest.to_string().as_bytes());
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

    fn response(fields: &[(&str, &str)], status: u16) -> ResponseHeader {
        let mut response = ResponseHeader::build(status, None).unwrap();
        for (name, value) in fields {
            response.append_header(name.to_string(), *value).unwrap();
        }
        response
    }

    #[test]
    fn upstream_hop_by_hop_fields_are_dropped_but_framing_stays() {
        let mut upstream = response(
            &[
                ("Connection", "keep-alive, X-Hop, Content-Length, transfer-encoding"),
                ("X-Hop", "secret"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("Upgrade", "h2,h2c"),
                ("TE", "trailers"),
                ("Content-Length", "12"),
                ("Transfer-Encoding", "chunked"),
                ("X-Kept", "yes"),
            ],
            200,
        );
        strip_response_hop_by_hop(&mut upstream);
        let mut left: Vec<&str> = upstream.headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "transfer-encoding", "x-kept"]);
    }

    #[test]
    fn a_101_keeps_its_handshake_fields_only() {
        let mut upstream = response(
            &[
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Keep-Alive", "timeout=5"),
            ],
            101,
        );
        strip_response_hop_by_hop(&mut upstream);
        let mut left: Vec<&str> = upstream.headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["connection", "upgrade"]);
    }

    #[test]
    fn nominations_beyond_the_bound_are_left_alone() {
        let names: Vec<String> = (0..=MAX_CONNECTION_NOMINATIONS).map(|i| format!("x-{i}")).collect();
        let mut fields: Vec<(&str, &str)> = names.iter().map(|name| (name.as_str(), "v")).collect();
        let connection = names.join(", ");
        fields.push(("connection", &connection));
        let mut upstream = response(&fields, 200);
        strip_response_hop_by_hop(&mut upstream);
        let last = names.last().unwrap().as_str();
        assert_eq!(
            upstream.headers.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            [last]
        );
    }

    #[test]
    fn the_announced_keep_alive_is_read_with_a_margin() {
        let announced = |value: &str| upstream_keepalive(&response(&[("keep-alive", value)], 200));
        assert_eq!(announced("timeout=5"), Some(Duration::from_secs(4)));
        assert_eq!(announced("max=100, Timeout = 30"), Some(Duration::from_secs(29)));
        assert_eq!(announced("timeout=1"), Some(Duration::ZERO));
        assert_eq!(announced("timeout=0"), Some(Duration::ZERO));
        assert_eq!(announced("timeout=soon"), None);
        assert_eq!(announced("max=5"), None);
        assert_eq!(upstream_keepalive(&response(&[], 200)), None);
    }

    #[test]
    fn responses_are_framed_for_the_clients_http_version() {
        let framing = |response: &ResponseHeader| {
            let field = |name| {
                response
                    .headers
                    .get(name)
                    .map(|v: &HeaderValue| v.to_str().unwrap().to_owned())
            };
            (field(header::TRANSFER_ENCODING), field(header::CONTENT_LENGTH))
        };
        // Unframed: chunked for HTTP/1.1, closed for HTTP/1.0.
        let mut unframed = response(&[], 200);
        assert!(!frame_for_http1_client(&mut unframed, Version::HTTP_11, false));
        assert_eq!(framing(&unframed), (Some("chunked".into()), None));
        let mut unframed = response(&[], 200);
        assert!(frame_for_http1_client(&mut unframed, Version::HTTP_10, false));
        assert_eq!(framing(&unframed), (None, None));
        // Chunked: as is for HTTP/1.1, decoded and closed for HTTP/1.0.
        let mut chunked = response(&[("transfer-encoding", "chunked")], 200);
        assert!(frame_for_http1_client(&mut chunked, Version::HTTP_10, false));
        assert_eq!(framing(&chunked), (None, None));
        // Other codings get chunked on top for HTTP/1.1; a length beside them is dropped.
        let mut coded = response(&[("transfer-encoding", "gzip"), ("content-length", "9")], 200);
        assert!(!frame_for_http1_client(&mut coded, Version::HTTP_11, false));
        assert_eq!(framing(&coded), (Some("gzip, chunked".into()), None));
        let mut both = response(&[("transfer-encoding", "chunked"), ("content-length", "9")], 200);
        assert!(!frame_for_http1_client(&mut both, Version::HTTP_11, false));
        assert_eq!(framing(&both), (Some("chunked".into()), None));
        // A length, and answers without a body, are left alone.
        let mut sized = response(&[("content-length", "5")], 200);
        assert!(!frame_for_http1_client(&mut sized, Version::HTTP_10, false));
        assert_eq!(framing(&sized), (None, Some("5".into())));
        for (status, head) in [(204, false), (304, false), (200, true)] {
            let mut bodiless = response(&[], status);
            assert!(!frame_for_http1_client(&mut bodiless, Version::HTTP_11, head));
            assert_eq!(framing(&bodiless), (None, None), "{status} head={head}");
        }
    }
}
