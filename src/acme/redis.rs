//! Shared storage in Redis, for several instances behind one name: they see the same
//! certificates and ACME account, take the same issuance locks and answer each other's
//! validations (the CA may reach any instance).
//!
//! Keys, all under `{prefix}:` (`acme.redis_key_prefix`): `account`, `certificate:{name}` (a hash
//! with `chain` and `key`), `certificates` (the set of names), `lock:{name}` and
//! `challenge:{key}` (both with an expiry).
//!
//! - Locks are `SET NX PX` with a random token, released by compare-and-delete: a holder whose
//!   lock expired never releases the next holder's. A lock whose holder crashed expires.
//! - [`TieredStorage`] keeps the filesystem as the durable local copy: everything this instance
//!   writes goes to both, reads prefer Redis and fall back to the files, so an issued certificate
//!   or account key survives a Redis outage or flush.
//! - One connection, re-made after any error; every command has a deadline. None of this is on the
//!   request path: only start-up, issuance, renewal and challenge handshakes use it.
//! - Replies are RESP2, parsed with bounds (size, element count, depth): a broken or hostile server
//!   yields an error, never unbounded memory.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::storage::{FileStorage, LockGuard, Storage, StorageError, StoredCertificate};
use crate::config::RedisSettings;

/// Deadline for connecting and for each command (with its reply).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest bulk string accepted from the server (a certificate chain is a few KiB).
const MAX_BULK_BYTES: usize = 16 << 20;
/// Largest array accepted (names of stored certificates).
const MAX_ELEMENTS: usize = 1 << 20;
/// Nesting accepted: `EXEC` returns an array of replies, which may be arrays.
const MAX_DEPTH: usize = 3;
/// A status or error line longer than this is a protocol error.
const MAX_LINE_BYTES: usize = 64 << 10;
/// Most bytes buffered for the replies of one call.
const MAX_BUFFERED_BYTES: usize = 64 << 20;
/// After a failed connection or command, calls fail at once for this long instead of queueing
/// behind a dead or hung server.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Tries to release an issuance lock before leaving it to expire.
const RELEASE_ATTEMPTS: u32 = 3;
/// Deletes the lock only if it still holds our token.
const RELEASE_SCRIPT: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Nil,
    Status(String),
    Integer(i64),
    Bulk(Vec<u8>),
    Array(Vec<Reply>),
    Error(String),
}

impl Reply {
    /// What a reply is, never what it holds (a bulk may be a private key).
    pub fn describe(&self) -> String {
        match self {
            Reply::Nil => "nil".into(),
            Reply::Status(_) => "status".into(),
            Reply::Integer(_) => "integer".into(),
            Reply::Bulk(bytes) => format!("bulk of {} bytes", bytes.len()),
            Reply::Array(elements) => format!("array of {}", elements.len()),
            Reply::Error(message) => format!("error `{message}`"),
        }
    }
}

fn protocol(message: impl Into<String>) -> StorageError {
    StorageError::Redis(message.into())
}

/// Parses one reply from the front of `buffer`: `Ok(None)` when more bytes are needed.
pub fn parse_reply(buffer: &[u8]) -> Result<Option<(Reply, usize)>, StorageError> {
    parse_at(buffer, 0, 0)
}

fn parse_at(buffer: &[u8], start: usize, depth: usize) -> Result<Option<(Reply, usize)>, StorageError> {
    let rest = &buffer[start..];
    let Some(line_end) = rest.windows(2).position(|pair| pair == b"\r\n") else {
        if rest.len() > MAX_LINE_BYTES {
            return Err(protocol("reply line too long"));
        }
        return Ok(None);
    };
    let Some((&kind, line)) = rest[..line_end].split_first() else {
        return Err(protocol("empty reply line"));
    };
    let after_line = start + line_end + 2;
    let text = || String::from_utf8_lossy(line).into_owned();
    let number = || -> Result<i64, StorageError> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|digits| digits.parse().ok())
            .ok_or_else(|| protocol("malformed length or integer"))
    };
    // A bulk or array length: `None` for `-1` (nil), otherwise at most `max`.
    let length = |max: usize, what: &str| -> Result<Option<usize>, StorageError> {
        let value = number()?;
        if value == -1 {
            return Ok(None);
        }
        let value = usize::try_from(value).map_err(|_| protocol(format!("negative {what} length")))?;
        if value > max {
            return Err(protocol(format!("{what} reply too large")));
        }
        Ok(Some(value))
    };
    match kind {
        b'+' => Ok(Some((Reply::Status(text()), after_line))),
        b'-' => Ok(Some((Reply::Error(text()), after_line))),
        b':' => Ok(Some((Reply::Integer(number()?), after_line))),
        b'$' => {
            let Some(length) = length(MAX_BULK_BYTES, "bulk")? else {
                return Ok(Some((Reply::Nil, after_line)));
            };
            let end = after_line + length;
            if buffer.len() < end + 2 {
                return Ok(None);
            }
            if &buffer[end..end + 2] != b"\r\n" {
                return Err(protocol("bulk reply not terminated"));
            }
            Ok(Some((Reply::Bulk(buffer[after_line..end].to_vec()), end + 2)))
        }
        b'*' => {
            let Some(count) = length(MAX_ELEMENTS, "array")? else {
                return Ok(Some((Reply::Nil, after_line)));
            };
            if depth >= MAX_DEPTH {
                return Err(protocol("reply nested too deeply"));
            }
            let mut elements = Vec::with_capacity(count.min(1024));
            let mut position = after_line;
            for _ in 0..count {
                match parse_at(buffer, position, depth + 1)? {
                    Some((element, next)) => {
                        elements.push(element);
                        position = next;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(elements), position)))
        }
        other => Err(protocol(format!("unknown reply type byte 0x{other:02x}"))),
    }
}

/// Appends one command in RESP form.
fn encode(command: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", command.len()).as_bytes());
    for argument in command {
        out.extend_from_slice(format!("${}\r\n", argument.len()).as_bytes());
        out.extend_from_slice(argument);
        out.extend_from_slice(b"\r\n");
    }
}

struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Connection {
    async fn open(settings: &RedisSettings) -> Result<Connection, StorageError> {
        let stream = TcpStream::connect((settings.host.as_str(), settings.port))
            .await
            .map_err(|error| protocol(format!("connecting to {}:{}: {error}", settings.host, settings.port)))?;
        let _ = stream.set_nodelay(true);
        let mut connection = Connection {
            stream,
            buffer: Vec::with_capacity(4096),
        };
        if let Some(password) = &settings.password {
            let mut command: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(username) = &settings.username {
                command.push(username.as_bytes());
            }
            command.push(password.as_bytes());
            // The server's message, never the password.
            expect_ok(connection.call(&[&command]).await?.remove(0), "AUTH")?;
        }
        if settings.database != 0 {
            let database = settings.database.to_string();
            expect_ok(
                connection.call(&[&[b"SELECT", database.as_bytes()]]).await?.remove(0),
                "SELECT",
            )?;
        }
        Ok(connection)
    }

    /// Sends `commands` in one write (a pipeline) and reads one reply for each.
    async fn call(&mut self, commands: &[&[&[u8]]]) -> Result<Vec<Reply>, StorageError> {
        let mut out = Vec::new();
        for command in commands {
            encode(command, &mut out);
        }
        self.stream
            .write_all(&out)
            .await
            .map_err(|error| protocol(format!("write: {error}")))?;
        let mut replies = Vec::with_capacity(commands.len());
        while replies.len() < commands.len() {
            if let Some((reply, used)) = parse_reply(&self.buffer)? {
                self.buffer.drain(..used);
                replies.push(reply);
                continue;
            }
            let mut chunk = [0u8; 8192];
            let read = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|error| protocol(format!("read: {error}")))?;
            if read == 0 {
                return Err(protocol("the server closed the connection"));
            }
            if self.buffer.len() + read > MAX_BUFFERED_BYTES {
                return Err(protocol("replies too large"));
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
        Ok(replies)
    }
}

fn expect_ok(reply: Reply, command: &str) -> Result<(), StorageError> {
    match reply {
        Reply::Status(status) if status == "OK" => Ok(()),
        Reply::Error(message) => Err(protocol(format!("{command}: {message}"))),
        other => Err(protocol(format!("{command}: unexpected reply {}", other.describe()))),
    }
}

fn bulk(reply: Reply, command: &str) -> Result<Option<Vec<u8>>, StorageError> {
    match reply {
        Reply::Nil => Ok(None),
        Reply::Bulk(bytes) => Ok(Some(bytes)),
        Reply::Error(message) => Err(protocol(format!("{command}: {message}"))),
        other => Err(protocol(format!("{command}: unexpected reply {}", other.describe()))),
    }
}

/// Certificates, account, locks and challenge answers in one Redis database.
#[derive(Clone)]
pub struct RedisStorage {
    inner: Arc<Inner>,
}

struct Inner {
    settings: RedisSettings,
    connection: tokio::sync::Mutex<Option<Connection>>,
    /// Until when calls fail fast after a failure.
    failed_until: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl RedisStorage {
    pub fn new(settings: RedisSettings) -> Self {
        RedisStorage {
            inner: Arc::new(Inner {
                settings,
                connection: tokio::sync::Mutex::new(None),
                failed_until: std::sync::Mutex::new(None),
            }),
        }
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut key = self.inner.settings.key_prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    /// Runs a pipeline on the shared connection, within [`COMMAND_TIMEOUT`] including the wait
    /// for the connection. The connection is taken out of its slot for the call and put back only
    /// after every reply was read: a failure, a timeout or a cancelled caller drops it (never
    /// leaving unread replies for the next command), and the next call reconnects. For
    /// [`RETRY_AFTER_FAILURE`] after a failure, calls fail at once.
    pub async fn run(&self, commands: &[&[&[u8]]]) -> Result<Vec<Reply>, StorageError> {
        let now = tokio::time::Instant::now();
        if self.failing_until().is_some_and(|until| until > now) {
            return Err(protocol("unavailable (a recent call failed)"));
        }
        let settings = &self.inner.settings;
        let attempt = tokio::time::timeout(COMMAND_TIMEOUT, async {
            let mut slot = self.inner.connection.lock().await;
            let mut connection = match slot.take() {
                Some(connection) => connection,
                None => Connection::open(settings).await?,
            };
            let replies = connection.call(commands).await?;
            *slot = Some(connection);
            Ok::<_, StorageError>(replies)
        })
        .await;
        let result = match attempt {
            Ok(result) => result,
            Err(_) => Err(protocol(format!("no reply within {} ms", COMMAND_TIMEOUT.as_millis()))),
        };
        if result.is_err() {
            self.set_failing_until(Some(tokio::time::Instant::now() + RETRY_AFTER_FAILURE));
        }
        result
    }

    fn failing_until(&self) -> Option<tokio::time::Instant> {
        *self
            .inner
            .failed_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_failing_until(&self, until: Option<tokio::time::Instant>) {
        *self
            .inner
            .failed_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = until;
    }

    async fn one(&self, command: &[&[u8]]) -> Result<Reply, StorageError> {
        let mut replies = self.run(&[command]).await?;
        replies.pop().ok_or_else(|| protocol("no reply"))
    }

    /// Every stored certificate (start-up).
    pub async fn load_all(&self) -> Result<Vec<(String, StoredCertificate)>, StorageError> {
        let mut all = Vec::new();
        for name in self.certificate_names().await? {
            if let Some(certificate) = self.load_certificate(&name).await? {
                all.push((name, certificate));
            }
        }
        Ok(all)
    }
}

struct RedisLock {
    storage: RedisStorage,
    key: String,
    token: String,
}

impl LockGuard for RedisLock {}

impl Drop for RedisLock {
    fn drop(&mut self) {
        // Outside a runtime (process exit) the lock simply expires.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let storage = self.storage.clone();
        let key = std::mem::take(&mut self.key);
        let token = std::mem::take(&mut self.token);
        runtime.spawn(async move {
            let release: [&[u8]; 5] = [
                b"EVAL",
                RELEASE_SCRIPT.as_bytes(),
                b"1",
                key.as_bytes(),
                token.as_bytes(),
            ];
            // A few tries past the fail-fast window; after that the lock expires by itself.
            for attempt in 1..=RELEASE_ATTEMPTS {
                match storage.one(&release).await {
                    Ok(_) => return,
                    Err(error) if attempt == RELEASE_ATTEMPTS => {
                        tracing::warn!(%error, "issuance lock not released; it expires by itself")
                    }
                    Err(_) => tokio::time::sleep(RETRY_AFTER_FAILURE).await,
                }
            }
        });
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 16];
    // A failing system RNG leaves a zero token: still released only by compare-and-delete.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn milliseconds(ttl: Duration) -> String {
    ttl.as_millis().max(1).to_string()
}

#[async_trait]
impl Storage for RedisStorage {
    async fn load_account(&self) -> Result<Option<Vec<u8>>, StorageError> {
        let key = self.key(&["account"]);
        bulk(self.one(&[b"GET", key.as_bytes()]).await?, "GET")
    }

    async fn store_account(&self, credentials: &[u8]) -> Result<(), StorageError> {
        let key = self.key(&["account"]);
        expect_ok(self.one(&[b"SET", key.as_bytes(), credentials]).await?, "SET")
    }

    async fn load_certificate(&self, name: &str) -> Result<Option<StoredCertificate>, StorageError> {
        let key = self.key(&["certificate", super::storage::checked(name)?]);
        let reply = self.one(&[b"HMGET", key.as_bytes(), b"chain", b"key"]).await?;
        let Reply::Array(mut fields) = reply else {
            return Err(protocol(format!("HMGET: unexpected reply {}", reply.describe())));
        };
        let (Some(key_pem), Some(chain_pem)) = (fields.pop(), fields.pop()) else {
            return Err(protocol("HMGET: short reply"));
        };
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).map_err(|_| protocol("stored PEM is not UTF-8"));
        match (bulk(chain_pem, "HMGET")?, bulk(key_pem, "HMGET")?) {
            (Some(chain_pem), Some(key_pem)) => Ok(Some(StoredCertificate {
                chain_pem: text(chain_pem)?,
                key_pem: text(key_pem)?,
            })),
            _ => Ok(None),
        }
    }

    async fn store_certificate(&self, name: &str, certificate: &StoredCertificate) -> Result<(), StorageError> {
        let name = super::storage::checked(name)?;
        let key = self.key(&["certificate", name]);
        let index = self.key(&["certificates"]);
        // Both or neither: the hash and its name in the index.
        let replies = self
            .run(&[
                &[b"MULTI"],
                &[
                    b"HSET",
                    key.as_bytes(),
                    b"chain",
                    certificate.chain_pem.as_bytes(),
                    b"key",
                    certificate.key_pem.as_bytes(),
                ],
                &[b"SADD", index.as_bytes(), name.as_bytes()],
                &[b"EXEC"],
            ])
            .await?;
        match replies.last() {
            Some(Reply::Array(results)) if results.iter().all(|r| matches!(r, Reply::Integer(_))) => Ok(()),
            other => Err(protocol(format!(
                "MULTI/EXEC: unexpected reply {}",
                other.map_or_else(|| "none".into(), Reply::describe)
            ))),
        }
    }

    async fn certificate_names(&self) -> Result<Vec<String>, StorageError> {
        let index = self.key(&["certificates"]);
        match self.one(&[b"SMEMBERS", index.as_bytes()]).await? {
            Reply::Array(members) => Ok(members
                .into_iter()
                .filter_map(|member| match member {
                    Reply::Bulk(bytes) => String::from_utf8(bytes).ok(),
                    _ => None,
                })
                // Only names that could have been stored: nothing else becomes a key or a path.
                .filter(|name| super::storage::checked(name).is_ok())
                .collect()),
            other => Err(protocol(format!("SMEMBERS: unexpected reply {}", other.describe()))),
        }
    }

    async fn lock(&self, name: &str, ttl: Duration) -> Result<Option<Box<dyn LockGuard>>, StorageError> {
        let key = self.key(&["lock", super::storage::checked(name)?]);
        let token = random_token();
        let ttl = milliseconds(ttl);
        let reply = self
            .one(&[b"SET", key.as_bytes(), token.as_bytes(), b"NX", b"PX", ttl.as_bytes()])
            .await?;
        match reply {
            Reply::Status(status) if status == "OK" => Ok(Some(Box::new(RedisLock {
                storage: self.clone(),
                key,
                token,
            }))),
            Reply::Nil => Ok(None),
            other => Err(protocol(format!("SET NX: unexpected reply {}", other.describe()))),
        }
    }

    async fn store_challenge(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StorageError> {
        let key = self.key(&["challenge", key]);
        let ttl = milliseconds(ttl);
        expect_ok(
            self.one(&[b"SET", key.as_bytes(), value, b"PX", ttl.as_bytes()])
                .await?,
            "SET",
        )
    }

    async fn load_challenge(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let key = self.key(&["challenge", key]);
        bulk(self.one(&[b"GET", key.as_bytes()]).await?, "GET")
    }

    async fn delete_challenge(&self, key: &str) -> Result<(), StorageError> {
        let key = self.key(&["challenge", key]);
        match self.one(&[b"DEL", key.as_bytes()]).await? {
            Reply::Integer(_) => Ok(()),
            other => Err(protocol(format!("DEL: unexpected reply {}", other.describe()))),
        }
    }
}

/// Redis shared by all instances, with this instance's files as the durable local copy.
pub struct TieredStorage {
    pub local: FileStorage,
    pub shared: RedisStorage,
}

fn warn_shared(operation: &'static str, error: &StorageError) {
    tracing::warn!(operation, %error, "shared storage (Redis) failed; using the local files");
}

#[async_trait]
impl Storage for TieredStorage {
    async fn load_account(&self) -> Result<Option<Vec<u8>>, StorageError> {
        match self.shared.load_account().await {
            Ok(Some(account)) => Ok(Some(account)),
            Ok(None) => {
                // A local account (from before Redis, or a flushed Redis) is shared from now on.
                let local = self.local.load_account().await?;
                if let Some(account) = &local
                    && let Err(error) = self.shared.store_account(account).await
                {
                    warn_shared("store account", &error);
                }
                Ok(local)
            }
            Err(error) => {
                warn_shared("load account", &error);
                self.local.load_account().await
            }
        }
    }

    async fn store_account(&self, credentials: &[u8]) -> Result<(), StorageError> {
        self.local.store_account(credentials).await?;
        if let Err(error) = self.shared.store_account(credentials).await {
            warn_shared("store account", &error);
        }
        Ok(())
    }

    /// The newer of the two copies; a newer local one (issued or renewed while Redis was
    /// unreachable) is shared again, so other instances do not order it once more.
    async fn load_certificate(&self, name: &str) -> Result<Option<StoredCertificate>, StorageError> {
        let shared = match self.shared.load_certificate(name).await {
            Ok(shared) => shared,
            Err(error) => {
                warn_shared("load certificate", &error);
                return self.local.load_certificate(name).await;
            }
        };
        let local = self.local.load_certificate(name).await.unwrap_or_else(|error| {
            tracing::warn!(%error, "local certificate copy not readable");
            None
        });
        match (shared, local) {
            (Some(shared), Some(local)) if local.not_after() > shared.not_after() => {
                if let Err(error) = self.shared.store_certificate(name, &local).await {
                    warn_shared("store certificate", &error);
                }
                Ok(Some(local))
            }
            (Some(shared), _) => Ok(Some(shared)),
            (None, local) => {
                if let Some(local) = &local
                    && let Err(error) = self.shared.store_certificate(name, local).await
                {
                    warn_shared("store certificate", &error);
                }
                Ok(local)
            }
        }
    }

    /// Stored if either copy was written: the local one is durable, the shared one is what other
    /// instances see.
    async fn store_certificate(&self, name: &str, certificate: &StoredCertificate) -> Result<(), StorageError> {
        let local = self.local.store_certificate(name, certificate).await;
        let shared = self.shared.store_certificate(name, certificate).await;
        match (local, shared) {
            (Ok(()), Ok(())) => Ok(()),
            (Ok(()), Err(error)) => {
                warn_shared("store certificate", &error);
                Ok(())
            }
            (Err(error), Ok(())) => {
                tracing::warn!(%error, "certificate stored in Redis only; the local copy failed");
                Ok(())
            }
            (Err(error), Err(_)) => Err(error),
        }
    }

    async fn certificate_names(&self) -> Result<Vec<String>, StorageError> {
        let mut names = self.local.certificate_names().await?;
        match self.shared.certificate_names().await {
            Ok(shared) => names.extend(shared),
            Err(error) => warn_shared("list certificates", &error),
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Only Redis can make a lock exclusive across instances: no fallback.
    async fn lock(&self, name: &str, ttl: Duration) -> Result<Option<Box<dyn LockGuard>>, StorageError> {
        self.shared.lock(name, ttl).await
    }

    async fn store_challenge(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StorageError> {
        self.shared.store_challenge(key, value, ttl).await
    }

    async fn load_challenge(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.shared.load_challenge(key).await
    }

    async fn delete_challenge(&self, key: &str) -> Result<(), StorageError> {
        self.shared.delete_challenge(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_reply_kind_and_waits_for_partial_ones() {
        assert_eq!(parse_reply(b"+OK\r\n").unwrap(), Some((Reply::Status("OK".into()), 5)));
        assert_eq!(
            parse_reply(b"-ERR no\r\n").unwrap().unwrap().0,
            Reply::Error("ERR no".into())
        );
        assert_eq!(parse_reply(b":-7\r\n").unwrap().unwrap().0, Reply::Integer(-7));
        assert_eq!(parse_reply(b"$-1\r\n").unwrap().unwrap().0, Reply::Nil);
        assert_eq!(
            parse_reply(b"$3\r\na\r\n\r\n").unwrap().unwrap(),
            (Reply::Bulk(b"a\r\n".to_vec()), 9)
        );
        let array = b"*2\r\n$1\r\nx\r\n*1\r\n:1\r\n";
        assert_eq!(
            parse_reply(array).unwrap().unwrap(),
            (
                Reply::Array(vec![Reply::Bulk(b"x".to_vec()), Reply::Array(vec![Reply::Integer(1)])]),
                array.len()
            )
        );
        for cut in 0..array.len() {
            assert_eq!(parse_reply(&array[..cut]).unwrap(), None, "{cut}");
        }
    }

    #[test]
    fn refuses_hostile_replies() {
        for bad in [
            &b"$99999999999\r\n"[..],
            b"*99999999999\r\n",
            b"$-2\r\n",
            b"$1\r\nab\r\n",
            b"?x\r\n",
            b"\r\n",
            b":x\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            assert!(parse_reply(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(parse_reply(&vec![b'+'; MAX_LINE_BYTES + 1]).is_err());
    }

    fn settings(port: u16) -> RedisSettings {
        RedisSettings {
            host: "127.0.0.1".into(),
            port,
            username: None,
            password: None,
            database: 0,
            key_prefix: "test".into(),
        }
    }

    /// A scripted RESP server: records every command; `GET slow` answers after 300 ms, `GET k`
    /// answers `k`, anything else `+OK`. Returns its port, the commands and the connection count.
    async fn fake_server() -> (
        u16,
        Arc<std::sync::Mutex<Vec<Vec<String>>>>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (record, count) = (seen.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let record = record.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Ok(Some((Reply::Array(arguments), used))) = parse_reply(&buffer) {
                            buffer.drain(..used);
                            let words: Vec<String> = arguments
                                .into_iter()
                                .map(|a| match a {
                                    Reply::Bulk(b) => String::from_utf8(b).unwrap(),
                                    _ => String::new(),
                                })
                                .collect();
                            record.lock().unwrap().push(words.clone());
                            let answer = match words.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                                ["GET", "slow"] => {
                                    tokio::time::sleep(Duration::from_millis(300)).await;
                                    "$4\r\nslow\r\n".to_owned()
                                }
                                ["GET", key] => format!("${}\r\n{key}\r\n", key.len()),
                                _ => "+OK\r\n".to_owned(),
                            };
                            if stream.write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
                        }
                    }
                });
            }
        });
        (port, seen, connections)
    }

    #[tokio::test]
    async fn a_cancelled_call_never_leaves_its_reply_for_the_next_one() {
        let (port, _, connections) = fake_server().await;
        let storage = RedisStorage::new(settings(port));
        assert_eq!(
            storage.one(&[b"GET", b"warm"]).await.unwrap(),
            Reply::Bulk(b"warm".to_vec())
        );
        let cancelled = tokio::time::timeout(Duration::from_millis(50), storage.one(&[b"GET", b"slow"])).await;
        assert!(cancelled.is_err(), "the caller gave up");
        // The next command gets its own reply, on a new connection.
        assert_eq!(
            storage.one(&[b"GET", b"next"]).await.unwrap(),
            Reply::Bulk(b"next".to_vec())
        );
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            storage.one(&[b"GET", b"after"]).await.unwrap(),
            Reply::Bulk(b"after".to_vec())
        );
    }

    #[tokio::test]
    async fn authenticates_and_selects_the_database_first() {
        let (port, seen, _) = fake_server().await;
        let storage = RedisStorage::new(RedisSettings {
            username: Some("edge".into()),
            password: Some("secret".into()),
            database: 3,
            ..settings(port)
        });
        assert_eq!(storage.load_account().await.unwrap(), Some(b"test:account".to_vec()));
        assert_eq!(
            *seen.lock().unwrap(),
            [
                vec!["AUTH", "edge", "secret"],
                vec!["SELECT", "3"],
                vec!["GET", "test:account"]
            ]
        );
    }

    #[tokio::test]
    async fn fails_fast_after_a_failure_then_retries() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let storage = RedisStorage::new(settings(dead));
        let first = storage.load_account().await.unwrap_err().to_string();
        assert!(first.contains("connecting"), "{first}");
        let second = storage.load_account().await.unwrap_err().to_string();
        assert!(second.contains("recent call failed"), "{second}");
        tokio::time::sleep(RETRY_AFTER_FAILURE + Duration::from_millis(50)).await;
        let third = storage.load_account().await.unwrap_err().to_string();
        assert!(third.contains("connecting"), "tried again: {third}");
    }

    #[test]
    fn encodes_binary_safe_commands() {
        let mut out = Vec::new();
        encode(&[b"SET", b"k", b"a\r\nb"], &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n");
    }
}
