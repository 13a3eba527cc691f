//! Host names as they arrive from clients (Host, `:authority`, SNI) and as operators write them in
//! the configuration.
//!
//! Client input is normalized without allocating: lowercased into a caller's stack buffer, port and
//! one trailing dot stripped, every byte checked. Anything that is not an ASCII DNS name (or a
//! bracketed IPv6 literal) is rejected, so later stages only ever see `[a-z0-9.-]`.

use std::fmt;

/// Longest DNS name in presentation form, without the trailing dot (RFC 1035 §2.3.4).
pub const MAX_NAME_LENGTH: usize = 253;
/// Longest DNS label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LENGTH: usize = 63;

/// Why a client-supplied host is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the host is empty")]
    Empty,
    #[error("the host is longer than {MAX_NAME_LENGTH} characters")]
    TooLong,
    #[error("the host has an empty label")]
    EmptyLabel,
    #[error("a host label is longer than {MAX_LABEL_LENGTH} characters")]
    LabelTooLong,
    #[error("the host contains a character that is not allowed in a DNS name")]
    InvalidCharacter,
    #[error("the host's port is not a number")]
    InvalidPort,
    #[error("a host label starts or ends with a hyphen")]
    HyphenAtLabelEdge,
    #[error("a host label is not valid punycode")]
    InvalidPunycode,
}

/// A host name normalized into a caller-provided buffer: lowercase ASCII, no port, no trailing dot.
pub type HostBuffer = [u8; MAX_NAME_LENGTH + 2];

/// Normalizes a host as received from a client (`Host` header, `:authority`, or SNI).
///
/// Accepts `name`, `name.`, `name:port` and `[v6]:port`. The result borrows `buffer`.
pub fn normalize<'b>(raw: &[u8], buffer: &'b mut HostBuffer) -> Result<&'b str, HostError> {
    let name = strip_port(raw)?;
    if name.first() == Some(&b'[') {
        return normalize_ip_literal(name, buffer);
    }
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    if name.len() > MAX_NAME_LENGTH {
        return Err(HostError::TooLong);
    }
    let mut label_start = 0;
    let mut needs_punycode_check = false;
    for (index, &byte) in name.iter().enumerate() {
        let lowered = match byte {
            b'a'..=b'z' | b'0'..=b'9' | b'-' => byte,
            b'A'..=b'Z' => byte.to_ascii_lowercase(),
            b'.' => {
                check_label(&buffer[label_start..index])?;
                needs_punycode_check |= is_punycode_label(&buffer[label_start..index]);
                label_start = index + 1;
                b'.'
            }
            _ => return Err(HostError::InvalidCharacter),
        };
        buffer[index] = lowered;
    }
    check_label(&buffer[label_start..name.len()])?;
    needs_punycode_check |= is_punycode_label(&buffer[label_start..name.len()]);
    let normalized = &buffer[..name.len()];
    if needs_punycode_check {
        check_punycode(normalized)?;
    }
    // Every byte written above is ASCII, so this cannot fail; avoid a panic path anyway.
    std::str::from_utf8(normalized).map_err(|_| HostError::InvalidCharacter)
}

fn strip_port(raw: &[u8]) -> Result<&[u8], HostError> {
    let port_separator = if raw.first() == Some(&b'[') {
        // `[v6]` or `[v6]:port`: the port separator can only follow the closing bracket.
        let close = raw.iter().position(|&b| b == b']').ok_or(HostError::InvalidCharacter)?;
        match raw.get(close + 1) {
            None => return Ok(raw),
            Some(b':') => close + 1,
            Some(_) => return Err(HostError::InvalidCharacter),
        }
    } else {
        match raw.iter().rposition(|&b| b == b':') {
            None => return Ok(raw),
            Some(position) => position,
        }
    };
    let port = &raw[port_separator + 1..];
    if port.is_empty() || port.len() > 5 || !port.iter().all(u8::is_ascii_digit) {
        return Err(HostError::InvalidPort);
    }
    Ok(&raw[..port_separator])
}

fn normalize_ip_literal<'b>(name: &[u8], buffer: &'b mut HostBuffer) -> Result<&'b str, HostError> {
    if name.len() > MAX_NAME_LENGTH || name.last() != Some(&b']') {
        return Err(HostError::InvalidCharacter);
    }
    for (index, &byte) in name.iter().enumerate() {
        buffer[index] = match byte {
            b'[' | b']' if index == 0 || index == name.len() - 1 => byte,
            b'0'..=b'9' | b'a'..=b'f' | b':' | b'.' => byte,
            b'A'..=b'F' => byte.to_ascii_lowercase(),
            _ => return Err(HostError::InvalidCharacter),
        };
    }
    std::str::from_utf8(&buffer[..name.len()]).map_err(|_| HostError::InvalidCharacter)
}

fn check_label(label: &[u8]) -> Result<(), HostError> {
    match label {
        [] => Err(HostError::EmptyLabel),
        _ if label.len() > MAX_LABEL_LENGTH => Err(HostError::LabelTooLong),
        [b'-', ..] | [.., b'-'] => Err(HostError::HyphenAtLabelEdge),
        _ => Ok(()),
    }
}

fn is_punycode_label(label: &[u8]) -> bool {
    label.starts_with(b"xn--")
}

/// Rare path: a name with A-labels must decode and round-trip under UTS 46, or it is malformed.
fn check_punycode(name: &[u8]) -> Result<(), HostError> {
    let name = std::str::from_utf8(name).map_err(|_| HostError::InvalidCharacter)?;
    match idna::domain_to_ascii_strict(name) {
        Ok(ascii) if ascii == name => Ok(()),
        _ => Err(HostError::InvalidPunycode),
    }
}

/// Why an operator-written domain name is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainError(String);

impl fmt::Display for DomainError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// Turns a configured domain name (possibly Unicode) into its canonical ASCII form.
///
/// Requires at least two labels and rejects IP literals, wildcards, ports and trailing dots.
pub fn canonical_domain(input: &str) -> Result<Box<str>, DomainError> {
    if input.is_empty() {
        return Err(DomainError("must not be empty".into()));
    }
    if input.contains('*') {
        return Err(DomainError("wildcards are not allowed here".into()));
    }
    if input.contains(':') || input.contains('/') {
        return Err(DomainError(
            "must be a bare host name, without scheme, port or path".into(),
        ));
    }
    if input.ends_with('.') {
        return Err(DomainError("must not end with a dot".into()));
    }
    let ascii = idna::domain_to_ascii_strict(input)
        .map_err(|_| DomainError(format!("`{input}` is not a valid domain name")))?;
    let mut buffer = [0u8; MAX_NAME_LENGTH + 2];
    let normalized =
        normalize(ascii.as_bytes(), &mut buffer).map_err(|error| DomainError(format!("`{input}`: {error}")))?;
    if !normalized.contains('.') {
        return Err(DomainError(format!("`{input}` must have at least two labels")));
    }
    if normalized.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(DomainError(format!("`{input}` is an IP address, not a domain name")));
    }
    Ok(normalized.into())
}

/// Checks a single configured DNS label (tenant or application `domain_name`, region, account).
pub fn canonical_label(input: &str) -> Result<Box<str>, DomainError> {
    let lowered = input.to_ascii_lowercase();
    if lowered.is_empty() {
        return Err(DomainError("must not be empty".into()));
    }
    if !lowered
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(DomainError(format!(
            "`{input}` may contain only letters, digits and hyphens"
        )));
    }
    check_label(lowered.as_bytes()).map_err(|error| DomainError(format!("`{input}`: {error}")))?;
    if is_punycode_label(lowered.as_bytes()) {
        return Err(DomainError(format!("`{input}` must not be a punycode label")));
    }
    Ok(lowered.into())
}

/// True for names that always mean this machine: `localhost`, `*.localhost` (RFC 6761),
/// and loopback IP literals.
pub fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(address) = bare.parse::<std::net::IpAddr>() {
        return address.is_loopback() || address.is_unspecified();
    }
    host == "localhost"
        || host.ends_with(".localhost")
        || host == "localhost.localdomain"
        || host == "ip6-localhost"
        || host == "ip6-loopback"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(raw: &str) -> Result<String, HostError> {
        let mut buffer = [0u8; MAX_NAME_LENGTH + 2];
        normalize(raw.as_bytes(), &mut buffer).map(str::to_owned)
    }

    #[test]
    fn lowercases_and_strips_port_and_trailing_dot() {
        assert_eq!(normalized("Acme.Example.COM").unwrap(), "acme.example.com");
        assert_eq!(normalized("acme.example.com:8443").unwrap(), "acme.example.com");
        assert_eq!(normalized("acme.example.com.").unwrap(), "acme.example.com");
        assert_eq!(normalized("acme.example.com.:443").unwrap(), "acme.example.com");
        assert_eq!(normalized("[::1]:443").unwrap(), "[::1]");
        assert_eq!(normalized("[FE80::1]").unwrap(), "[fe80::1]");
    }

    #[test]
    fn rejects_malformed_hosts() {
        assert_eq!(normalized(""), Err(HostError::Empty));
        assert_eq!(normalized("."), Err(HostError::Empty));
        assert_eq!(normalized("a..b"), Err(HostError::EmptyLabel));
        assert_eq!(normalized("a b"), Err(HostError::InvalidCharacter));
        assert_eq!(normalized("a_b.com"), Err(HostError::InvalidCharacter));
        assert_eq!(normalized("münchen.de"), Err(HostError::InvalidCharacter));
        assert_eq!(normalized("a.com:port"), Err(HostError::InvalidPort));
        assert_eq!(normalized("a.com:"), Err(HostError::InvalidPort));
        assert_eq!(normalized("a.com:123456"), Err(HostError::InvalidPort));
        assert_eq!(normalized("-a.com"), Err(HostError::HyphenAtLabelEdge));
        assert_eq!(normalized("a-.com"), Err(HostError::HyphenAtLabelEdge));
        assert_eq!(normalized(&"a".repeat(64)), Err(HostError::LabelTooLong));
        let long = vec!["abcdefgh"; 30].join(".");
        assert_eq!(normalized(&long), Err(HostError::TooLong));
        assert_eq!(normalized("[::1"), Err(HostError::InvalidCharacter));
        assert_eq!(normalized("[::1]x"), Err(HostError::InvalidCharacter));
        assert_eq!(normalized("a.com\0"), Err(HostError::InvalidCharacter));
    }

    #[test]
    fn punycode_labels_must_be_valid() {
        assert_eq!(normalized("xn--mnchen-3ya.de").unwrap(), "xn--mnchen-3ya.de");
        assert_eq!(normalized("XN--MNCHEN-3YA.DE").unwrap(), "xn--mnchen-3ya.de");
        assert_eq!(normalized("xn--a.de"), Err(HostError::InvalidPunycode));
    }

    #[test]
    fn canonical_domain_converts_unicode_to_punycode() {
        assert_eq!(&*canonical_domain("München.de").unwrap(), "xn--mnchen-3ya.de");
        assert_eq!(&*canonical_domain("Login.Customer.com").unwrap(), "login.customer.com");
        assert!(canonical_domain("customer").is_err());
        assert!(canonical_domain("*.customer.com").is_err());
        assert!(canonical_domain("customer.com:443").is_err());
        assert!(canonical_domain("10.0.0.1").is_err());
        assert!(canonical_domain("https://customer.com").is_err());
    }

    #[test]
    fn canonical_label_accepts_only_dns_labels() {
        assert_eq!(&*canonical_label("Acme").unwrap(), "acme");
        assert!(canonical_label("big-co").is_ok());
        assert!(canonical_label("-acme").is_err());
        assert!(canonical_label("ac.me").is_err());
        assert!(canonical_label("xn--abc").is_err());
        assert!(canonical_label("").is_err());
    }

    #[test]
    fn loopback_names() {
        for name in [
            "localhost",
            "LOCALHOST.",
            "app.localhost",
            "127.0.0.1",
            "127.1.2.3",
            "[::1]",
            "::1",
            "0.0.0.0",
        ] {
            assert!(is_loopback_name(name), "{name}");
        }
        for name in ["example.com", "localhost.example.com", "10.0.0.1"] {
            assert!(!is_loopback_name(name), "{name}");
        }
    }
}
