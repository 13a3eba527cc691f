//! jsonwebtoken's cryptography, done by ring: the process keeps a single crypto provider.
//!
//! Only asymmetric algorithms exist here (RFC 8725 §3.1–3.2): an HMAC algorithm, or a key of the
//! wrong family for the token's `alg`, is refused before any verification is attempted.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind, Result};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature::{self, KeyPair, UnparsedPublicKey};

/// The provider installed by [`install`].
pub static RING: CryptoProvider = CryptoProvider {
    signer_factory,
    verifier_factory,
    key_utils: KeyUtils::new_unimplemented(),
};

/// Installs [`RING`] for jsonwebtoken. Idempotent.
pub fn install() {
    let _ = RING.install_default();
}

/// The key family an algorithm needs; unknown algorithms count as HMAC, which is always refused.
fn family_of(algorithm: Algorithm) -> AlgorithmFamily {
    #[allow(unreachable_patterns)]
    match algorithm {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => AlgorithmFamily::Hmac,
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => AlgorithmFamily::Rsa,
        Algorithm::ES256 | Algorithm::ES384 => AlgorithmFamily::Ec,
        Algorithm::EdDSA => AlgorithmFamily::Ed,
        _ => AlgorithmFamily::Hmac,
    }
}

enum PublicKey {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Raw(Vec<u8>),
}

struct Verifier {
    algorithm: Algorithm,
    key: PublicKey,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "Verifier({:?})", self.algorithm)
    }
}

fn rsa_parameters(algorithm: Algorithm) -> Option<&'static signature::RsaParameters> {
    Some(match algorithm {
        Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

impl ::signature::Verifier<Vec<u8>> for Verifier {
    fn verify(&self, message: &[u8], signature_bytes: &Vec<u8>) -> std::result::Result<(), ::signature::Error> {
        let outcome = match (&self.key, self.algorithm) {
            (PublicKey::Rsa { n, e }, algorithm) => {
                let parameters = rsa_parameters(algorithm).ok_or_else(::signature::Error::new)?;
                signature::RsaPublicKeyComponents { n, e }.verify(parameters, message, signature_bytes)
            }
            (PublicKey::Raw(der), algorithm) => {
                let verification: &dyn signature::VerificationAlgorithm = match algorithm {
                    Algorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
                    Algorithm::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
                    Algorithm::EdDSA => &signature::ED25519,
                    algorithm => match rsa_parameters(algorithm) {
                        Some(parameters) => parameters,
                        None => return Err(::signature::Error::new()),
                    },
                };
                UnparsedPublicKey::new(verification, der).verify(message, signature_bytes)
            }
        };
        outcome.map_err(|_| ::signature::Error::new())
    }
}

impl JwtVerifier for Verifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

fn verifier_factory(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    let family = family_of(*algorithm);
    if family == AlgorithmFamily::Hmac || key.family() != family {
        return Err(Error::from(ErrorKind::InvalidAlgorithm));
    }
    let public = match key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, e } => PublicKey::Rsa {
            n: n.clone(),
            e: e.clone(),
        },
        DecodingKeyKind::SecretOrDer(bytes) => PublicKey::Raw(bytes.clone()),
    };
    Ok(Box::new(Verifier {
        algorithm: *algorithm,
        key: public,
    }))
}

enum PrivateKey {
    Ecdsa(signature::EcdsaKeyPair),
    Rsa(signature::RsaKeyPair),
    Ed25519(signature::Ed25519KeyPair),
}

struct Signer {
    algorithm: Algorithm,
    key: PrivateKey,
}

impl ::signature::Signer<Vec<u8>> for Signer {
    fn try_sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, ::signature::Error> {
        let random = ring::rand::SystemRandom::new();
        match &self.key {
            PrivateKey::Ecdsa(pair) => pair
                .sign(&random, message)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(|_| ::signature::Error::new()),
            PrivateKey::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            PrivateKey::Rsa(pair) => {
                let padding: &'static dyn signature::RsaEncoding = match self.algorithm {
                    Algorithm::RS256 => &signature::RSA_PKCS1_SHA256,
                    Algorithm::RS384 => &signature::RSA_PKCS1_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_SHA512,
                    Algorithm::PS256 => &signature::RSA_PSS_SHA256,
                    Algorithm::PS384 => &signature::RSA_PSS_SHA384,
                    Algorithm::PS512 => &signature::RSA_PSS_SHA512,
                    _ => return Err(::signature::Error::new()),
                };
                let mut output = vec![0u8; pair.public().modulus_len()];
                pair.sign(padding, &random, message, &mut output)
                    .map_err(|_| ::signature::Error::new())?;
                Ok(output)
            }
        }
    }
}

impl JwtSigner for Signer {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

fn signer_factory(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    let family = family_of(*algorithm);
    if family == AlgorithmFamily::Hmac || key.family() != family {
        return Err(Error::from(ErrorKind::InvalidAlgorithm));
    }
    let bytes = key.as_bytes();
    let invalid = |_| Error::from(ErrorKind::InvalidKeyFormat);
    let private = match algorithm {
        Algorithm::ES256 | Algorithm::ES384 => {
            let signing = if *algorithm == Algorithm::ES256 {
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING
            } else {
                &signature::ECDSA_P384_SHA384_FIXED_SIGNING
            };
            PrivateKey::Ecdsa(
                signature::EcdsaKeyPair::from_pkcs8(signing, bytes, &ring::rand::SystemRandom::new())
                    .map_err(invalid)?,
            )
        }
        Algorithm::EdDSA => {
            PrivateKey::Ed25519(signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes).map_err(invalid)?)
        }
        _ => PrivateKey::Rsa(
            signature::RsaKeyPair::from_pkcs8(bytes)
                .or_else(|_| signature::RsaKeyPair::from_der(bytes))
                .map_err(|_| Error::from(ErrorKind::InvalidKeyFormat))?,
        ),
    };
    Ok(Box::new(Signer {
        algorithm: *algorithm,
        key: private,
    }))
}

/// The configured assertion key cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("the assertion key is not a usable ECDSA P-256 PKCS#8 key")]
pub struct EdgeKeyError;

/// An ES256 key of the edge itself (signs identity assertions for upstreams).
pub struct EdgeKey {
    pub key_id: String,
    pub encoding: EncodingKey,
    /// Uncompressed public point, for the JWKS.
    public: Vec<u8>,
}

impl EdgeKey {
    /// A fresh key (processes without a configured key).
    pub fn generate() -> std::result::Result<Self, ring::error::Unspecified> {
        let random = ring::rand::SystemRandom::new();
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &random)?;
        Self::from_pkcs8(pkcs8.as_ref())
    }

    /// From a PKCS#8 DER P-256 key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> std::result::Result<Self, ring::error::Unspecified> {
        let pair = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|_| ring::error::Unspecified)?;
        let public = pair.public_key().as_ref().to_vec();
        // The key id is the RFC 7638 thumbprint, so it is stable for a given key.
        let jwk = Self::jwk_members(&public);
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#, jwk.0, jwk.1);
        let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
        let key_id = base64_url(digest.as_ref());
        Ok(EdgeKey {
            key_id,
            encoding: EncodingKey::from_ec_der(pkcs8),
            public,
        })
    }

    fn jwk_members(public: &[u8]) -> (String, String) {
        // Uncompressed point: 0x04 || x (32) || y (32).
        (base64_url(&public[1..33]), base64_url(&public[33..65]))
    }

    /// The public JWKS document for `/.well-known/vestibule/jwks.json`.
    pub fn jwks(&self) -> serde_json::Value {
        let (x, y) = Self::jwk_members(&self.public);
        serde_json::json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "x": x, "y": y, "use": "sig", "alg": "ES256", "kid": self.key_id,
        }]})
    }
}

pub fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Header, Validation, decode, encode};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Claims {
        sub: String,
        exp: u64,
    }

    fn far_future() -> u64 {
        4_000_000_000
    }

    #[test]
    fn signs_and_verifies_es256_and_refuses_hmac() {
        install();
        let key = EdgeKey::generate().unwrap();
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(key.jwks()).unwrap();
        let decoding = DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
        let token = encode(
            &Header::new(Algorithm::ES256),
            &Claims {
                sub: "u".into(),
                exp: far_future(),
            },
            &key.encoding,
        )
        .unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.validate_aud = false;
        assert_eq!(
            decode::<Claims>(&token, &decoding, &validation).unwrap().claims.sub,
            "u"
        );
        // Flip one signature character: refused.
        let mut tampered = token.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(decode::<Claims>(std::str::from_utf8(&tampered).unwrap(), &decoding, &validation).is_err());
        // HMAC never verifies, not even when the "secret" is the public key.
        assert!(verifier_factory(&Algorithm::HS256, &DecodingKey::from_secret(b"k")).is_err());
        // A key of the wrong family for the algorithm is refused.
        assert!(verifier_factory(&Algorithm::RS256, &decoding).is_err());
    }

    #[test]
    fn verifies_eddsa() {
        install();
        let random = ring::rand::SystemRandom::new();
        let ed = signature::Ed25519KeyPair::generate_pkcs8(&random).unwrap();
        let pair = signature::Ed25519KeyPair::from_pkcs8(ed.as_ref()).unwrap();
        let token = encode(
            &Header::new(Algorithm::EdDSA),
            &Claims {
                sub: "e".into(),
                exp: far_future(),
            },
            &EncodingKey::from_ed_der(ed.as_ref()),
        )
        .unwrap();
        let decoding = DecodingKey::from_ed_components(&base64_url(pair.public_key().as_ref())).unwrap();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.validate_aud = false;
        assert_eq!(
            decode::<Claims>(&token, &decoding, &validation).unwrap().claims.sub,
            "e"
        );
        // ring cannot generate RSA keys; RS256 is covered by the integration tests, whose OpenID
        // provider signs with RSA.
    }
}
