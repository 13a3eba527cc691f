//! `vestibule echo`: a tiny upstream that answers every request with the request it received
//! (method, path, headers) as JSON. It is the demo upstream of the default configuration and the
//! real peer the integration tests assert forwarded headers against.
//!
//! HTTP/1.1 with keep-alive; `Upgrade: websocket` gets a 101 and then every byte is echoed back,
//! which is enough to prove the edge passes upgraded connections through in both directions.
//! Request bodies are read (`Content-Length` or chunked) and reported by length and framing.
//! `/slow/{ms}` waits that long (at most 60 s) before answering, to test draining; `/close`
//! answers and then closes the connection without announcing it, as an upstream whose idle
//! timeout fires right after a response does; `/too-large` answers 413 without reading the body;
//! `/truncated` starts a chunked answer and closes the connection halfway, as an upstream that
//! crashes mid-response; `/head-only` sends a head with `Content-Length: 10` and closes before
//! the body; `/keep-alive/{s}` announces `Keep-Alive: timeout={s}` and from then on
//! closes the connection after that long idle, as Node.js does; `/hop-by-hop` answers with fields
//! meant for the edge's hop only; `/bytes/{n}` answers with `n` zero bytes (at most 1 GiB), for
//! clients that read slowly or not at all; `/chunked` answers `hello, world` in two chunks;
//! `/unframed` answers `hello, world` without length or chunks, ending it by closing;
//! `/overrun` answers `ok` and sends a second, unasked response [`OVERRUN_DELAY`] later, as a
//! buggy or hostile upstream would to poison a shared connection; `/both-framings` answers `ok` chunked
//! with a false `Content-Length` beside it. Every answer reports which connection carried it
//! (`connection`, numbered from 1 per process).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body read (and echoed as its length).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// How long `/overrun` waits before sending its unasked second response.
pub const OVERRUN_DELAY: Duration = Duration::from_millis(20);

/// Connections accepted so far (each answer names its connection).
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = connection(stream).await;
        });
    }
}

pub async fn run(address: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(address).await?;
    eprintln!("echo upstream listening on {}", listener.local_addr()?);
    serve(listener).await
}

async fn connection(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let id = CONNECTIONS.fetch_add(1, Ordering::Relaxed) + 1;
    let mut buffer = Vec::with_capacity(4096);
    // Set by `/keep-alive/{s}`: the idle time after which the connection is closed.
    let mut idle_limit: Option<Duration> = None;
    loop {
        let head_end = loop {
            if let Some(position) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break position + 4;
            }
            if buffer.len() > MAX_HEAD {
                return Ok(());
            }
            let mut chunk = [0u8; 8192];
            let read = match idle_limit.filter(|_| buffer.is_empty()) {
                Some(limit) => match tokio::time::timeout(limit, stream.read(&mut chunk)).await {
                    Ok(read) => read?,
                    Err(_) => return Ok(()),
                },
                None => stream.read(&mut chunk).await?,
            };
            if read == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..read]);
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        buffer.drain(..head_end);
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split(' ');
        let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        let headers: Vec<(String, String)> = lines
            .filter(|line| !line.is_empty())
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());

        if header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
            let key = header("sec-websocket-key").unwrap_or_default();
            let accept = websocket_accept(key);
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            stream.write_all(response.as_bytes()).await?;
            stream.write_all(&buffer).await?;
            let (mut reader, mut writer) = stream.split();
            tokio::io::copy(&mut reader, &mut writer).await?;
            return Ok(());
        }

        if target == "/truncated" {
            let partial = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\npartia\r\n";
            stream.write_all(partial.as_bytes()).await?;
            return Ok(());
        }
        if target == "/head-only" {
            // A head with a length, then nothing: the upstream died before its body.
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")
                .await?;
            return Ok(());
        }
        if target == "/too-large" {
            // Refuses the body without reading it, as servers with an upload limit do.
            let refusal = "HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
            stream.write_all(refusal.as_bytes()).await?;
            return Ok(());
        }
        let chunked = header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let length = if chunked {
            let Some(length) = read_chunked(&mut stream, &mut buffer).await? else {
                return Ok(());
            };
            length
        } else {
            let length: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
                .min(MAX_BODY);
            while buffer.len() < length {
                if !read_more(&mut stream, &mut buffer).await? {
                    return Ok(());
                }
            }
            buffer.drain(..length);
            length
        };
        if let Some(delay) = target.strip_prefix("/slow/").and_then(|ms| ms.parse::<u64>().ok()) {
            tokio::time::sleep(std::time::Duration::from_millis(delay.min(60_000))).await;
        }

        if target == "/unframed" {
            stream.write_all(b"HTTP/1.1 200 OK\r\n\r\nhello, world").await?;
            return Ok(());
        }
        if target == "/overrun" {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await?;
            // Behind the answer, once the edge has taken it (and pooled the connection).
            tokio::time::sleep(OVERRUN_DELAY).await;
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled")
                .await?;
            continue;
        }
        if target == "/both-framings" {
            let answer = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 100\r\n\r\n\
                          2\r\nok\r\n0\r\n\r\n";
            stream.write_all(answer.as_bytes()).await?;
            continue;
        }
        if target == "/chunked" {
            let answer = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n7\r\nhello, \r\n5\r\nworld\r\n0\r\n\r\n";
            stream.write_all(answer.as_bytes()).await?;
            continue;
        }
        if let Some(count) = target.strip_prefix("/bytes/").and_then(|n| n.parse::<u64>().ok()) {
            let count = count.min(1 << 30);
            let head =
                format!("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {count}\r\n\r\n");
            stream.write_all(head.as_bytes()).await?;
            let zeros = [0u8; 64 * 1024];
            let mut left = count;
            while left > 0 {
                let now = left.min(zeros.len() as u64) as usize;
                stream.write_all(&zeros[..now]).await?;
                left -= now as u64;
            }
            continue;
        }
        let mut grouped = serde_json::Map::new();
        for (name, value) in &headers {
            match grouped.get_mut(name) {
                Some(serde_json::Value::Array(values)) => values.push(value.clone().into()),
                _ => {
                    grouped.insert(name.clone(), serde_json::Value::Array(vec![value.clone().into()]));
                }
            }
        }
        let body = serde_json::json!({
            "connection": id,
            "method": method,
            "path": target,
            "body_length": length,
            "headers": grouped,
        })
        .to_string();
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let silent_close = target == "/close";
        let mut extra = String::new();
        if close {
            extra.push_str("connection: close\r\n");
        } else if let Some(seconds) = target.strip_prefix("/keep-alive/").and_then(|s| s.parse().ok()) {
            idle_limit = Some(Duration::from_secs(seconds));
            extra.push_str(&format!("connection: keep-alive\r\nkeep-alive: timeout={seconds}\r\n"));
        } else if target == "/hop-by-hop" {
            extra.push_str(
                "connection: keep-alive, x-upstream-hop\r\nx-upstream-hop: for-the-edge\r\n\
                 keep-alive: timeout=30\r\nproxy-connection: keep-alive\r\nupgrade: h2c\r\n\
                 x-upstream-kept: yes\r\n",
            );
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
            body.len(),
        );
        stream.write_all(response.as_bytes()).await?;
        if close || silent_close {
            return Ok(());
        }
    }
}

/// Appends what the socket has to `buffer`; `false` at end of stream.
async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut chunk = [0u8; 8192];
    let read = stream.read(&mut chunk).await?;
    buffer.extend_from_slice(&chunk[..read]);
    Ok(read > 0)
}

/// Reads a chunked body (RFC 9112 §7.1) off the front of `buffer`, reading more as needed, and
/// returns its decoded length; `None` when the stream ends early or the framing is broken.
async fn read_chunked(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
    let mut total = 0;
    loop {
        let line_end = loop {
            if let Some(position) = buffer.windows(2).position(|w| w == b"\r\n") {
                break position;
            }
            if buffer.len() > MAX_HEAD || !read_more(stream, buffer).await? {
                return Ok(None);
            }
        };
        let line = String::from_utf8_lossy(&buffer[..line_end]).into_owned();
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return Ok(None);
        };
        if total + size > MAX_BODY {
            return Ok(None);
        }
        buffer.drain(..line_end + 2);
        if size == 0 {
            // No trailers expected: the empty line ends the body.
            while buffer.len() < 2 {
                if !read_more(stream, buffer).await? {
                    return Ok(None);
                }
            }
            buffer.drain(..2);
            return Ok(Some(total));
        }
        while buffer.len() < size + 2 {
            if !read_more(stream, buffer).await? {
                return Ok(None);
            }
        }
        buffer.drain(..size + 2);
        total += size;
    }
}

/// RFC 6455 §4.2.2: base64(SHA-1(key + GUID)).
fn websocket_accept(key: &str) -> String {
    use base64::Engine;
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_accept_matches_rfc_example() {
        assert_eq!(
            websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
