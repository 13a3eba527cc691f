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
    match kind {
        b'+' => Ok(Some((Reply::Status(text()), after_line))),
        b'-' => Ok(Some((Reply::Error(text()), after_line))),
        b':' => Ok(Some((Reply::Integer(number()?), after_line))),
        b'$' => {
            let length = number()?;
            if length == -1 {
                return Ok(Some((Reply::Nil, after_line)));
            }
            let length = usize::try_from(length).map_err(|_| protocol("negative bulk length"))?;
            if length > MAX_BULK_BYTES {
                return Err(protocol("bulk reply too large"));
            }
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
            let count = number()?;
            if count == -1 {
                return Ok(Some((Reply::Nil, after_line)));
            }
            let count = usize::try_from(count).map_err(|_| protocol("negative array length"))?;
            if count > MAX_ELEMENTS {
                return Err(protocol("array reply too large"));
            }
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
            self.buffer.extend_from_slice(&chunk[..read]);
        }
        Ok(replies)
    }
}

fn expect_ok(reply: Reply, command: &str) -> Result<(), StorageError> {
    match reply {
        Reply::Status(status) if status == "OK" => Ok(()),
        Reply::Error(message) => Err(protocol(format!("{command}: {message}"))),
        other => Err(protocol(format!("{command}: unexpected reply {other:?}"))),
    }
}

fn bulk(reply: Reply, command: &str) -> Result<Option<Vec<u8>>, StorageError> {
    match reply {
        Reply::Nil => Ok(None),
        Reply::Bulk(bytes) => Ok(Some(bytes)),
        Reply::Error(message) => Err(protocol(format!("{command}: {message}"))),
        other => Err(protocol(format!("{command}: unexpected reply {other:?}"))),
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
}

impl RedisStorage {
    pub fn new(settings: RedisSettings) -> Self {
        RedisStorage {
            inner: Arc::new(Inner {
                settings,
                connection: tokio::sync::Mutex::new(None),
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

    /// Runs a pipeline on the shared connection; any failure drops it (the next call reconnects).
    pub async fn run(&self, commands: &[&[&[u8]]]) -> Result<Vec<Reply>, StorageError> {
        let mut slot = self.inner.connection.lock().await;
        let settings = &self.inner.settings;
        let attempt = tokio::time::timeout(COMMAND_TIMEOUT, async {
            if slot.is_none() {
                *slot = Some(Connection::open(settings).await?);
            }
            match slot.as_mut() {
                Some(connection) => connection.call(commands).await,
                None => Err(protocol("no connection")),
            }
        })
        .await;
        match attempt {
            Ok(Ok(replies)) => Ok(replies),
            Ok(Err(error)) => {
                *slot = None;
                Err(error)
            }
            Err(_) => {
                *slot = None;
                Err(protocol(format!("no reply within {} ms", COMMAND_TIMEOUT.as_millis())))
            }
        }
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
            if let Err(error) = storage.one(&release).await {
                tracing::warn!(%error, "issuance lock not released; it expires by itself");
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
            return Err(protocol(format!("HMGET: unexpected reply {reply:?}")));
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
            other => Err(protocol(format!("MULTI/EXEC: unexpected reply {other:?}"))),
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
            other => Err(protocol(format!("SMEMBERS: unexpected reply {other:?}"))),
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
            other => Err(protocol(format!("SET NX: unexpected reply {other:?}"))),
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
            other => Err(protocol(format!("DEL: unexpected reply {other:?}"))),
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

    async fn load_certificate(&self, name: &str) -> Result<Option<StoredCertificate>, StorageError> {
        match self.shared.load_certificate(name).await {
            Ok(Some(certificate)) => Ok(Some(certificate)),
            Ok(None) => self.local.load_certificate(name).await,
            Err(error) => {
                warn_shared("load certificate", &error);
                self.local.load_certificate(name).await
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

    #[test]
    fn encodes_binary_safe_commands() {
        let mut out = Vec::new();
        encode(&[b"SET", b"k", b"a\r\nb"], &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n");
    }
}
