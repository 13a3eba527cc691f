//! `vestibule dev-certs`: a local CA and a certificate for the default configuration's hosts, so
//! the default configuration runs on a fresh machine and `curl --cacert` trusts it.
//!
//! ECDSA P-256 throughout (fast handshakes, the same key type the load comparison gives nginx).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use super::TlsError;

/// File names written under the chosen directory.
pub const CA_CERTIFICATE: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const CERTIFICATE: &str = "edge.pem";
pub const KEY: &str = "edge.key";

/// What `dev-certs` produced.
pub struct DevCertificates {
    pub ca_certificate: PathBuf,
    pub certificate: PathBuf,
    pub key: PathBuf,
}

fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    file.write_all(contents.as_bytes()).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(error: rcgen::Error) -> TlsError {
    TlsError::Invalid(format!("certificate generation failed: {error}"))
}

/// Writes (or keeps, unless `force`) a CA and a leaf certificate for `names` into `directory`.
pub fn generate(directory: &Path, names: &[String], force: bool) -> Result<DevCertificates, TlsError> {
    let paths = DevCertificates {
        ca_certificate: directory.join(CA_CERTIFICATE),
        certificate: directory.join(CERTIFICATE),
        key: directory.join(KEY),
    };
    let existing_covers_all = super::LoadedCertificate::load(&paths.certificate, &paths.key)
        .is_ok_and(|loaded| names.iter().all(|name| loaded.covers(name)));
    if !force && paths.ca_certificate.is_file() && existing_covers_all {
        return Ok(paths);
    }
    std::fs::create_dir_all(directory).map_err(|source| TlsError::Read {
        path: directory.to_path_buf(),
        source,
    })?;

    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(invalid)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(invalid)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Vestibule development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_certificate = ca_params.self_signed(&ca_key).map_err(invalid)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(invalid)?;
    let mut leaf_params = CertificateParams::new(names.to_vec()).map_err(invalid)?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "Vestibule development");
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).map_err(invalid)?;

    let write = |path: &Path, contents: &str| {
        std::fs::write(path, contents).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    write(&paths.ca_certificate, &ca_certificate.pem())?;
    write_private(&directory.join(CA_KEY), &ca_key.serialize_pem())?;
    write(&paths.certificate, &format!("{}{}", leaf.pem(), ca_certificate.pem()))?;
    write_private(&paths.key, &leaf_key.serialize_pem())?;
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_a_loadable_chain_and_keeps_it_unless_forced() {
        let directory = tempfile::tempdir().unwrap();
        let names = vec!["*.example.test".to_owned(), "example.test".to_owned()];
        let first = generate(directory.path(), &names, false).unwrap();
        let loaded = crate::tls::LoadedCertificate::load(&first.certificate, &first.key).unwrap();
        assert!(loaded.covers("a.example.test"));
        assert_eq!(loaded.key.cert.len(), 2, "leaf and CA");
        let before = std::fs::read(&first.certificate).unwrap();
        generate(directory.path(), &names, false).unwrap();
        assert_eq!(before, std::fs::read(&first.certificate).unwrap(), "kept");
        generate(directory.path(), &names, true).unwrap();
        assert_ne!(before, std::fs::read(&first.certificate).unwrap(), "replaced");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&first.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
