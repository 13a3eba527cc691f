//! Just enough of a TLS ClientHello to route a connection before the handshake: the SNI host
//! name and whether the client offers ALPN `acme-tls/1` (RFC 8737).
//!
//! Input is hostile: every length is checked against what is actually there, the handshake
//! message may span several records (reassembled up to [`MAX_CLIENT_HELLO`]), and nothing here
//! allocates except that reassembly.

/// Largest ClientHello accepted, records included. Post-quantum key shares make hellos of ~2 KiB
/// common; 16 KiB leaves ample room and bounds what one connection can make us buffer.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024 + 5 * 4;
/// ALPN protocol of the TLS-ALPN-01 challenge (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

const RECORD_HEADER: usize = 5;
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const EXTENSION_ALPN: u16 = 16;
const SERVER_NAME_HOST: u8 = 0;
/// TLSPlaintext.length limit (RFC 8446 §5.1).
const MAX_RECORD: usize = 1 << 14;

/// What a ClientHello says about where it wants to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The `host_name` of the server_name extension, raw (not yet normalized).
    pub server_name: Option<Vec<u8>>,
    /// The client offers `acme-tls/1`.
    pub offers_acme_tls: bool,
    /// `acme-tls/1` is the only ALPN protocol offered (what a validation server sends).
    pub acme_tls_only: bool,
}

/// Outcome of looking at the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// More bytes are needed; at least this many in total.
    Incomplete(usize),
    Complete(ClientHello),
    Invalid(&'static str),
}

/// Parses the start of a TLS connection.
pub fn parse(bytes: &[u8]) -> Parse {
    // Reassemble the handshake message from consecutive handshake records. The common case is one
    // record holding the whole message, handled without copying.
    let mut offset = 0;
    let mut assembled = Vec::new(); // stays unallocated unless a second record is needed
    loop {
        if bytes.len() < offset + RECORD_HEADER {
            return Parse::Incomplete(offset + RECORD_HEADER);
        }
        let header = &bytes[offset..offset + RECORD_HEADER];
        if header[0] != CONTENT_TYPE_HANDSHAKE {
            return Parse::Invalid("not a TLS handshake record");
        }
        if header[1] != 3 {
            return Parse::Invalid("unsupported record version");
        }
        let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if length == 0 || length > MAX_RECORD {
            return Parse::Invalid("bad record length");
        }
        let end = offset + RECORD_HEADER + length;
        if end > MAX_CLIENT_HELLO {
            return Parse::Invalid("ClientHello too large");
        }
        if bytes.len() < end {
            return Parse::Incomplete(end);
        }
        let fragment = &bytes[offset + RECORD_HEADER..end];
        let message: &[u8] = if offset == 0 {
            fragment
        } else {
            assembled.extend_from_slice(fragment);
            &assembled
        };
        if message.len() >= 4 {
            if message[0] != HANDSHAKE_CLIENT_HELLO {
                return Parse::Invalid("first handshake message is not a ClientHello");
            }
            let body_length = usize::from(message[1]) << 16 | usize::from(message[2]) << 8 | usize::from(message[3]);
            if 4 + body_length > MAX_CLIENT_HELLO {
                return Parse::Invalid("ClientHello too large");
            }
            if message.len() >= 4 + body_length {
                return match client_hello_body(&message[4..4 + body_length]) {
                    Some(hello) => Parse::Complete(hello),
                    None => Parse::Invalid("malformed ClientHello"),
                };
            }
        }
        if offset == 0 {
            assembled.extend_from_slice(fragment);
        }
        offset = end;
    }
}

/// A cursor over hostile bytes; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if self.0.len() < count {
            return None;
        }
        let (head, tail) = self.0.split_at(count);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn vector_u8(&mut self) -> Option<&'a [u8]> {
        let length = usize::from(self.u8()?);
        self.take(length)
    }

    fn vector_u16(&mut self) -> Option<&'a [u8]> {
        let length = usize::from(self.u16()?);
        self.take(length)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn client_hello_body(body: &[u8]) -> Option<ClientHello> {
    let mut reader = Reader(body);
    let _legacy_version = reader.take(2)?;
    let _random = reader.take(32)?;
    let session_id = reader.vector_u8()?;
    if session_id.len() > 32 {
        return None;
    }
    let cipher_suites = reader.vector_u16()?;
    if cipher_suites.is_empty() || cipher_suites.len() % 2 != 0 {
        return None;
    }
    let compression = reader.vector_u8()?;
    if compression.is_empty() {
        return None;
    }
    let mut hello = ClientHello {
        server_name: None,
        offers_acme_tls: false,
        acme_tls_only: false,
    };
    if reader.is_empty() {
        return Some(hello); // no extensions at all (old TLS 1.2 clients)
    }
    let mut extensions = Reader(reader.vector_u16()?);
    if !reader.is_empty() {
        return None;
    }
    let mut seen_server_name = false;
    let mut seen_alpn = false;
    while !extensions.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vector_u16()?;
        match kind {
            EXTENSION_SERVER_NAME => {
                if std::mem::replace(&mut seen_server_name, true) {
                    return None; // duplicate extensions are illegal (RFC 8446 §4.2)
                }
                hello.server_name = server_name(data)?;
            }
            EXTENSION_ALPN => {
                if std::mem::replace(&mut seen_alpn, true) {
                    return None;
                }
                let (offers, only) = alpn(data)?;
                hello.offers_acme_tls = offers;
                hello.acme_tls_only = only;
            }
            _ => {}
        }
    }
    Some(hello)
}

fn server_name(data: &[u8]) -> Option<Option<Vec<u8>>> {
    let mut outer = Reader(data);
    let mut list = Reader(outer.vector_u16()?);
    if !outer.is_empty() {
        return None;
    }
    let mut host = None;
    while !list.is_empty() {
        let kind = list.u8()?;
        let name = list.vector_u16()?;
        if kind == SERVER_NAME_HOST {
            if host.is_some() || name.is_empty() {
                return None; // at most one host_name (RFC 6066 §3)
            }
            host = Some(name.to_vec());
        }
    }
    Some(host)
}

fn alpn(data: &[u8]) -> Option<(bool, bool)> {
    let mut outer = Reader(data);
    let mut list = Reader(outer.vector_u16()?);
    if !outer.is_empty() {
        return None;
    }
    let (mut count, mut offers) = (0usize, false);
    while !list.is_empty() {
        let protocol = list.vector_u8()?;
        if protocol.is_empty() {
            return None;
        }
        count += 1;
        offers |= protocol == ACME_TLS_ALPN;
    }
    Some((offers, offers && count == 1))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a ClientHello record the way a client would.
    pub(crate) fn client_hello(server_name: Option<&str>, alpn: &[&[u8]]) -> Vec<u8> {
        let mut extensions = Vec::new();
        if let Some(name) = server_name {
            let mut entry = vec![SERVER_NAME_HOST];
            entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
            entry.extend_from_slice(name.as_bytes());
            let mut data = (entry.len() as u16).to_be_bytes().to_vec();
            data.extend_from_slice(&entry);
            extensions.extend_from_slice(&EXTENSION_SERVER_NAME.to_be_bytes());
            extensions.extend_from_slice(&(data.len() as u16).to_be_bytes());
            extensions.extend_from_slice(&data);
        }
        if !alpn.is_empty() {
            let mut list = Vec::new();
            for protocol in alpn {
                list.push(protocol.len() as u8);
                list.extend_from_slice(protocol);
            }
            let mut data = (list.len() as u16).to_be_bytes().to_vec();
            data.extend_from_slice(&list);
            extensions.extend_from_slice(&EXTENSION_ALPN.to_be_bytes());
            extensions.extend_from_slice(&(data.len() as u16).to_be_bytes());
            extensions.extend_from_slice(&data);
        }
        // An unrelated extension (supported_versions) to prove others are skipped.
        extensions.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]);
        body.push(32);
        body.extend_from_slice(&[9u8; 32]);
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]);
        body.extend_from_slice(&[0x01, 0x00]);
        body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        body.extend_from_slice(&extensions);
        let mut message = vec![HANDSHAKE_CLIENT_HELLO];
        message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend_from_slice(&body);
        records(&message, MAX_RECORD)
    }

    pub(crate) fn records(message: &[u8], fragment: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in message.chunks(fragment) {
            out.extend_from_slice(&[CONTENT_TYPE_HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    fn complete(bytes: &[u8]) -> ClientHello {
        match parse(bytes) {
            Parse::Complete(hello) => hello,
            other => panic!("expected a complete hello, got {other:?}"),
        }
    }

    #[test]
    fn reads_server_name_and_alpn() {
        let hello = complete(&client_hello(Some("Login.Customer.com"), &[b"h2", b"http/1.1"]));
        assert_eq!(hello.server_name.as_deref(), Some(&b"Login.Customer.com"[..]));
        assert!(!hello.offers_acme_tls);
        let acme = complete(&client_hello(Some("a.example"), &[ACME_TLS_ALPN]));
        assert!(acme.offers_acme_tls && acme.acme_tls_only);
        let mixed = complete(&client_hello(Some("a.example"), &[b"h2", ACME_TLS_ALPN]));
        assert!(mixed.offers_acme_tls && !mixed.acme_tls_only);
        let anonymous = complete(&client_hello(None, &[]));
        assert_eq!(anonymous.server_name, None);
    }

    #[test]
    fn asks_for_more_until_the_message_is_whole() {
        let bytes = client_hello(Some("a.example"), &[b"h2"]);
        for cut in 0..bytes.len() {
            match parse(&bytes[..cut]) {
                Parse::Incomplete(needed) => assert!(needed > cut, "cut {cut}"),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
        assert!(matches!(parse(&bytes), Parse::Complete(_)));
    }

    #[test]
    fn reassembles_a_hello_split_across_records() {
        let single = client_hello(Some("split.example"), &[b"h2"]);
        let message = &single[RECORD_HEADER..];
        for fragment in [1, 7, 50] {
            let split = records(message, fragment);
            assert_eq!(
                complete(&split).server_name.as_deref(),
                Some(&b"split.example"[..]),
                "fragment {fragment}"
            );
        }
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            Parse::Invalid("not a TLS handshake record")
        );
        assert!(matches!(parse(&[22, 3, 1, 0, 0]), Parse::Invalid(_)));
        assert!(matches!(parse(&[22, 3, 1, 0xff, 0xff]), Parse::Invalid(_)));
        // A record announcing a giant handshake message.
        assert!(matches!(
            parse(&[22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff]),
            Parse::Invalid(_)
        ));
        // Truncated inner lengths, at every position of a valid hello.
        let good = client_hello(Some("a.example"), &[b"h2"]);
        let message = &good[RECORD_HEADER..];
        for cut in 4..message.len() {
            let mut truncated = message[..cut].to_vec();
            let body_length = (cut - 4) as u32;
            truncated[1..4].copy_from_slice(&body_length.to_be_bytes()[1..]);
            let result = parse(&records(&truncated, MAX_RECORD));
            assert!(!matches!(result, Parse::Incomplete(_)), "cut {cut}: {result:?}");
        }
    }

    #[test]
    fn rejects_duplicate_server_names() {
        let mut entry = Vec::new();
        for name in ["a.example", "b.example"] {
            entry.push(SERVER_NAME_HOST);
            entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
            entry.extend_from_slice(name.as_bytes());
        }
        let mut data = (entry.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&entry);
        assert_eq!(server_name(&data), None);
    }

    #[test]
    fn survives_random_input() {
        // Deterministic pseudo-random bytes behind a valid record header.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut bytes = vec![22, 3, 1, 1, 0];
            for _ in 0..256 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes.push(state as u8);
            }
            bytes[5] = 1;
            let _ = parse(&bytes);
        }
    }
}
