//! The request loop, on pingora-core directly.
//!
//! One task per downstream connection (per stream on HTTP/2) runs every phase of a request in
//! order: read the header, admit (route, authorize, or answer), forward, log. Forwarding is one
//! duplex loop in that same task, without channels or helper tasks: request body bytes go up as
//! they arrive while the response is read, so an early upstream answer (a 413 before the body is
//! sent) is delivered, and a `101` turns the exchange into a two-way byte pipe (WebSocket).
//! Upstream connections come from the per-thread [`pool`]. This replaced pingora-proxy's generic
//! pipeline (modules, cache hooks, per-request channels, a locked pool with an idle-watch task per
//! connection), which cost more than half of the edge's CPU per request (see benches/README.md).
//!
//! Upstream requests are HTTP/1.1. What the client sent for this hop only is dropped (RFC 9110
//! §7.6.1: the hop-by-hop fields and every field `Connection` nominates, bounded); WebSocket is the
//! one upgrade passed through; HTTP/2 requests get `Host` from `:authority` (the header is built
//! by [`super::headers::upstream_request`]) and spoken by the edge's own client
//! ([`super::upstream_http1`]). A response cut short is never finished as if whole:
//! the connection closes (HTTP/1) or the stream is reset (HTTP/2); a head with a length is held
//! until its body starts, so an upstream that dies right after its head gets the client a 502.
//! A reused connection that fails
//! before anything came back is replaced once, by a new one, for idempotent requests.
//!
//! Client connections are bounded ([`super::ClientLimits`]): a keep-alive wait, a budget for the
//! whole request header (pingora bounds single reads only), a read timeout for bodies and a send
//! timeout for responses. Upstream connections go back to the pool for no longer than the upstream
//! said it keeps them, and the upstream's hop-by-hop response fields stay at the edge.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::Method;
use pingora_core::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora_core::protocols::http::v1::server::HttpSession;
use pingora_core::protocols::http::{HttpTask, ServerSession};
use pingora_core::protocols::{ALPN, Stream};
use pingora_core::server::ShutdownWatch;
use pingora_error::{Error, ErrorType, Result};

use super::downstream::Downstream;
use super::headers::UpstreamRequest;
use super::server_http1::{Http1Server, Read};
use super::upstream_http1::Http1Connection;
use pingora_timeout::fast_timeout::fast_timeout;

use super::{Edge, RequestContext, bounded, headers, pool};

/// How long the rest of a request body is read (and dropped) after the upstream answered early.
pub const EARLY_ANSWER_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What pingora's listener runs for each client connection: HTTP/1.x goes straight to the edge's
/// own server, HTTP/2 through pingora's connection handling (its stream accept loop, GOAWAY on
/// shutdown, idle timeout) and then [`Edge`]'s `process_new_http` per stream. Straight, because
/// pingora's per-connection future reserves room for an HTTP/1 session and the HTTP/2 machinery
/// on every connection, idle or not (3.8 KiB each).
pub struct EdgeApp {
    edge: Arc<Edge>,
}

impl EdgeApp {
    pub fn new(edge: Edge) -> Self {
        EdgeApp { edge: Arc::new(edge) }
    }
}

#[async_trait]
impl ServerApp for EdgeApp {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // pingora's own handling (its future is allocated for HTTP/2 connections only).
            return ServerApp::process_new(&self.edge, stream, shutdown).await;
        }
        self.edge.serve_connection(stream, shutdown).await;
        None
    }
}

#[async_trait]
impl HttpServerApp for Edge {
    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }

    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session {
            // Not reached through `EdgeApp`, which gives HTTP/1 connections to the edge's server
            // directly; nothing was read yet, so that server takes the connection here too (boxed:
            // HTTP/2 streams' futures do not reserve room for it).
            ServerSession::H1(http1) => Box::pin(self.serve_connection(http1.into_inner(), shutdown)).await,
            // One HTTP/2 stream: one request.
            mut session => {
                let mut stopping = shutdown.clone();
                let stop = stopping.wait_for(|stop| *stop);
                tokio::pin!(stop);
                if self
                    .serve(&mut session, self.limits.request_header, shutdown, stop.as_mut())
                    .await
                {
                    let _ = self.sent(session.finish()).await;
                }
            }
        }
        None
    }
}

impl Edge {
    /// Serves an HTTP/1.x client connection from its first byte. Every request of a keep-alive
    /// connection is served from this one future (pingora would call back per request,
    /// allocating and initialising a new future of the whole request path each time: the
    /// largest single cost per request measured, see benches/README.md).
    async fn serve_connection(&self, stream: Stream, shutdown: &ShutdownWatch) {
        // The shutdown signal is registered once per connection, not once per request.
        let mut stopping = shutdown.clone();
        let stop = stopping.wait_for(|stop| *stop);
        tokio::pin!(stop);
        let connection = Http1Server::new(stream, None, self.limits.send);
        self.serve_http1(connection, shutdown, stop.as_mut()).await;
    }

    /// Serves an HTTP/1 connection: bodiless requests on the edge's own server, others on a
    /// pingora session that gets the bytes read so far and gives the connection back after.
    async fn serve_http1<S>(&self, mut connection: Http1Server, shutdown: &ShutdownWatch, mut stop: Pin<&mut S>)
    where
        S: Future,
    {
        let limits = self.limits;
        loop {
            let read = tokio::select! {
                // Biased: a request already buffered is served even when shutdown begins.
                biased;
                read = connection.read_request(limits.keepalive, limits.header) => read,
                _ = stop.as_mut() => Read::End,
            };
            match read {
                Read::End => {
                    connection.shutdown().await;
                    return;
                }
                Read::Request => {
                    let mut downstream = Downstream::Own(&mut connection);
                    if !self.handle(&mut downstream, shutdown).await || !connection.reusable() {
                        connection.shutdown().await;
                        return;
                    }
                }
                Read::Elsewhere => {
                    // Boxed: the pingora session and its futures are allocated only while one
                    // is in use, not reserved in every connection's future (12 KiB of it).
                    match Box::pin(self.serve_elsewhere(connection, shutdown, stop.as_mut())).await {
                        Some(next) => connection = next,
                        None => return,
                    }
                }
            }
        }
    }

    /// Serves the request `connection` began on a pingora HTTP/1 session, with every byte read so
    /// far; the connection back if it may carry another request.
    async fn serve_elsewhere<S>(
        &self,
        connection: Http1Server,
        shutdown: &ShutdownWatch,
        stop: Pin<&mut S>,
    ) -> Option<Http1Server>
    where
        S: Future,
    {
        let limits = self.limits;
        // The client has begun its request: what is left of the header budget.
        let budget = limits
            .header
            .saturating_sub(connection.head_elapsed().unwrap_or_default());
        let (stream, read) = connection.into_parts();
        let mut http1 = HttpSession::new(stream);
        // Requests are served one after another (RFC 9112 §9.3.2), as on the edge's own path:
        // pipelined bytes after this request come back to it.
        http1.set_pipelining_enabled(true);
        if !read.is_empty() {
            http1.set_pipelined_prefix(read);
        }
        let mut session = ServerSession::H1(http1);
        if !self.serve(&mut session, budget, shutdown, stop).await {
            return None;
        }
        // pingora's keep-alive decision (it also drains what is left of the body).
        let Ok(Some(reusable)) = self.sent(session.finish()).await else {
            return None;
        };
        let (stream, pipelined) = reusable.into_parts();
        Some(Http1Server::new(stream, pipelined, limits.send))
    }

    /// Reads (within `header_budget`) and serves one request. Returns whether the connection
    /// may carry another.
    async fn serve<S>(
        &self,
        session: &mut ServerSession,
        header_budget: Duration,
        shutdown: &ShutdownWatch,
        stop: Pin<&mut S>,
    ) -> bool
    where
        S: Future,
    {
        let limits = self.limits;
        session.set_read_timeout(Some(limits.read));
        session.set_write_timeout(Some(limits.send));
        let read = tokio::select! {
            // Biased: a request already buffered is served even when shutdown begins.
            biased;
            // pingora bounds each read (by the keep-alive timeout), not the whole header: a
            // client dribbling bytes is cut off here.
            read = fast_timeout(header_budget, session.read_request()) => read,
            _ = stop => return false,
        };
        let Ok(read) = read else {
            tracing::debug!("request header not complete in time; closing");
            return false;
        };
        match read {
            Ok(true) => {
                // pingora keeps an HTTP/1.1 connection forever (it reads no client `Keep-Alive`
                // either); the edge's timeout bounds it. `None`: the client asked to close.
                if session.get_keepalive().is_some() {
                    session.set_keepalive(Some(limits.keepalive_seconds));
                }
            }
            Ok(false) => return false,
            Err(error) => {
                if matches!(error.etype(), ErrorType::InvalidHTTPHeader) {
                    tracing::debug!(%error, "malformed request header");
                    let _ = session.respond_error(400).await;
                }
                session.shutdown().await;
                return false;
            }
        }
        self.handle(&mut Downstream::pingora(session), shutdown).await
    }

    /// Serves a request whose head was read. Returns whether the connection may carry another.
    async fn handle(&self, session: &mut Downstream<'_>, shutdown: &ShutdownWatch) -> bool {
        if matches!(session.req_header().method, Method::CONNECT | Method::TRACE) {
            // Tunnels are not proxied; the method also changes message framing (RFC 9112 §6.3).
            // TRACE would echo the edge's identity fields (assertion, access token) back.
            let _ = session.respond_error(405).await;
            session.shutdown().await;
            return false;
        }
        if *shutdown.borrow() {
            session.close_after();
        }

        let mut context = self.new_context();
        let outcome = match self.admit(session, &mut context).await {
            Ok(true) => Ok(()),
            Ok(false) => self.forward(session, &mut context).await,
            Err(error) => Err(error.into_down()),
        };
        let mut truncated = false;
        if let Err(error) = outcome {
            // A response already under way cannot be finished: ending it normally (a last chunk,
            // an HTTP/2 END_STREAM) would pass a truncated body off as complete.
            truncated = session.response_status().is_some();
            self.fail(session, &error, &mut context).await;
        }
        self.log(session, &mut context);
        if truncated {
            // HTTP/1: the connection closes mid-body; HTTP/2: the stream is reset.
            session.shutdown().await;
            return false;
        }
        true
    }
}

impl Edge {
    /// A write to the client, bounded by the send timeout: pingora bounds body writes itself, but
    /// not response heads, the last chunk or flushes (a client that stops reading before a
    /// bodiless response would otherwise hold its connection, and an upstream one, forever).
    pub(super) async fn sent<T>(&self, write: impl Future<Output = Result<T>>) -> Result<T> {
        match bounded(self.limits.send, write).await {
            Ok(result) => result,
            Err(_) => Error::e_explain(
                ErrorType::WriteTimedout,
                "the client took nothing within the send timeout",
            ),
        }
    }
}

/// Why an exchange with one upstream connection ended early.
struct Failure {
    error: Box<Error>,
    /// Nothing of the request took effect as far as the edge can tell: it may be sent again on
    /// another connection.
    replayable: bool,
}

impl Failure {
    fn upstream(error: Box<Error>, replayable: bool) -> Self {
        Failure {
            error: error.into_up(),
            replayable,
        }
    }

    fn downstream(error: Box<Error>) -> Self {
        Failure {
            error: error.into_down(),
            replayable: false,
        }
    }
}

impl Edge {
    /// Sends the admitted request upstream and the response back. Connect failures move on to
    /// the next target (once per target); a reused connection that turns out closed is replaced
    /// when the request can be replayed.
    async fn forward(&self, session: &mut Downstream<'_>, context: &mut RequestContext) -> Result<()> {
        let (Some(runtime), Some(route)) = (context.runtime.clone(), context.route) else {
            return Error::e_explain(ErrorType::InternalError, "forward without a route");
        };
        let upstream = &runtime.applications[route.application as usize].upstream;
        let body_expected = !session.is_body_empty();
        // Built before any connection is taken: a request the edge refuses costs none. Kept for
        // a replay.
        let request = self.upstream_request(session, context, body_expected)?;
        let mut connect_attempts = 0;
        // A reused connection that failed is replaced once, by a new connection: a hung upstream
        // is not asked again on every idle connection of the pool.
        let mut replayed = false;
        loop {
            let target = upstream.pick();
            context.upstream_target = Some(target);
            let peer = upstream.peer(target);
            let key = upstream.pool_key(target);
            let pooled = if replayed { None } else { pool::take(key) };
            let (stream, reused) = match pooled {
                Some(stream) => (stream, true),
                None => {
                    connect_attempts += 1;
                    // Boxed: the connect future (TCP, TLS) is ~8 KiB, and it would otherwise
                    // be part of every connection's request future, idle or not.
                    match Box::pin(self.connector.new_stream(peer)).await {
                        Ok(stream) => (stream, false),
                        Err(error) => {
                            upstream.mark_down(target);
                            if connect_attempts < upstream.targets().len() {
                                continue;
                            }
                            return Err(error.into_up());
                        }
                    }
                }
            };
            let options = &peer.options;
            let mut connection = Http1Connection::new(stream, options.read_timeout, options.write_timeout);
            connection.use_deadline(session.take_upstream_deadline());
            let exchanged = self.exchange(session, &mut connection, &request, context).await;
            session.keep_upstream_deadline(connection.take_deadline());
            match exchanged {
                Ok(Some(announced)) => {
                    let idle = upstream.idle_timeout().min(announced);
                    // Whether the upstream keeps the connection open was decided from the
                    // response (Connection, HTTP version, framing).
                    let most = upstream.max_idle_connections();
                    if idle.is_zero() || most == 0 {
                        connection.shutdown().await;
                    } else {
                        match connection.into_reusable() {
                            Ok(stream) => pool::put(key, stream, idle, most),
                            Err(connection) => connection.shutdown().await,
                        }
                    }
                    return Ok(());
                }
                Ok(None) => {
                    connection.shutdown().await;
                    return Ok(());
                }
                Err(failure) if reused && failure.replayable && !replayed => {
                    replayed = true;
                    tracing::debug!(error = %failure.error, "reused upstream connection failed; replaying the request");
                }
                Err(failure) => return Err(failure.error),
            }
        }
    }

    /// One request/response exchange on one upstream connection. Returns, when the upstream
    /// connection can serve another request, for how long at most (what the upstream announced,
    /// see [`headers::upstream_keepalive`]; `Duration::MAX` when it announced nothing).
    async fn exchange(
        &self,
        session: &mut Downstream<'_>,
        client: &mut Http1Connection,
        request: &UpstreamRequest,
        context: &mut RequestContext,
    ) -> std::result::Result<Option<Duration>, Failure> {
        let idempotent = is_idempotent(&session.req_header().method);
        client
            .send_head(request)
            .await
            .map_err(|e| Failure::upstream(e, true))?;
        let mut request_done = matches!(
            request.body,
            headers::RequestBody::Empty | headers::RequestBody::Length(0)
        );
        let mut body_sent = false;
        let mut response_started = false;
        let mut response_done = false;
        let mut upgraded = false;
        // The upstream stopped taking the body (it may be answering already: read on).
        let mut write_failure: Option<Box<Error>> = None;
        // The client is still sending a body nobody will read.
        let mut body_left = false;
        // A final answer began before the whole body went up: the upstream may not have read it,
        // so the connection is not trusted with another request.
        let mut answered_early = false;
        let mut announced_keepalive = None;
        let mut upstream_finished: Option<Instant> = None;
        while !request_done || !response_done {
            tokio::select! {
                task = client.read_task(), if !response_done => {
                    if upgraded && task.as_ref().is_err_and(|e| is_idle_timeout(e)) {
                        // An idle tunnel ends at the read timeout, as nginx's does; no failure.
                        break;
                    }
                    let replayable = idempotent && !body_sent && !response_started;
                    let task = task.map_err(|e| {
                        // Only a connection lost before any answer is sent again: a timeout says
                        // the upstream got the request and is slow, a malformed answer that it
                        // got it and answered.
                        let lost = matches!(e.etype(), ErrorType::ConnectionClosed | ErrorType::ReadError);
                        Failure::upstream(write_failure.take().unwrap_or(e), replayable && lost)
                    })?;
                    response_started = true;
                    let ends = matches!(
                        &task,
                        HttpTask::Header(_, true) | HttpTask::Body(_, true) | HttpTask::Trailer(_) | HttpTask::Done
                    );
                    if ends {
                        // The upstream's idle clock starts here, not once the client has the end.
                        upstream_finished = Some(Instant::now());
                    }
                    match task {
                        HttpTask::Header(mut header, end) => {
                            answered_early |= !request_done && !header.status.is_informational();
                            if header.status == http::StatusCode::SWITCHING_PROTOCOLS {
                                // From here on both directions carry raw bytes until one closes
                                // (the client refused a 101 the request did not ask for).
                                upgraded = true;
                                request_done = false;
                            }
                            if header.status.is_informational() && !upgraded {
                                // 100, 103: their hop-by-hop fields stay here too.
                                headers::strip_response_hop_by_hop(&mut header);
                            } else {
                                announced_keepalive = headers::upstream_keepalive(&header);
                                self.response_header(&mut header, context).map_err(|e| Failure::upstream(e, false))?;
                                // A final answer (a 101's body is a byte pipe, not framed).
                                let request = session.req_header();
                                let (version, head) = (request.version, request.method == Method::HEAD);
                                if !upgraded
                                    && version != http::Version::HTTP_2
                                    && headers::frame_for_http1_client(&mut header, version, head)
                                {
                                    session.close_after();
                                }
                            }
                            self.sent(session.write_response_header(header)).await.map_err(Failure::downstream)?;
                            response_done = end;
                        }
                        HttpTask::Body(data, end) | HttpTask::UpgradedBody(data, end) => {
                            session
                                .write_response_body(data.unwrap_or_default(), end)
                                .await
                                .map_err(Failure::downstream)?;
                            response_done = end;
                        }
                        HttpTask::Trailer(trailers) => {
                            if let Some(trailers) = trailers {
                                self.sent(session.write_response_trailers(*trailers)).await.map_err(Failure::downstream)?;
                            }
                            response_done = true;
                        }
                        HttpTask::Done => response_done = true,
                        HttpTask::Failed(error) => return Err(Failure::upstream(error, false)),
                    }
                    if response_done && upgraded {
                        // The upstream closed the tunnel.
                        request_done = true;
                    } else if response_done && !request_done {
                        // Answered before the whole request arrived.
                        body_left = true;
                        break;
                    }
                }
                body = session.read_request_body(), if !request_done => {
                    if upgraded && body.as_ref().is_err_and(|e| is_idle_timeout(e)) {
                        break;
                    }
                    match body.map_err(Failure::downstream)? {
                        // An empty chunk would end a chunked upstream body early.
                        Some(data) if data.is_empty() => {}
                        Some(data) => {
                            body_sent = true;
                            if let Err(error) = client.write_body(&data).await {
                                if upgraded {
                                    return Err(Failure::upstream(error, false));
                                }
                                write_failure = Some(error);
                                request_done = true;
                                body_left = true;
                            }
                        }
                        None => {
                            if upgraded {
                                // The client closed the tunnel.
                                response_done = true;
                            }
                            if let Err(error) = client.finish_body().await {
                                write_failure = Some(error);
                            }
                            request_done = true;
                        }
                    }
                }
            }
        }
        self.sent(session.finish_body()).await.map_err(Failure::downstream)?;
        if body_left {
            // Read the rest of the body so the client sees its answer rather than a reset and the
            // connection may serve another request; a client that keeps sending loses it.
            let drained = tokio::time::timeout(EARLY_ANSWER_DRAIN_TIMEOUT, session.drain_request_body()).await;
            if !matches!(drained, Ok(Ok(()))) {
                session.close_after();
            }
        }
        let reusable = !upgraded && !body_left && !answered_early && write_failure.is_none();
        let since_finished = || upstream_finished.map_or(Duration::ZERO, |finished| finished.elapsed());
        Ok(reusable.then(|| announced_keepalive.map_or(Duration::MAX, |limit| limit.saturating_sub(since_finished()))))
    }
}

fn is_idle_timeout(error: &Error) -> bool {
    matches!(error.etype(), ErrorType::ReadTimedout)
}

/// Methods whose request can be sent again without changing the outcome (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}
