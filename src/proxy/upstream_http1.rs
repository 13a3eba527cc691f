//! The edge's HTTP/1.1 client for upstream connections.
//!
//! Contract: one [`Http1Connection`] carries one request/response exchange over a pooled or new
//! upstream stream, then either goes back to the pool ([`Http1Connection::into_reusable`]) or
//! closes. The request head comes ready-written ([`headers::UpstreamRequest`]); the body is sent
//! as framed there (a length is never exceeded, chunks are re-chunked). Responses are parsed
//! strictly, because a pooled connection read out of step would hand one user's response to the
//! next request:
//! - heads are bounded ([`MAX_RESPONSE_HEAD_BYTES`], [`MAX_RESPONSE_FIELDS`]); 1xx heads are
//!   passed on and another head follows; a `101` is accepted only for a WebSocket request and
//!   turns both directions into raw bytes;
//! - the body length follows RFC 9112 §6.3: none for `HEAD`, 1xx, 204 and 304; chunked when
//!   `Transfer-Encoding` ends in `chunked`; else by `Content-Length`, whose copies must agree;
//!   else until the upstream closes;
//! - chunk lines end in CRLF, sizes are at most 16 hex digits, extensions hold no control
//!   characters, trailer fields are read (bounded) and dropped;
//! - a connection is reusable only when the response said so (HTTP/1.1 without `close`, HTTP/1.0
//!   with `keep-alive`), it was framed by length or chunks, the request body went out whole and
//!   nothing beyond the response was received.
//!
//! A body is read in pieces of up to [`MAX_BODY_READ_BYTES`] (a length's worth, or growing while
//! reads fill their room), each passed on as one write. Every read is bounded by the upstream read
//! timeout and every write by the write timeout.
//! Reading is cancel-safe (the request loop selects between it and the client's body): state
//! changes only after a read completed. This replaced pingora-core's HTTP/1 client session, whose
//! per-request header maps with case maps, response clone and second parse of the framing fields
//! were a fifth of the edge's instructions per request (see benches/README.md).

use std::mem::MaybeUninit;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};
use pingora_core::protocols::Stream;
use pingora_core::protocols::http::HttpTask;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::bounded;
use super::deadline::Deadline;
use super::headers::{RequestBody, UpstreamRequest};

/// Largest response head (status line and fields) accepted from an upstream: eight times
/// nginx's default (`proxy_buffer_size`); pingora's client allowed 1 MiB, which lets one
/// response hold a megabyte per connection before its body.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;

/// Most fields one response head may carry (as many as pingora's client allowed).
pub const MAX_RESPONSE_FIELDS: usize = 256;

/// Longest chunk-size line, extensions included.
pub const MAX_CHUNK_LINE_BYTES: usize = 4 * 1024;

/// Most bytes of trailer fields after the last chunk (they are read and dropped).
pub const MAX_TRAILER_BYTES: usize = 64 * 1024;

/// Room made in the read buffer before a read of a response head, and the least made before a
/// read of its body.
const READ_RESERVE: usize = 8 * 1024;

/// Most room made for one read of a response body. A body known to be longer (or one whose
/// reads keep filling the room) is read in pieces up to this size, so that each goes to the
/// client as one write of several TLS records: read 8 KiB at a time, a 64 KiB body took nine
/// reads and nine writes, against nginx's five writes of 16 KiB records. nginx holds as much per
/// proxied response (`proxy_buffers 8 8k`); the room is kept only while a response is read.
pub const MAX_BODY_READ_BYTES: usize = 64 * 1024;

/// Room for the edge's own fields (request id, cookies) and pingora's (`Date`, `Connection`).
const EDGE_RESPONSE_FIELDS: usize = 4;

/// Where the response is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// A head is expected (the first, or the next after a 1xx).
    Head,
    /// This many body bytes are still to come.
    Length(u64),
    Chunked(Chunk),
    /// The body ends when the upstream closes.
    UntilClose,
    /// After a `101`: raw bytes until the upstream closes.
    Upgraded,
    Done,
}

/// Where the chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    /// This many bytes of the current chunk's data are still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines after the last chunk; the count of their bytes so far.
    Trailers(usize),
}

/// Where the request body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writing {
    Length(u64),
    Chunked,
    /// After a `101`: raw bytes.
    Raw,
    Done,
}

/// One exchange on one upstream connection.
pub struct Http1Connection {
    stream: Stream,
    buffer: BytesMut,
    reading: Reading,
    writing: Writing,
    read_timeout: Option<Duration>,
    /// Bounds the reads: one timer for the connection's life.
    deadline: Deadline,
    /// Room for the next read of a body whose length is not known ahead (chunked, until close,
    /// upgraded): doubled, up to [`MAX_BODY_READ_BYTES`], each time a read fills it.
    body_room: usize,
    write_timeout: Option<Duration>,
    head_method: bool,
    upgrade_requested: bool,
    /// The final response allows another request on this connection.
    keepalive: bool,
}

fn invalid(why: &'static str) -> Box<Error> {
    Error::explain(ErrorType::InvalidHTTPHeader, why)
}

fn closed(why: &'static str) -> Box<Error> {
    Error::explain(ErrorType::ConnectionClosed, why)
}

impl Http1Connection {
    pub fn new(stream: Stream, read_timeout: Option<Duration>, write_timeout: Option<Duration>) -> Self {
        Http1Connection {
            stream,
            buffer: BytesMut::new(),
            reading: Reading::Head,
            writing: Writing::Done,
            read_timeout,
            deadline: Deadline::default(),
            body_room: READ_RESERVE,
            write_timeout,
            head_method: false,
            upgrade_requested: false,
            keepalive: false,
        }
    }

    /// Sends the request head; the body (if any) follows through [`Self::write_body`].
    pub async fn send_head(&mut self, request: &UpstreamRequest) -> Result<()> {
        self.head_method = request.head_method;
        self.upgrade_requested = request.upgrade;
        self.writing = match request.body {
            RequestBody::Empty | RequestBody::Length(0) => Writing::Done,
            RequestBody::Length(length) => Writing::Length(length),
            RequestBody::Chunked => Writing::Chunked,
        };
        self.write(&[&request.head]).await
    }

    /// Sends part of the request body, framed as the head announced.
    pub async fn write_body(&mut self, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        match self.writing {
            Writing::Length(remaining) => {
                let Some(left) = remaining.checked_sub(data.len() as u64) else {
                    return Err(invalid("request body longer than its Content-Length"));
                };
                self.writing = if left == 0 {
                    Writing::Done
                } else {
                    Writing::Length(left)
                };
                self.write(&[data]).await
            }
            Writing::Chunked => {
                // One buffer, so one write (one TLS record): upstream streams are unbuffered.
                let mut size = [0u8; 18];
                let line = chunk_size_line(data.len(), &mut size);
                let mut chunk = Vec::with_capacity(line.len() + data.len() + 2);
                chunk.extend_from_slice(line);
                chunk.extend_from_slice(data);
                chunk.extend_from_slice(b"\r\n");
                self.write(&[&chunk]).await
            }
            Writing::Raw => self.write(&[data]).await,
            Writing::Done => Err(invalid("request body after its end")),
        }
    }

    /// Ends the request body (the last chunk, for a chunked one).
    pub async fn finish_body(&mut self) -> Result<()> {
        match self.writing {
            Writing::Chunked => {
                self.writing = Writing::Done;
                self.write(&[b"0\r\n\r\n"]).await
            }
            Writing::Length(_) => Err(invalid("request body shorter than its Content-Length")),
            Writing::Raw | Writing::Done => Ok(()),
        }
    }

    /// Writes `parts` and flushes them, within the write timeout.
    async fn write(&mut self, parts: &[&[u8]]) -> Result<()> {
        let stream = &mut self.stream;
        let write = async {
            for part in parts {
                stream.write_all(part).await?;
            }
            stream.flush().await
        };
        let written = match self.write_timeout {
            Some(limit) => bounded(limit, write)
                .await
                .map_err(|_| Error::explain(ErrorType::WriteTimedout, "writing to the upstream"))?,
            None => write.await,
        };
        written.map_err(|error| Error::because(ErrorType::WriteError, "writing to the upstream", error))
    }

    /// Reads more of the response into the buffer, within the read timeout. `Ok(0)`: the
    /// upstream closed.
    async fn fill(&mut self) -> Result<usize> {
        let room = self.room();
        if self.buffer.capacity() - self.buffer.len() < room / 2 {
            self.buffer.reserve(room);
        }
        let spare = self.buffer.capacity() - self.buffer.len();
        let read = self.stream.read_buf(&mut self.buffer);
        let result = match self.read_timeout {
            Some(limit) => self
                .deadline
                .bound(limit, read)
                .await
                .map_err(|_| Error::explain(ErrorType::ReadTimedout, "reading from the upstream"))?,
            None => read.await,
        };
        let read = result.map_err(|error| Error::because(ErrorType::ReadError, "reading from the upstream", error))?;
        if read == spare && !matches!(self.reading, Reading::Head | Reading::Length(_)) {
            self.body_room = (self.body_room * 2).min(MAX_BODY_READ_BYTES);
        }
        Ok(read)
    }

    /// How much room the next read should have: a head's, a length's worth of body (between
    /// [`READ_RESERVE`] and [`MAX_BODY_READ_BYTES`]), or what reads of an unknown length earned.
    fn room(&self) -> usize {
        match self.reading {
            Reading::Head | Reading::Done => READ_RESERVE,
            Reading::Length(remaining) => usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .clamp(READ_RESERVE, MAX_BODY_READ_BYTES),
            Reading::Chunked(_) | Reading::UntilClose | Reading::Upgraded => self.body_room,
        }
    }

    /// The next piece of the response: a head (1xx heads come first), body data, the end.
    /// Cancel-safe.
    pub async fn read_task(&mut self) -> Result<HttpTask> {
        loop {
            match self.reading {
                Reading::Head => {
                    if !self.buffer.is_empty()
                        && let Some(response) = self.parse_head()?
                    {
                        return Ok(HttpTask::Header(response, self.reading == Reading::Done));
                    }
                    if self.fill().await? == 0 {
                        return Err(closed("the upstream closed before a response head"));
                    }
                }
                Reading::Length(remaining) => {
                    if self.buffer.is_empty() && self.fill().await? == 0 {
                        return Err(closed("the upstream closed before the end of the Content-Length"));
                    }
                    let take = remaining.min(self.buffer.len() as u64);
                    // `take` is at most the buffer's length, a usize.
                    let data = self.buffer.split_to(take as usize).freeze();
                    let left = remaining - take;
                    self.reading = if left == 0 {
                        Reading::Done
                    } else {
                        Reading::Length(left)
                    };
                    return Ok(HttpTask::Body(Some(data), left == 0));
                }
                Reading::Chunked(_) => {
                    if self.skip_chunk_framing()? {
                        return Ok(HttpTask::Body(None, true));
                    }
                    if let Reading::Chunked(Chunk::Data(remaining)) = self.reading
                        && !self.buffer.is_empty()
                    {
                        let take = remaining.min(self.buffer.len() as u64);
                        let data = self.buffer.split_to(take as usize).freeze();
                        let left = remaining - take;
                        self.reading = Reading::Chunked(if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) });
                        // The end of the body is often in the same read: sent with the data.
                        let end = self.skip_chunk_framing()?;
                        return Ok(HttpTask::Body(Some(data), end));
                    }
                    if self.fill().await? == 0 {
                        return Err(closed("the upstream closed inside a chunked body"));
                    }
                }
                Reading::UntilClose | Reading::Upgraded => {
                    let upgraded = self.reading == Reading::Upgraded;
                    if self.buffer.is_empty() && self.fill().await? == 0 {
                        self.reading = Reading::Done;
                        return Ok(if upgraded {
                            HttpTask::UpgradedBody(None, true)
                        } else {
                            HttpTask::Body(None, true)
                        });
                    }
                    let data = self.buffer.split().freeze();
                    return Ok(if upgraded {
                        HttpTask::UpgradedBody(Some(data), false)
                    } else {
                        HttpTask::Body(Some(data), false)
                    });
                }
                Reading::Done => return Ok(HttpTask::Done),
            }
        }
    }

    /// Parses a response head from the buffer: `None` when it is not complete yet.
    fn parse_head(&mut self) -> Result<Option<Box<ResponseHeader>>> {
        /// Where a field's name and value are in the buffer.
        struct Span {
            name: (usize, usize),
            value: (usize, usize),
        }
        // Left uninitialised: zeroing room for every possible field costs more than the parse.
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_FIELDS];
        let mut response = httparse::Response::new(&mut []);
        // `Name : value` is accepted and cleaned (RFC 9112 §5.1 lets a proxy remove the space);
        // obsolete line folding is refused with a 502, which §5.2 allows.
        let parsed = httparse::ParserConfig::default()
            .allow_spaces_after_header_name_in_responses(true)
            .parse_response_with_uninit_headers(&mut response, &self.buffer, &mut fields);
        let length = match parsed {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) if self.buffer.len() > MAX_RESPONSE_HEAD_BYTES => {
                return Err(invalid("response head too large"));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(invalid("too many response header fields")),
            Err(_) => return Err(invalid("malformed response head")),
        };
        if length > MAX_RESPONSE_HEAD_BYTES {
            return Err(invalid("response head too large"));
        }
        let (Some(code), Some(minor)) = (response.code, response.version) else {
            return Err(invalid("malformed response head"));
        };
        let status = StatusCode::from_u16(code).map_err(|_| invalid("invalid response status"))?;
        let version = if minor == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
        let base = self.buffer.as_ptr() as usize;
        let spans: Vec<Span> = response
            .headers
            .iter()
            .map(|field| Span {
                name: (field.name.as_ptr() as usize - base, field.name.len()),
                value: (field.value.as_ptr() as usize - base, field.value.len()),
            })
            .collect();
        let head = self.buffer.split_to(length).freeze();
        let mut headers = HeaderMap::with_capacity(spans.len() + EDGE_RESPONSE_FIELDS);
        for span in &spans {
            let (start, length) = span.name;
            let name =
                HeaderName::from_bytes(&head[start..start + length]).map_err(|_| invalid("invalid field name"))?;
            let (start, length) = span.value;
            let value = HeaderValue::from_maybe_shared(head.slice(start..start + length))
                .map_err(|_| invalid("invalid field value"))?;
            headers
                .try_append(name, value)
                .map_err(|_| invalid("too many response header fields"))?;
        }
        let mut parts = http::Response::new(()).into_parts().0;
        parts.status = status;
        parts.version = version;
        parts.headers = headers;
        let mut response = Box::new(ResponseHeader::from(parts));
        self.reading = self.framing(&mut response)?;
        Ok(Some(response))
    }

    /// How the body of `response` is delimited (RFC 9112 §6.3), and whether the connection stays
    /// open after it. A final response's `Content-Length` is checked even where it delimits
    /// nothing (HEAD, 204, 304: it is passed on), and removed where `Transfer-Encoding`
    /// overrides it (RFC 9112 §6.3: an intermediary must not forward both).
    fn framing(&mut self, response: &mut ResponseHeader) -> Result<Reading> {
        let status = response.status;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            if !self.upgrade_requested || response.version != Version::HTTP_11 {
                return Err(invalid("101 without an HTTP/1.1 upgrade request"));
            }
            // Both directions carry raw bytes until one side closes.
            self.writing = Writing::Raw;
            self.keepalive = false;
            return Ok(Reading::Upgraded);
        }
        if status.is_informational() {
            return Ok(Reading::Head);
        }
        let fields = &response.headers;
        let connection = |option: &[u8]| {
            fields
                .get_all(header::CONNECTION)
                .iter()
                .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(option))
        };
        // `close` wins over anything else listed.
        self.keepalive = !connection(b"close") && (response.version == Version::HTTP_11 || connection(b"keep-alive"));
        let bodiless = self.head_method || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        let codings = fields.get_all(header::TRANSFER_ENCODING).iter().next_back();
        let Some(codings) = codings else {
            let mut length: Option<u64> = None;
            for value in fields.get_all(header::CONTENT_LENGTH) {
                for element in value.as_bytes().split(|&byte| byte == b',') {
                    let parsed =
                        parse_decimal(element.trim_ascii()).ok_or_else(|| invalid("invalid Content-Length"))?;
                    if length.is_some_and(|known| known != parsed) {
                        return Err(invalid("conflicting Content-Length values"));
                    }
                    length = Some(parsed);
                }
            }
            return Ok(match length {
                _ if bodiless => Reading::Done,
                Some(0) => Reading::Done,
                Some(length) => Reading::Length(length),
                None => {
                    self.keepalive = false;
                    Reading::UntilClose
                }
            });
        };
        let chunked = last_coding_is_chunked(codings.as_bytes());
        // Both framings, or chunked in HTTP/1.0, is how responses get smuggled (RFC 9112 §6.1,
        // §6.3): read by the chunks, but never trusted with another request.
        if fields.contains_key(header::CONTENT_LENGTH) {
            self.keepalive = false;
            response.remove_header(&header::CONTENT_LENGTH);
        }
        if response.version == Version::HTTP_10 {
            self.keepalive = false;
        }
        Ok(if bodiless {
            Reading::Done
        } else if chunked {
            Reading::Chunked(Chunk::Size)
        } else {
            self.keepalive = false;
            Reading::UntilClose
        })
    }

    /// Steps the chunked decoder over buffered control lines (sizes, chunk ends, trailers).
    /// Stops at chunk data, where more input is needed, or at the end of the body (`true`).
    fn skip_chunk_framing(&mut self) -> Result<bool> {
        loop {
            let Reading::Chunked(chunk) = self.reading else {
                return Ok(self.reading == Reading::Done);
            };
            match chunk {
                Chunk::Data(_) => return Ok(false),
                Chunk::Size => {
                    let Some(end) = line_end(&self.buffer, MAX_CHUNK_LINE_BYTES)? else {
                        return Ok(false);
                    };
                    let size = parse_chunk_size(&self.buffer[..end - 1])?;
                    self.buffer.advance(end + 1);
                    self.reading = Reading::Chunked(if size == 0 {
                        Chunk::Trailers(0)
                    } else {
                        Chunk::Data(size)
                    });
                }
                Chunk::DataEnd => {
                    if self.buffer.len() < 2 {
                        return Ok(false);
                    }
                    if &self.buffer[..2] != b"\r\n" {
                        return Err(invalid("chunk data longer than its size"));
                    }
                    self.buffer.advance(2);
                    self.reading = Reading::Chunked(Chunk::Size);
                }
                Chunk::Trailers(seen) => {
                    let Some(end) = line_end(&self.buffer, MAX_TRAILER_BYTES - seen)? else {
                        return Ok(false);
                    };
                    self.buffer.advance(end + 1);
                    if end == 1 {
                        self.reading = Reading::Done;
                        return Ok(true);
                    }
                    self.reading = Reading::Chunked(Chunk::Trailers(seen + end + 1));
                }
            }
        }
    }

    /// Bounds the reads with `deadline` instead of a timer of this connection's own: the timer
    /// of the client connection it serves, which outlives a pooled upstream connection's turn
    /// (one timer per client connection rather than one made per request).
    pub fn use_deadline(&mut self, deadline: Deadline) {
        self.deadline = deadline;
    }

    /// The timer back, for the client connection's next exchange.
    pub fn take_deadline(&mut self) -> Deadline {
        std::mem::take(&mut self.deadline)
    }

    /// The stream, when the exchange ended cleanly and the upstream keeps the connection open:
    /// see the module contract. Otherwise the connection, boxed (the rare case pays for it).
    pub fn into_reusable(mut self) -> std::result::Result<Stream, Box<Self>> {
        let reusable = self.keepalive
            && self.reading == Reading::Done
            && self.writing == Writing::Done
            && self.buffer.is_empty()
            && !self.tls_holds_more();
        if reusable { Ok(self.stream) } else { Err(Box::new(self)) }
    }

    /// Over TLS, bytes beyond the response may sit decrypted (or in a partial record) inside the
    /// TLS layer, where the pool's peek at the socket cannot see them: one read that must not
    /// find anything (no data, no close) tells. Plain TCP is left to that peek.
    fn tls_holds_more(&mut self) -> bool {
        if self.stream.get_ssl_digest().is_none() {
            return false;
        }
        let mut byte = [0u8; 1];
        let mut probe = tokio::io::ReadBuf::new(&mut byte);
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        let polled = tokio::io::AsyncRead::poll_read(std::pin::Pin::new(&mut self.stream), &mut context, &mut probe);
        !polled.is_pending()
    }

    /// Closes the connection (a TLS close_notify first), within the write timeout.
    pub async fn shutdown(mut self) {
        let limit = self.write_timeout.unwrap_or(Duration::from_secs(1));
        let _ = bounded(limit, self.stream.shutdown()).await;
    }
}

/// The index of the `\n` ending the line at the start of `buffer`, which must be preceded by
/// `\r`; `None` when no line end is buffered yet. Lines longer than `limit` are refused.
fn line_end(buffer: &[u8], limit: usize) -> Result<Option<usize>> {
    let window = &buffer[..buffer.len().min(limit)];
    match memchr::memchr(b'\n', window) {
        Some(0) => Err(invalid("bare LF in chunked framing")),
        Some(end) if window[end - 1] != b'\r' => Err(invalid("bare LF in chunked framing")),
        Some(end) => Ok(Some(end)),
        None if buffer.len() >= limit => Err(invalid("chunk line or trailers too long")),
        None => Ok(None),
    }
}

/// Whether the last coding a `Transfer-Encoding` value lists is `chunked` (empty list elements
/// do not count, RFC 9110 §5.6.1).
pub fn last_coding_is_chunked(codings: &[u8]) -> bool {
    super::headers::list_items(codings)
        .rfind(|coding| !coding.is_empty())
        .is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked"))
}

/// A chunk-size line without its CRLF: 1 to 16 hex digits, then optionally whitespace and
/// `;`-led extensions (ignored) free of control characters.
fn parse_chunk_size(line: &[u8]) -> Result<u64> {
    let digits = line.iter().take_while(|byte| byte.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(invalid("invalid chunk size"));
    }
    let mut size: u64 = 0;
    for &byte in &line[..digits] {
        // A hex digit, checked above; 16 digits fit in a u64.
        let digit = char::from(byte).to_digit(16).unwrap_or_default();
        size = (size << 4) | u64::from(digit);
    }
    let rest = &line[digits..];
    let extensions = rest.trim_ascii_start();
    if !extensions.is_empty() && extensions[0] != b';' {
        return Err(invalid("invalid chunk size"));
    }
    if rest.iter().any(|&byte| (byte < 0x20 && byte != b'\t') || byte == 0x7f) {
        return Err(invalid("control character in a chunk extension"));
    }
    Ok(size)
}

/// ASCII digits only (no sign, no spaces), at most 19 of them.
fn parse_decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        text.iter()
            .fold(0, |value, &digit| value * 10 + u64::from(digit - b'0')),
    )
}

/// `{size:x}\r\n` written into `buffer`.
pub(super) fn chunk_size_line(size: usize, buffer: &mut [u8; 18]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - size.leading_zeros()).div_ceil(4).max(1) as usize;
    for (index, slot) in buffer[..digits].iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - index);
        *slot = HEX[(size >> shift) & 0xf];
    }
    buffer[digits] = b'\r';
    buffer[digits + 1] = b'\n';
    &buffer[..digits + 2]
}

#[cfg(test)]
mod tests;
