//! The edge's own HTTP/1.1 server side, for the requests that need nothing else: bodiless.
//!
//! Contract: [`Http1Server`] owns a client connection between requests. It reads a request head
//! and takes it only when it is plainly a bodiless HTTP/1.1 request in origin form, with exactly
//! one `Host`, none of `Content-Length`, `Transfer-Encoding`, `Upgrade` or `Expect` (the fields
//! that change framing or the connection's fate) and `Connection` naming at most `keep-alive` and
//! `close`. Everything else, a parse
//! error included, is handed to pingora-core's HTTP/1 session together with the bytes read so far
//! ([`Read::Elsewhere`]): request smuggling defences, bodies, `Expect`, upgrades, HTTP/1.0 and
//! the error answers to malformed requests stay in one place, pingora's, and the edge's path is
//! never more permissive than pingora's.
//!
//! Responses are written with their framing from the head: none for `HEAD`, 204 and 304; the
//! `Content-Length` when there is one (never more bytes than it says, and a body cut short
//! closes the connection); else chunked when `Transfer-Encoding` says so; else until close. The
//! edge writes `Date` and `Connection` itself, as pingora does. A length-framed head waits for
//! the first body bytes and goes out with them in one write (one TLS record); streamed heads and
//! every body write are flushed at once. Every write is bounded by the send timeout.
//!
//! Reads: the wait for a request is bounded by the keep-alive timeout, the rest of its head by
//! the request header timeout (one timer in the common case, where the head arrives in one read).
//! Pipelined bytes after a head stay buffered for the next request. This replaced pingora's
//! session for these requests, whose header maps with case maps, per-request session and buffer
//! allocations, second serialisation and two TLS records per response were a fifth of the
//! edge's instructions per keep-alive request (see benches/README.md).

use std::mem::MaybeUninit;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use pingora_core::protocols::Stream;
use pingora_core::protocols::tls::SslDigest;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::bounded;
use super::deadline::Deadline;

/// Largest request head taken on the edge's path; a longer one goes to pingora (whose limit
/// applies). Tokens and cookies fit with room.
pub const MAX_FAST_HEAD_BYTES: usize = 16 * 1024;

/// Most fields a request head may carry on the edge's path; more go to pingora.
pub const MAX_FAST_FIELDS: usize = 64;

/// The read buffer made when a request begins (pingora allocated as much per request).
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// What the wait for the next request reads, into the wait itself: an idle connection holds no
/// buffer (nginx lets its buffers go the same way); the read buffer is made when bytes arrive.
const FIRST_READ_BYTES: usize = 16;

/// Room made for a response head when the first one is written.
const HEAD_BUFFER_BYTES: usize = 1024;

/// A response buffer larger than this is let go while a connection waits for its next request;
/// a smaller one is kept (making it per request costs more than it holds).
const IDLE_BUFFER_BYTES: usize = 2 * 1024;

/// A body write of at most this many bytes is copied behind the pending head or chunk line and
/// sent in the same write; a larger one is written on its own.
const COALESCE_BYTES: usize = 16 * 1024;

/// What waiting for the next request gave.
pub enum Read {
    /// A request on the edge's path: see [`Http1Server::request`].
    Request,
    /// A request for pingora's session: the connection, with the bytes read of it.
    Elsewhere,
    /// The client closed, went quiet past a timeout, or the read failed.
    End,
}

/// How the current response's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// No response head written yet.
    NotStarted,
    /// So many bytes still to go.
    Length(u64),
    Chunked,
    UntilClose,
    /// Complete (or bodiless).
    Done,
}

/// A client connection served by the edge's own HTTP/1.1 code.
pub struct Http1Server {
    stream: Stream,
    /// Bytes read and not yet taken: the start of the next request.
    read: BytesMut,
    /// Response bytes not yet written (a head waiting for its body).
    out: Vec<u8>,
    request: Option<RequestHeader>,
    /// The connection may carry another request after this one.
    keepalive: bool,
    body: Body,
    status: Option<StatusCode>,
    body_bytes: usize,
    /// The final head waits in `out` for the first body bytes: nothing of the response has
    /// reached the client, so a failure can still be answered with an error response.
    head_pending: bool,
    /// A write failed or timed out: nothing more is written, not even a TLS close.
    broken: bool,
    closed: bool,
    /// When the first bytes of a head that came in pieces arrived.
    head_started: Option<Instant>,
    /// Bounds the waits for requests: one timer for the connection's life.
    deadline: Deadline,
    /// Bounds the waits for upstream responses, lent to each exchange (see
    /// [`Http1Connection::use_deadline`](super::upstream_http1::Http1Connection::use_deadline)).
    pub(super) upstream_deadline: Deadline,
    send_timeout: Duration,
    ssl: Option<Arc<SslDigest>>,
    client: Option<pingora_core::protocols::l4::socket::SocketAddr>,
}

/// How the body of a final response to the client is delimited (RFC 9112 §6.3).
fn response_body(head_request: bool, response: &ResponseHeader) -> Body {
    let status = response.status;
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Body::Done
    } else if let Some(codings) = response.headers.get_all(header::TRANSFER_ENCODING).iter().next_back() {
        if super::upstream_http1::last_coding_is_chunked(codings.as_bytes()) {
            Body::Chunked
        } else {
            Body::UntilClose
        }
    } else if let Some(length) = super::headers::content_length(&response.headers) {
        Body::Length(length)
    } else {
        Body::UntilClose
    }
}

/// A final head whose body has a length and is not empty waits for the body's first bytes, on
/// every path: if the upstream dies in between, nothing of the response reached the client and an
/// error answer still can. Heads of streamed bodies (chunked, until close) go out at once.
pub fn waits_for_body(head_request: bool, response: &ResponseHeader) -> bool {
    matches!(response_body(head_request, response), Body::Length(length) if length > 0)
}

/// Empty lines before a request line are ignored (RFC 9112 §2.2).
fn is_blank(byte: u8) -> bool {
    byte == b'\r' || byte == b'\n'
}

fn write_error(why: &'static str) -> Box<Error> {
    Error::explain(ErrorType::WriteError, why)
}

impl Http1Server {
    /// A connection and what was already read of its next request.
    pub fn new(stream: Stream, pipelined: Option<BytesMut>, send_timeout: Duration) -> Self {
        let ssl = stream.get_ssl_digest();
        let client = stream
            .get_socket_digest()
            .and_then(|digest| digest.peer_addr().cloned());
        let read = pipelined.unwrap_or_default();
        Http1Server {
            stream,
            read,
            out: Vec::new(),
            request: None,
            keepalive: false,
            body: Body::NotStarted,
            status: None,
            body_bytes: 0,
            head_pending: false,
            broken: false,
            closed: false,
            head_started: None,
            deadline: Deadline::default(),
            upstream_deadline: Deadline::default(),
            send_timeout,
            ssl,
            client,
        }
    }

    /// The connection and the unparsed bytes of its next request, for pingora's session.
    pub fn into_parts(self) -> (Stream, BytesMut) {
        (self.stream, self.read)
    }

    /// How long ago the first bytes of a head that came in pieces arrived (what of the header
    /// budget is spent), if it did.
    pub fn head_elapsed(&self) -> Option<Duration> {
        self.head_started.map(|started| started.elapsed())
    }

    /// Waits for the next request: at most `idle` for its first bytes, then at most `header` for
    /// the rest of its head.
    pub async fn read_request(&mut self, idle: Duration, header: Duration) -> Read {
        // The timer is lent to the waits, which borrow the rest of the connection (a cancelled
        // read drops it; the next wait makes another).
        let mut deadline = std::mem::take(&mut self.deadline);
        let read = self.next_request(&mut deadline, idle, header).await;
        self.deadline = deadline;
        read
    }

    async fn next_request(&mut self, deadline: &mut Deadline, idle: Duration, header: Duration) -> Read {
        self.request = None;
        self.status = None;
        self.body = Body::NotStarted;
        self.body_bytes = 0;
        self.head_pending = false;
        self.head_started = None;
        self.keepalive = false;
        self.skip_blank_lines();
        // Whether the wait below read all it could: the head goes on in the TLS layer.
        let mut head_goes_on = false;
        if self.read.is_empty() {
            // An idle connection holds no read buffer (see `FIRST_READ_BYTES`) and at most a
            // small response buffer.
            if self.out.capacity() > IDLE_BUFFER_BYTES {
                self.out = Vec::new();
            }
            self.read = BytesMut::new();
            // One idle budget, stray CRLFs included (they do not start a request).
            let wait = async {
                let mut first = [0; FIRST_READ_BYTES];
                loop {
                    let read = match self.stream.read(&mut first).await {
                        Ok(read) if read > 0 => &first[..read],
                        _ => return None,
                    };
                    let blank = read.iter().take_while(|&&byte| is_blank(byte)).count();
                    if blank < read.len() {
                        self.read.reserve(READ_BUFFER_BYTES);
                        self.read.extend_from_slice(&read[blank..]);
                        return Some(read.len() == FIRST_READ_BYTES);
                    }
                }
            };
            match deadline.bound(idle, wait).await {
                Ok(Some(full)) => head_goes_on = full,
                _ => return Read::End,
            }
        }
        // A head cut short by the wait's small read is not parsed before the rest is read.
        if !head_goes_on && let Some(read) = self.parse() {
            return read;
        }
        // The head came in pieces: one budget for the rest of it.
        self.head_started = Some(Instant::now());
        let rest = async {
            loop {
                match self.fill().await {
                    Ok(read) if read > 0 => {}
                    _ => return Read::End,
                }
                if let Some(read) = self.parse() {
                    return read;
                }
            }
        };
        deadline.bound(header, rest).await.unwrap_or(Read::End)
    }

    /// Empty lines before a request line are ignored (RFC 9112 §2.2): a CRLF sent after a body
    /// does not count as the start of the next request.
    fn skip_blank_lines(&mut self) {
        let blank = self.read.iter().take_while(|&&byte| is_blank(byte)).count();
        if blank > 0 {
            let _ = self.read.split_to(blank);
        }
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.read.capacity() - self.read.len() < READ_BUFFER_BYTES / 4 {
            // With bytes in it the buffer may grow (a long head); empty, it is reused in place.
            self.read.reserve(READ_BUFFER_BYTES);
        }
        self.stream.read_buf(&mut self.read).await
    }

    /// Takes a complete head from the read buffer when it is for the edge's path
    /// ([`Read::Request`]), or gives it to pingora ([`Read::Elsewhere`]); `None` while it is
    /// incomplete.
    fn parse(&mut self) -> Option<Read> {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FAST_FIELDS];
        let mut request = httparse::Request::new(&mut []);
        let length = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut request,
            &self.read,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) if self.read.len() < MAX_FAST_HEAD_BYTES => return None,
            // Too long, too many fields or malformed: pingora decides.
            _ => return Some(Read::Elsewhere),
        };
        let (Some(method), Some(path), Some(1)) = (request.method, request.path, request.version) else {
            return Some(Read::Elsewhere);
        };
        if !path.starts_with('/') {
            return Some(Read::Elsewhere);
        }
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            return Some(Read::Elsewhere);
        };
        let base = self.read.as_ptr() as usize;
        let path_start = path.as_ptr() as usize - base;
        let path_end = path_start + path.len();
        // Names, and where their values are in the buffer, so that the values can share it
        // once frozen.
        let mut taken = Vec::with_capacity(request.headers.len());
        let mut hosts = 0;
        let mut close = false;
        for field in request.headers.iter() {
            let Ok(name) = HeaderName::from_bytes(field.name.as_bytes()) else {
                return Some(Read::Elsewhere);
            };
            if name == header::CONTENT_LENGTH
                || name == header::TRANSFER_ENCODING
                || name == header::UPGRADE
                || name == header::EXPECT
            {
                return Some(Read::Elsewhere);
            }
            if name == header::CONNECTION {
                // `keep-alive` and `close` only (what browsers send); a field it nominates or
                // an upgrade goes to pingora.
                for option in super::headers::list_items(field.value) {
                    if option.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !option.is_empty() && !option.eq_ignore_ascii_case(b"keep-alive") {
                        return Some(Read::Elsewhere);
                    }
                }
            }
            if name == header::HOST {
                // pingora refuses userinfo in Host; so does the edge, through pingora.
                if field.value.contains(&b'@') {
                    return Some(Read::Elsewhere);
                }
                hosts += 1;
            }
            let start = field.value.as_ptr() as usize - base;
            taken.push((name, start, start + field.value.len()));
        }
        if hosts != 1 {
            return Some(Read::Elsewhere);
        }
        let head = self.read.split_to(length).freeze();
        let parts = Uri::from_maybe_shared(head.slice(path_start..path_end))
            .ok()
            .and_then(|uri| {
                let (mut parts, ()) = http::Request::new(()).into_parts();
                parts.method = method;
                parts.uri = uri;
                parts.version = http::Version::HTTP_11;
                parts.headers.reserve(taken.len());
                for (name, start, end) in taken {
                    // httparse admits exactly the bytes a header value may hold: this does not
                    // fail for a parsed head.
                    let value = HeaderValue::from_maybe_shared(head.slice(start..end)).ok()?;
                    parts.headers.append(name, value);
                }
                Some(parts)
            });
        let Some(parts) = parts else {
            // A target the URI type refuses: pingora answers it (every byte put back).
            let mut back = BytesMut::with_capacity(head.len() + self.read.len());
            back.extend_from_slice(&head);
            back.extend_from_slice(&self.read);
            self.read = back;
            return Some(Read::Elsewhere);
        };
        self.request = Some(RequestHeader::from(parts));
        self.keepalive = !close;
        Some(Read::Request)
    }

    /// The request being served. Only called after [`Read::Request`].
    pub fn request(&self) -> &RequestHeader {
        // Invariant: the request loop serves a request only after `read_request` returned
        // `Read::Request`, which stores it.
        self.request.as_ref().expect("a request was read")
    }

    pub fn ssl_digest(&self) -> Option<&Arc<SslDigest>> {
        self.ssl.as_ref()
    }

    pub fn client_addr(&self) -> Option<&pingora_core::protocols::l4::socket::SocketAddr> {
        self.client.as_ref()
    }

    pub fn set_keepalive(&mut self, keepalive: bool) {
        self.keepalive &= keepalive;
    }

    pub fn keepalive(&self) -> bool {
        self.keepalive
    }

    /// The final status written, if a response reached the client (a head still waiting for
    /// its body has not).
    pub fn status(&self) -> Option<StatusCode> {
        if self.head_pending { None } else { self.status }
    }

    pub fn body_bytes_sent(&self) -> usize {
        self.body_bytes
    }

    /// The connection may serve another request: the response was complete and framed.
    pub fn reusable(&self) -> bool {
        self.keepalive && self.body == Body::Done && self.out.is_empty()
    }

    /// Writes a response head. 1xx heads (not 101) go out at once and another head follows.
    pub async fn write_response_header(&mut self, response: &ResponseHeader) -> Result<()> {
        let status = response.status;
        if self.broken {
            return Err(write_error("the connection failed"));
        }
        if self.head_pending {
            // The response failed before anything of it went out: this head (an error answer)
            // replaces it.
            self.out.clear();
            self.head_pending = false;
            self.body = Body::NotStarted;
            self.status = None;
        }
        if self.body != Body::NotStarted {
            return Err(write_error("a second final response head"));
        }
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // The edge's path takes no upgrade requests.
            return Err(write_error("101 to a request that asked for no upgrade"));
        }
        if status.is_informational() {
            self.serialize_head(response, false);
            return self.send(&[], &[]).await;
        }
        let head_request = self
            .request
            .as_ref()
            .is_some_and(|request| request.method == Method::HEAD);
        let body = response_body(head_request, response);
        if body == Body::UntilClose {
            self.keepalive = false;
        }
        self.status = Some(status);
        self.body = if body == Body::Length(0) { Body::Done } else { body };
        self.serialize_head(response, true);
        match self.body {
            // Waits for the first body bytes, to go out with them (`waits_for_body`).
            Body::Length(_) => {
                self.head_pending = true;
                Ok(())
            }
            _ => self.send(&[], &[]).await,
        }
    }

    fn serialize_head(&mut self, response: &ResponseHeader, last: bool) {
        let out = &mut self.out;
        out.reserve(HEAD_BUFFER_BYTES);
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(response.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(response.get_reason_phrase().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in &response.headers {
            if last && (name == header::DATE || name == header::CONNECTION) {
                continue;
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if last {
            out.extend_from_slice(b"date: ");
            out.extend_from_slice(pingora_core::protocols::http::date::get_cached_date().as_bytes());
            out.extend_from_slice(if self.keepalive {
                b"\r\nconnection: keep-alive\r\n\r\n".as_slice()
            } else {
                b"\r\nconnection: close\r\n\r\n".as_slice()
            });
        } else {
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Writes body bytes; `end` finishes the body.
    pub async fn write_response_body(&mut self, data: &[u8], end: bool) -> Result<()> {
        match self.body {
            Body::NotStarted => return Err(write_error("a body before its head")),
            // HEAD, 204, 304: what the upstream sent for them is not the client's.
            Body::Done => {}
            Body::Length(_) if data.is_empty() => {}
            Body::Length(left) => {
                if data.len() as u64 > left {
                    self.keepalive = false;
                    return Err(write_error("a body longer than its Content-Length"));
                }
                let left = left - data.len() as u64;
                self.body = if left == 0 { Body::Done } else { Body::Length(left) };
                self.body_bytes += data.len();
                self.send(data, b"").await?;
            }
            Body::Chunked => {
                if !data.is_empty() {
                    let mut line = [0u8; 18];
                    let size = super::upstream_http1::chunk_size_line(data.len(), &mut line);
                    self.out.extend_from_slice(size);
                    self.body_bytes += data.len();
                    // The last chunk goes out with the last data.
                    let suffix: &[u8] = if end { b"\r\n0\r\n\r\n" } else { b"\r\n" };
                    if end {
                        self.body = Body::Done;
                    }
                    self.send(data, suffix).await?;
                }
            }
            Body::UntilClose => {
                self.body_bytes += data.len();
                self.send(data, b"").await?;
            }
        }
        if end {
            self.finish_body().await?;
        }
        Ok(())
    }

    /// Ends the body: the last chunk, or a check that the length was met.
    pub async fn finish_body(&mut self) -> Result<()> {
        match self.body {
            Body::Chunked => {
                self.out.extend_from_slice(b"0\r\n\r\n");
                self.body = Body::Done;
            }
            Body::Length(_) => {
                // Cut short: the client must not take what follows as the rest of it.
                self.keepalive = false;
                return Err(write_error("a body shorter than its Content-Length"));
            }
            Body::UntilClose => {
                self.body = Body::Done;
                self.keepalive = false;
            }
            Body::NotStarted | Body::Done => {}
        }
        if self.out.is_empty() {
            Ok(())
        } else {
            self.send(&[], &[]).await
        }
    }

    /// Writes the pending bytes, `data` and `suffix`, then flushes; within the send timeout.
    async fn send(&mut self, data: &[u8], suffix: &[u8]) -> Result<()> {
        if self.broken {
            return Err(write_error("the connection failed"));
        }
        self.head_pending = false;
        let write = async {
            if data.len() <= COALESCE_BYTES {
                self.out.extend_from_slice(data);
                self.out.extend_from_slice(suffix);
                self.stream.write_all(&self.out).await?;
            } else {
                self.stream.write_all(&self.out).await?;
                self.stream.write_all(data).await?;
                self.stream.write_all(suffix).await?;
            }
            self.out.clear();
            self.stream.flush().await
        };
        match bounded(self.send_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => {
                self.fail_writes();
                Error::e_because(ErrorType::WriteError, "writing the response", error)
            }
            Err(_) => {
                self.fail_writes();
                Error::e_explain(
                    ErrorType::WriteTimedout,
                    "the client took nothing within the send timeout",
                )
            }
        }
    }

    /// After a failed write part of `out` may be on the wire: nothing more goes out.
    fn fail_writes(&mut self) {
        self.keepalive = false;
        self.broken = true;
        self.out.clear();
    }

    /// A bodiless error answer (the client's request could not be served), as pingora's.
    pub async fn respond_error(&mut self, status: u16) -> Result<()> {
        let response = pingora_core::protocols::http::error_resp::gen_error_response(status);
        self.keepalive = false;
        self.write_response_header(&response).await?;
        self.finish_body().await
    }

    /// Closes the connection (a TLS close_notify first), within the send timeout.
    /// Once: a connection whose writes failed is dropped without one.
    pub async fn shutdown(&mut self) {
        if std::mem::replace(&mut self.closed, true) || self.broken {
            return;
        }
        let _ = bounded(self.send_timeout, self.stream.shutdown()).await;
    }
}

#[cfg(test)]
mod tests;
