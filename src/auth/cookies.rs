//! Sealed cookies: encrypted and authenticated, bound to one host.
//!
//! - AES-256-GCM under a key derived per host: HKDF-SHA256(secret, salt = [`SALT`],
//!   info = host). A cookie copied to another host never decrypts there.
//! - The cookie's name is the associated data, so values cannot be moved between cookies.
//! - Several secrets for rotation: the first seals, every one opens.
//! - Names get the `__Host-` prefix on https (RFC 6265bis §4.1.3.2): Secure, Path=/, no Domain;
//!   always HttpOnly and SameSite=Lax.
//! - Values larger than one cookie are split over numbered chunks (`name-0`, `name-1`, …).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::Secret;

/// HKDF salt: names this scheme and its version.
const SALT: &[u8] = b"vestibule cookie sealing v1";
/// First byte of every sealed value.
const VERSION: u8 = 1;
/// Largest cookie value written; with name and attributes each cookie stays under the 4096 bytes
/// browsers accept (RFC 6265 §6.1).
pub const MAX_CHUNK: usize = 3800;
/// Most chunks one value may use.
pub const MAX_CHUNKS: usize = 8;
/// The prefix browsers enforce host-only, secure cookies for.
pub const HOST_PREFIX: &str = "__Host-";

struct AesKeyLength;

impl hkdf::KeyType for AesKeyLength {
    fn len(&self) -> usize {
        AES_256_GCM.key_len()
    }
}

/// Seals and opens cookie values.
pub struct Sealer {
    /// One pseudo-random key per configured secret, first = current.
    keys: Vec<hkdf::Prk>,
    random: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "Sealer({} secrets)", self.keys.len())
    }
}

impl Sealer {
    pub fn new(secrets: &[Secret]) -> Self {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT);
        Sealer {
            keys: secrets.iter().map(|secret| salt.extract(secret.expose())).collect(),
            random: SystemRandom::new(),
        }
    }

    fn key(prk: &hkdf::Prk, host: &str) -> Option<LessSafeKey> {
        let info = [host.as_bytes()];
        let okm = prk.expand(&info, AesKeyLength).ok()?;
        let mut bytes = [0u8; 32];
        okm.fill(&mut bytes).ok()?;
        Some(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes).ok()?))
    }

    /// Encrypts `plaintext` for `host` under cookie `name`.
    pub fn seal(&self, host: &str, name: &str, plaintext: &[u8]) -> Option<String> {
        let key = Self::key(self.keys.first()?, host)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut buffer = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
        buffer.push(VERSION);
        buffer.extend_from_slice(&nonce);
        let mut sealed = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(name.as_bytes()),
            &mut sealed,
        )
        .ok()?;
        buffer.extend_from_slice(&sealed);
        Some(URL_SAFE_NO_PAD.encode(buffer))
    }

    /// Decrypts a value sealed for `host` under `name`, with any configured secret.
    pub fn open(&self, host: &str, name: &str, value: &str) -> Option<Vec<u8>> {
        let raw = URL_SAFE_NO_PAD.decode(value).ok()?;
        if raw.len() < 1 + NONCE_LEN + AES_256_GCM.tag_len() || raw[0] != VERSION {
            return None;
        }
        let nonce: [u8; NONCE_LEN] = raw[1..1 + NONCE_LEN].try_into().ok()?;
        for prk in &self.keys {
            let key = Self::key(prk, host)?;
            let mut buffer = raw[1 + NONCE_LEN..].to_vec();
            if let Ok(plaintext) = key.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut buffer,
            ) {
                let length = plaintext.len();
                buffer.truncate(length);
                return Some(buffer);
            }
        }
        None
    }
}

/// The full cookie name for `base` on this scheme.
pub fn cookie_name(base: &str, tls: bool) -> String {
    if tls {
        format!("{HOST_PREFIX}{base}")
    } else {
        base.to_owned()
    }
}

/// A `Set-Cookie` value with the edge's attributes; `None` max-age deletes the cookie.
pub fn set_cookie(name: &str, value: &str, tls: bool, max_age: Option<Duration>) -> String {
    let mut text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
    if tls {
        text.push_str("; Secure");
    }
    match max_age {
        Some(age) => text.push_str(&format!("; Max-Age={}", age.as_secs())),
        None => text.push_str("; Max-Age=0"),
    }
    text
}

/// Cookies of a request: every `Cookie` header (HTTP/2 may send several), in order.
pub struct RequestCookies<'a> {
    headers: Vec<&'a str>,
}

impl<'a> RequestCookies<'a> {
    pub fn new(headers: impl Iterator<Item = &'a http::HeaderValue>) -> Self {
        RequestCookies {
            headers: headers.filter_map(|value| value.to_str().ok()).collect(),
        }
    }

    /// `(name, value)` pairs, without allocating.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        self.headers
            .iter()
            .flat_map(|header| header.split(';'))
            .filter_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                Some((name.trim(), value.trim().trim_matches('"')))
            })
    }

    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.iter()
            .find(|(candidate, _)| *candidate == name)
            .map(|(_, value)| value)
    }

    /// A value written by [`chunk`]: `name-0`, `name-1`, … concatenated.
    pub fn chunked(&self, name: &str) -> Option<String> {
        let mut joined = String::new();
        for index in 0..MAX_CHUNKS {
            match self.get(&format!("{name}-{index}")) {
                Some(part) => joined.push_str(part),
                None if index == 0 => return None,
                None => break,
            }
        }
        Some(joined)
    }

    /// How many chunks of `name` the client holds.
    pub fn chunk_count(&self, name: &str) -> usize {
        (0..MAX_CHUNKS)
            .take_while(|index| self.get(&format!("{name}-{index}")).is_some())
            .count()
    }
}

/// Splits a sealed value over `name-0..name-N`; `None` when it needs more than [`MAX_CHUNKS`].
pub fn chunk(name: &str, value: &str) -> Option<Vec<(String, String)>> {
    let parts: Vec<(String, String)> = value
        .as_bytes()
        .chunks(MAX_CHUNK)
        .enumerate()
        .map(|(index, part)| (format!("{name}-{index}"), String::from_utf8_lossy(part).into_owned()))
        .collect();
    (parts.len() <= MAX_CHUNKS).then_some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(secrets: &[&str]) -> Sealer {
        Sealer::new(
            &secrets
                .iter()
                .map(|s| Secret::new(s.as_bytes().to_vec()))
                .collect::<Vec<_>>(),
        )
    }

    const A: &str = "first secret, at least thirty-two bytes long";
    const B: &str = "second secret, also at least thirty-two bytes";

    #[test]
    fn round_trips_only_on_the_same_host_and_name() {
        let sealer = sealer(&[A]);
        let value = sealer.seal("acme.example", "__Host-session", b"hello").unwrap();
        assert_eq!(sealer.open("acme.example", "__Host-session", &value).unwrap(), b"hello");
        assert_eq!(
            sealer.open("globex.example", "__Host-session", &value),
            None,
            "other host"
        );
        assert_eq!(
            sealer.open("acme.example", "__Host-other", &value),
            None,
            "other cookie"
        );
        let mut tampered = value.clone().into_bytes();
        tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            sealer.open(
                "acme.example",
                "__Host-session",
                std::str::from_utf8(&tampered).unwrap()
            ),
            None
        );
        assert_eq!(sealer.open("acme.example", "__Host-session", "garbage!"), None);
        assert_eq!(sealer.open("acme.example", "__Host-session", ""), None);
    }

    #[test]
    fn rotation_seals_with_the_first_and_opens_with_all() {
        let old = sealer(&[A]).seal("h.example", "n", b"v").unwrap();
        let rotated = sealer(&[B, A]);
        assert_eq!(rotated.open("h.example", "n", &old).unwrap(), b"v");
        let new = rotated.seal("h.example", "n", b"w").unwrap();
        assert_eq!(
            sealer(&[A]).open("h.example", "n", &new),
            None,
            "the retired secret alone cannot open new values"
        );
        assert_eq!(sealer(&[B]).open("h.example", "n", &new).unwrap(), b"w");
    }

    #[test]
    fn large_values_are_chunked_and_reassembled() {
        let sealer = sealer(&[A]);
        let big = vec![b'x'; 9000];
        let value = sealer.seal("h.example", "n", &big).unwrap();
        let chunks = chunk("n", &value).unwrap();
        assert!(chunks.len() >= 3);
        let header = chunks
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ");
        let header = http::HeaderValue::from_str(&format!("other=1; {header}")).unwrap();
        let cookies = RequestCookies::new(std::iter::once(&header));
        assert_eq!(cookies.chunk_count("n"), chunks.len());
        assert_eq!(
            sealer.open("h.example", "n", &cookies.chunked("n").unwrap()).unwrap(),
            big
        );
        assert!(chunk("n", &"x".repeat(MAX_CHUNK * MAX_CHUNKS + 1)).is_none());
    }

    #[test]
    fn cookie_attributes() {
        assert_eq!(cookie_name("s", true), "__Host-s");
        assert_eq!(cookie_name("s", false), "s");
        let secure = set_cookie("__Host-s", "v", true, Some(Duration::from_secs(60)));
        assert_eq!(secure, "__Host-s=v; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=60");
        assert!(!set_cookie("s", "v", false, None).contains("Secure"));
        assert!(set_cookie("s", "", false, None).ends_with("Max-Age=0"));
    }
}
