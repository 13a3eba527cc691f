//! Where issued certificates, the ACME account and issuance locks live.
//!
//! [`Storage`] is the seam: the filesystem ([`FileStorage`], the default, under `certs/acme/`)
//! serves one instance; the shared backend ([`super::redis`]) implements the same trait for
//! several — it makes `lock` exclusive across instances and `store_challenge`/`load_challenge`
//! visible to all of them, so whichever instance the CA reaches can answer a validation.
//!
//! Durability: every write goes to a temporary file in the same directory, is fsynced, renamed
//! over the target and the directory fsynced, so a crash leaves the old file or the new one, never
//! a torn one. Private keys and account credentials are created 0600.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{operation} {}: {source}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing the unsafe certificate name `{0}`")]
    UnsafeName(String),
    #[error("the storage task failed: {0}")]
    Task(String),
    #[error("redis: {0}")]
    Redis(String),
}

/// A certificate as stored: PEM chain (leaf first) and PEM private key.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCertificate {
    pub chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for StoredCertificate {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("StoredCertificate")
            .field("chain_pem_bytes", &self.chain_pem.len())
            .finish_non_exhaustive()
    }
}

impl StoredCertificate {
    /// The leaf's expiry (Unix seconds); `i64::MIN` when it does not parse, so any usable
    /// certificate is preferred to it.
    pub fn not_after(&self) -> i64 {
        crate::tls::LoadedCertificate::from_pem(self.chain_pem.as_bytes(), self.key_pem.as_bytes())
            .map_or(i64::MIN, |loaded| loaded.not_after)
    }
}

/// Held while a name is being issued; dropping it releases the lock.
pub trait LockGuard: Send + Sync {}

#[async_trait]
pub trait Storage: Send + Sync {
    async fn load_account(&self) -> Result<Option<Vec<u8>>, StorageError>;
    async fn store_account(&self, credentials: &[u8]) -> Result<(), StorageError>;
    async fn load_certificate(&self, name: &str) -> Result<Option<StoredCertificate>, StorageError>;
    async fn store_certificate(&self, name: &str, certificate: &StoredCertificate) -> Result<(), StorageError>;
    async fn certificate_names(&self) -> Result<Vec<String>, StorageError>;
    /// Takes the issuance lock for `name` for at most `ttl`; `None` when another holder has it.
    async fn lock(&self, name: &str, ttl: Duration) -> Result<Option<Box<dyn LockGuard>>, StorageError>;
    /// Publishes a challenge answer for other instances (no-op for single-instance backends).
    async fn store_challenge(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StorageError>;
    async fn load_challenge(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError>;
    async fn delete_challenge(&self, key: &str) -> Result<(), StorageError>;
}

/// Names are normalized DNS names; anything else never becomes a path.
pub(crate) fn checked(name: &str) -> Result<&str, StorageError> {
    let safe = !name.is_empty()
        && name.len() <= crate::tenancy::host::MAX_NAME_LENGTH
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with('.')
        && !name.contains("..");
    if safe {
        Ok(name)
    } else {
        Err(StorageError::UnsafeName(name.to_owned()))
    }
}

/// Certificates under `{root}/certificates/{name}/`, the account at `{root}/account.json`,
/// issuance locks under `{root}/locks/`.
pub struct FileStorage {
    root: PathBuf,
}

fn io<'a>(operation: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        operation,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `contents` to `path` atomically and durably, with `mode` permissions.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), StorageError> {
    use std::os::unix::fs::OpenOptionsExt;
    let directory = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(directory).map_err(io("create", directory))?;
    let temporary = directory.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .map_err(io("create", &temporary))?;
    file.write_all(contents).map_err(io("write", &temporary))?;
    file.sync_all().map_err(io("fsync", &temporary))?;
    drop(file);
    std::fs::rename(&temporary, path).map_err(io("rename", path))?;
    std::fs::File::open(directory)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", directory))?;
    Ok(())
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StorageError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(StorageError::Io {
            operation: "read",
            path: path.to_path_buf(),
            source: error,
        }),
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| StorageError::Task(error.to_string()))?
}

struct FileLock {
    path: PathBuf,
}

impl LockGuard for FileLock {}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl FileStorage {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileStorage { root: root.into() }
    }

    fn certificate_directory(&self, name: &str) -> Result<PathBuf, StorageError> {
        Ok(self.root.join("certificates").join(checked(name)?))
    }

    /// Everything stored, read synchronously (start-up, before serving).
    pub fn load_all(&self) -> Result<Vec<(String, StoredCertificate)>, StorageError> {
        let directory = self.root.join("certificates");
        let entries = match std::fs::read_dir(&directory) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => {
                return Err(StorageError::Io {
                    operation: "list",
                    path: directory,
                    source: error,
                });
            }
        };
        let mut loaded = Vec::new();
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if checked(&name).is_err() {
                continue;
            }
            if let Some(certificate) = Self::read_certificate(&entry.path())? {
                loaded.push((name, certificate));
            }
        }
        Ok(loaded)
    }

    fn read_certificate(directory: &Path) -> Result<Option<StoredCertificate>, StorageError> {
        let (Some(chain), Some(key)) = (
            read_optional(&directory.join("chain.pem"))?,
            read_optional(&directory.join("key.pem"))?,
        ) else {
            return Ok(None);
        };
        Ok(Some(StoredCertificate {
            chain_pem: String::from_utf8_lossy(&chain).into_owned(),
            key_pem: String::from_utf8_lossy(&key).into_owned(),
        }))
    }
}

#[async_trait]
impl Storage for FileStorage {
    async fn load_account(&self) -> Result<Option<Vec<u8>>, StorageError> {
        let path = self.root.join("account.json");
        blocking(move || read_optional(&path)).await
    }

    async fn store_account(&self, credentials: &[u8]) -> Result<(), StorageError> {
        let path = self.root.join("account.json");
        let credentials = credentials.to_vec();
        blocking(move || write_atomically(&path, &credentials, 0o600)).await
    }

    async fn load_certificate(&self, name: &str) -> Result<Option<StoredCertificate>, StorageError> {
        let directory = self.certificate_directory(name)?;
        blocking(move || Self::read_certificate(&directory)).await
    }

    async fn store_certificate(&self, name: &str, certificate: &StoredCertificate) -> Result<(), StorageError> {
        let directory = self.certificate_directory(name)?;
        let certificate = certificate.clone();
        blocking(move || {
            // Key first: a crash between the two writes leaves a new key beside the old chain,
            // which fails the key check on load and is re-issued, never served mismatched.
            write_atomically(&directory.join("key.pem"), certificate.key_pem.as_bytes(), 0o600)?;
            write_atomically(&directory.join("chain.pem"), certificate.chain_pem.as_bytes(), 0o644)
        })
        .await
    }

    async fn certificate_names(&self) -> Result<Vec<String>, StorageError> {
        let root = FileStorage::new(self.root.clone());
        blocking(move || Ok(root.load_all()?.into_iter().map(|(name, _)| name).collect())).await
    }

    async fn lock(&self, name: &str, ttl: Duration) -> Result<Option<Box<dyn LockGuard>>, StorageError> {
        let path = self.root.join("locks").join(format!("{}.lock", checked(name)?));
        blocking(move || {
            let directory = path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(directory).map_err(io("create", directory))?;
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            for _ in 0..2 {
                match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                    Ok(mut file) => {
                        let _ = write!(file, "{}", now + ttl.as_secs());
                        return Ok(Some(Box::new(FileLock { path: path.clone() }) as Box<dyn LockGuard>));
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                        // A lock left by a crashed holder expires.
                        let expires: u64 = std::fs::read_to_string(&path)
                            .ok()
                            .and_then(|t| t.trim().parse().ok())
                            .unwrap_or(0);
                        if expires > now {
                            return Ok(None);
                        }
                        let _ = std::fs::remove_file(&path);
                    }
                    Err(error) => {
                        return Err(StorageError::Io {
                            operation: "lock",
                            path: path.clone(),
                            source: error,
                        });
                    }
                }
            }
            Ok(None)
        })
        .await
    }

    async fn store_challenge(&self, _key: &str, _value: &[u8], _ttl: Duration) -> Result<(), StorageError> {
        Ok(())
    }

    async fn load_challenge(&self, _key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(None)
    }

    async fn delete_challenge(&self, _key: &str) -> Result<(), StorageError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn stores_certificates_and_accounts_privately_and_reads_them_back() {
        let directory = tempfile::tempdir().unwrap();
        let storage = FileStorage::new(directory.path());
        assert_eq!(storage.load_account().await.unwrap(), None);
        storage.store_account(b"{\"id\":1}").await.unwrap();
        assert_eq!(storage.load_account().await.unwrap().unwrap(), b"{\"id\":1}");
        let mode = |path: PathBuf| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(directory.path().join("account.json")), 0o600);
        let certificate = StoredCertificate {
            chain_pem: "chain".into(),
            key_pem: "key".into(),
        };
        storage
            .store_certificate("login.acme.test", &certificate)
            .await
            .unwrap();
        assert_eq!(
            storage.load_certificate("login.acme.test").await.unwrap(),
            Some(certificate.clone())
        );
        assert_eq!(
            mode(directory.path().join("certificates/login.acme.test/key.pem")),
            0o600
        );
        assert_eq!(storage.certificate_names().await.unwrap(), ["login.acme.test"]);
        assert_eq!(storage.load_all().unwrap().len(), 1);
        // No temporary file is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(directory.path().join("certificates/login.acme.test"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[tokio::test]
    async fn refuses_names_that_are_not_dns_names() {
        let storage = FileStorage::new(tempfile::tempdir().unwrap().path());
        for name in ["../evil", "..", "a/b", "", "UPPER.test", ".hidden"] {
            assert!(storage.load_certificate(name).await.is_err(), "{name}");
        }
    }

    #[tokio::test]
    async fn locks_are_exclusive_until_released_or_expired() {
        let directory = tempfile::tempdir().unwrap();
        let storage = FileStorage::new(directory.path());
        let held = storage.lock("a.test", Duration::from_secs(60)).await.unwrap();
        assert!(held.is_some());
        assert!(storage.lock("a.test", Duration::from_secs(60)).await.unwrap().is_none());
        drop(held);
        assert!(storage.lock("a.test", Duration::from_secs(60)).await.unwrap().is_some());
        // An expired lock file is taken over.
        std::fs::write(directory.path().join("locks/b.test.lock"), "1").unwrap();
        assert!(storage.lock("b.test", Duration::from_secs(60)).await.unwrap().is_some());
    }
}
