//! The client side of one request, whichever code serves it.
//!
//! Contract: the request phases (admit, forward, fail, log) see one [`Downstream`]: pingora-core's
//! session (HTTP/2, and HTTP/1 requests outside the edge's path) or the edge's own HTTP/1.1 server
//! ([`super::server_http1`], bodiless requests). Both answer the same questions and take the same
//! writes; a write to the client is bounded by the send timeout either way (pingora bounds its
//! body writes, the caller the rest; the edge's server bounds each of its own).

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::tls::SslDigest;
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};

use super::deadline::Deadline;
use super::server_http1::Http1Server;

pub enum Downstream<'a> {
    Pingora(&'a mut ServerSession),
    Own(&'a mut Http1Server),
}

impl Downstream<'_> {
    pub fn req_header(&self) -> &RequestHeader {
        match self {
            Downstream::Pingora(session) => session.req_header(),
            Downstream::Own(server) => server.request(),
        }
    }

    /// The connection closes after this response.
    pub fn close_after(&mut self) {
        match self {
            Downstream::Pingora(session) => session.set_keepalive(None),
            Downstream::Own(server) => server.set_keepalive(false),
        }
    }

    /// The status of the final response head written, if one was.
    pub fn response_status(&self) -> Option<u16> {
        match self {
            Downstream::Pingora(session) => session.response_written().map(|response| response.status.as_u16()),
            Downstream::Own(server) => server.status().map(|status| status.as_u16()),
        }
    }

    pub fn ssl_digest(&self) -> Option<&Arc<SslDigest>> {
        match self {
            Downstream::Pingora(session) => session.digest().and_then(|digest| digest.ssl_digest.as_ref()),
            Downstream::Own(server) => server.ssl_digest(),
        }
    }

    pub fn client_addr(&self) -> Option<&SocketAddr> {
        match self {
            Downstream::Pingora(session) => session.client_addr(),
            Downstream::Own(server) => server.client_addr(),
        }
    }

    pub fn body_bytes_sent(&self) -> usize {
        match self {
            Downstream::Pingora(session) => session.body_bytes_sent(),
            Downstream::Own(server) => server.body_bytes_sent(),
        }
    }

    /// The request has no body (the edge's path takes only such requests).
    pub fn is_body_empty(&mut self) -> bool {
        match self {
            Downstream::Pingora(session) => session.is_body_empty(),
            Downstream::Own(_) => true,
        }
    }

    pub async fn read_request_body(&mut self) -> Result<Option<Bytes>> {
        match self {
            Downstream::Pingora(session) => session.read_request_body().await,
            Downstream::Own(_) => Ok(None),
        }
    }

    pub async fn drain_request_body(&mut self) -> Result<()> {
        match self {
            Downstream::Pingora(session) => session.drain_request_body().await,
            Downstream::Own(_) => Ok(()),
        }
    }

    /// The timer for the upstream response waits of this request: the connection's own on the
    /// edge's path, a new one on pingora's (an HTTP/2 stream serves one request).
    pub fn take_upstream_deadline(&mut self) -> Deadline {
        match self {
            Downstream::Pingora(_) => Deadline::default(),
            Downstream::Own(connection) => std::mem::take(&mut connection.upstream_deadline),
        }
    }

    /// Gives back what [`Self::take_upstream_deadline`] lent.
    pub fn keep_upstream_deadline(&mut self, deadline: Deadline) {
        if let Downstream::Own(connection) = self {
            connection.upstream_deadline = deadline;
        }
    }

    pub async fn write_response_header(&mut self, response: Box<ResponseHeader>) -> Result<()> {
        match self {
            Downstream::Pingora(session) => session.write_response_header(response).await,
            Downstream::Own(server) => server.write_response_header(&response).await,
        }
    }

    pub async fn write_response_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        match self {
            Downstream::Pingora(session) => session.write_response_body(data, end).await,
            Downstream::Own(server) => server.write_response_body(&data, end).await,
        }
    }

    /// Trailers go to HTTP/2 clients; HTTP/1 clients get none (as from pingora).
    pub async fn write_response_trailers(&mut self, trailers: HeaderMap) -> Result<()> {
        match self {
            Downstream::Pingora(session) => session.write_response_trailers(trailers).await,
            Downstream::Own(_) => Ok(()),
        }
    }

    pub async fn finish_body(&mut self) -> Result<()> {
        match self {
            Downstream::Pingora(session) => session.finish_body().await,
            Downstream::Own(server) => server.finish_body().await,
        }
    }

    pub async fn respond_error(&mut self, status: u16) -> Result<()> {
        match self {
            Downstream::Pingora(session) => session.respond_error(status).await,
            Downstream::Own(server) => server.respond_error(status).await,
        }
    }

    /// Ends the connection (HTTP/1) or resets the stream (HTTP/2).
    pub async fn shutdown(&mut self) {
        match self {
            Downstream::Pingora(session) => session.shutdown().await,
            Downstream::Own(server) => server.shutdown().await,
        }
    }
}
