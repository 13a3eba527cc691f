//! Certificates with the names they cover.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::TlsError;
use crate::tenancy::host;

/// A certificate chain and key ready for rustls, with the DNS names (SANs) of its leaf.
#[derive(Debug)]
pub struct LoadedCertificate {
    pub key: Arc<CertifiedKey>,
    /// Lowercase dNSName SANs; wildcards keep their `*.` prefix.
    pub names: Box<[Box<str>]>,
    /// Leaf `notAfter`, seconds since the Unix epoch.
    pub not_after: i64,
    /// Leaf `notBefore`, seconds since the Unix epoch.
    pub not_before: i64,
}

impl LoadedCertificate {
    /// Loads a PEM chain (leaf first) and its PEM private key, checking that they match.
    pub fn load(certificate: &Path, private_key: &Path) -> Result<Self, TlsError> {
        let chain_pem = std::fs::read(certificate).map_err(|source| TlsError::Read {
            path: certificate.to_path_buf(),
            source,
        })?;
        let key_pem = std::fs::read(private_key).map_err(|source| TlsError::Read {
            path: private_key.to_path_buf(),
            source,
        })?;
        Self::from_pem(&chain_pem, &key_pem).map_err(|error| match error {
            TlsError::Invalid(message) => TlsError::Invalid(format!("{}: {message}", certificate.display())),
            other => other,
        })
    }

    /// Parses a PEM chain and key.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &chain_pem[..])
            .collect::<Result<_, _>>()
            .map_err(|error| TlsError::Invalid(format!("unreadable certificate PEM: {error}")))?;
        if chain.is_empty() {
            return Err(TlsError::Invalid("no certificate in the PEM".into()));
        }
        let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
            .map_err(|error| TlsError::Invalid(format!("unreadable private key PEM: {error}")))?
            .ok_or_else(|| TlsError::Invalid("no private key in the PEM".into()))?;
        Self::from_der(chain, key)
    }

    pub fn from_der(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Self, TlsError> {
        let LeafDetails {
            names,
            not_before,
            not_after,
        } = leaf_details(&chain[0])?;
        let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|error| TlsError::Invalid(format!("unsupported private key: {error}")))?;
        let certified = CertifiedKey::new(chain, signing_key);
        certified
            .keys_match()
            .map_err(|error| TlsError::Invalid(format!("the private key does not match the certificate: {error}")))?;
        Ok(LoadedCertificate {
            key: Arc::new(certified),
            names,
            not_after,
            not_before,
        })
    }

    /// Whether this certificate is valid for `name` (normalized): exact SAN or one-label wildcard.
    pub fn covers(&self, name: &str) -> bool {
        self.names.iter().any(|pattern| name_matches(pattern, name))
    }
}

/// RFC 6125 §6.4.3 as browsers apply it: `*.example.com` covers exactly one extra label.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => pattern == name,
    }
}

/// A leaf's DNS names, `notBefore` and `notAfter`.
struct LeafDetails {
    names: Box<[Box<str>]>,
    not_before: i64,
    not_after: i64,
}

fn leaf_details(leaf: &CertificateDer<'_>) -> Result<LeafDetails, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|error| TlsError::Invalid(format!("unparsable leaf certificate: {error}")))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for entry in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(name) = entry {
                let lowered = name.to_ascii_lowercase();
                let bare = lowered.strip_prefix("*.").unwrap_or(&lowered);
                let mut buffer = [0u8; host::MAX_NAME_LENGTH + 2];
                if host::normalize(bare.as_bytes(), &mut buffer).is_ok() {
                    names.push(lowered.into_boxed_str());
                }
            }
        }
    }
    if names.is_empty() {
        return Err(TlsError::Invalid(
            "the leaf certificate has no DNS subject alternative names (the common name is not used)".into(),
        ));
    }
    let validity = parsed.validity();
    Ok(LeafDetails {
        names: names.into(),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_exactly_one_label() {
        assert!(name_matches("*.auth.portal.io", "acme.auth.portal.io"));
        assert!(!name_matches("*.auth.portal.io", "auth.portal.io"));
        assert!(!name_matches("*.auth.portal.io", "a.b.auth.portal.io"));
        assert!(!name_matches("*.auth.portal.io", "acme.auth.portal.io.evil"));
        assert!(name_matches("login.globex.com", "login.globex.com"));
        assert!(!name_matches("login.globex.com", "x.login.globex.com"));
    }

    #[test]
    fn loads_a_generated_certificate_and_rejects_a_mismatched_key() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["*.Example.test".into(), "example.test".into()]).unwrap();
        let certificate = params.self_signed(&key).unwrap();
        let loaded = LoadedCertificate::from_pem(certificate.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();
        assert_eq!(
            &*loaded.names,
            &["*.example.test".into(), "example.test".into()] as &[Box<str>]
        );
        assert!(loaded.covers("a.example.test"));
        assert!(loaded.covers("example.test"));
        assert!(!loaded.covers("b.a.example.test"));
        let other = rcgen::KeyPair::generate().unwrap();
        let error =
            LoadedCertificate::from_pem(certificate.pem().as_bytes(), other.serialize_pem().as_bytes()).unwrap_err();
        assert!(error.to_string().contains("does not match"), "{error}");
        assert!(LoadedCertificate::from_pem(b"junk", b"junk").is_err());
    }
}
