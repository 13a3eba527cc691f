//! The client side of one request, whichever code serves it.
//!
//! Contract: the request phases (admit, forward, fail, log) see one [`Downstream`]: pingora-core's
//! session (HTTP/2, and HTTP/1 requests outside the edge's path) or the edge's own HTTP/1.1 server
//! ([`super::server_http1`], bodiless requests). Both answer the same questions and take the same
//! writes; a write to the client is bounded by the send timeout either way (pingora bounds its
//! body writes, the caller the rest; the edge's server bounds each of its own). Either way a
//! final head whose body has a length is held until that body starts.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::tls::SslDigest;
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};

use super::deadline::Deadline;
use super::server_http1::{Http1Server, waits_for_body};

pub enum Downstream<'a> {
    /// With the final response head held back until its body starts (see
    /// [`Downstream::write_response_header`]).
    Pingora(&'a mut ServerSession, Option<Box<ResponseHeader>>),
    Own(&'a mut Http1Server),
}

impl<'a> Downstream<'a> {
    pub fn pingora(session: &'a mut ServerSession) -> Self {
        Downstream::Pingora(session, None)
    }

    pub fn req_header(&self) -> &RequestHeader {
        match self {
            Downstream::Pingora(session, _) => session.req_header(),
            Downstream::Own(server) => server.request(),
        }
    }

    /// The connection closes after this response.
    pub fn close_after(&mut self) {
        match self {
            Downstream::Pingora(session, _) => session.set_keepalive(None),
            Downstream::Own(server) => server.set_keepalive(false),
        }
    }

    /// The status of the final response head written, if one was.
    pub fn response_status(&self) -> Option<u16> {
        match self {
            // A held head has not been written: an error answer may still take its place.
            Downstream::Pingora(session, _) => session.response_written().map(|response| response.status.as_u16()),
            Downstream::Own(server) => server.status().map(|status| status.as_u16()),
        }
    }

    pub fn ssl_digest(&self) -> Option<&Arc<SslDigest>> {
        match self {
            Downstream::Pingora(session, _) => session.digest().and_then(|digest| digest.ssl_digest.as_ref()),
            Downstream::Own(server) => server.ssl_digest(),
        }
    }

    pub fn client_addr(&self) -> Option<&SocketAddr> {
        match self {
            Downstream::Pingora(session, _) => session.client_addr(),
            Downstream::Own(server) => server.client_addr(),
        }
    }

    pub fn body_bytes_sent(&self) -> usize {
        match self {
            Downstream::Pingora(session, _) => session.body_bytes_sent(),
            Downstream::Own(server) => server.body_bytes_sent(),
        }
    }

    /// The request has no body (the edge's path takes only such requests).
    pub fn is_body_empty(&mut self) -> bool {
        match self {
            Downstream::Pingora(session, _) => session.is_body_empty(),
            Downstream::Own(_) => true,
        }
    }

    pub async fn read_request_body(&mut self) -> Result<Option<Bytes>> {
        match self {
            Downstream::Pingora(session, _) => session.read_request_body().await,
            Downstream::Own(_) => Ok(None),
        }
    }

    pub async fn drain_request_body(&mut self) -> Result<()> {
        match self {
            Downstream::Pingora(session, _) => session.drain_request_body().await,
            Downstream::Own(_) => Ok(()),
        }
    }

    /// The timer for the upstream response waits of this request: the connection's own on the
    /// edge's path, a new one on pingora's (an HTTP/2 stream serves one request).
    pub fn take_upstream_deadline(&mut self) -> Deadline {
        match self {
            Downstream::Pingora(..) => Deadline::default(),
            Downstream::Own(connection) => std::mem::take(&mut connection.upstream_deadline),
        }
    }

    /// Gives back what [`Self::take_upstream_deadline`] lent.
    pub fn keep_upstream_deadline(&mut self, deadline: Deadline) {
        if let Downstream::Own(connection) = self {
            connection.upstream_deadline = deadline;
        }
    }

    /// A final head whose body has a length is held until the body starts, on both paths (see
    /// [`waits_for_body`]): an upstream dying in between gets the client a 502, rather than an
    /// empty answer or a reset stream.
    pub async fn write_response_header(&mut self, response: Box<ResponseHeader>) -> Result<()> {
        match self {
            Downstream::Pingora(session, held) => {
                if response.status.is_informational() {
                    return session.write_response_header(response).await;
                }
                if waits_for_body(session.req_header().method == http::Method::HEAD, &response) {
                    *held = Some(response);
                    return Ok(());
                }
                // A final head after a held one: an error answer replacing it.
                *held = None;
                session.write_response_header(response).await
            }
            Downstream::Own(server) => server.write_response_header(&response).await,
        }
    }

    /// Writes a held head, before what follows it.
    async fn release_head(session: &mut ServerSession, held: &mut Option<Box<ResponseHeader>>) -> Result<()> {
        match held.take() {
            Some(head) => session.write_response_header(head).await,
            None => Ok(()),
        }
    }

    pub async fn write_response_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        match self {
            Downstream::Pingora(session, held) => {
                Self::release_head(session, held).await?;
                session.write_response_body(data, end).await
            }
            Downstream::Own(server) => server.write_response_body(&data, end).await,
        }
    }

    /// Trailers go to HTTP/2 clients; HTTP/1 clients get none (as from pingora).
    pub async fn write_response_trailers(&mut self, trailers: HeaderMap) -> Result<()> {
        match self {
            Downstream::Pingora(session, held) => {
                Self::release_head(session, held).await?;
                session.write_response_trailers(trailers).await
            }
            Downstream::Own(_) => Ok(()),
        }
    }

    pub async fn finish_body(&mut self) -> Result<()> {
        match self {
            Downstream::Pingora(session, held) => {
                Self::release_head(session, held).await?;
                session.finish_body().await
            }
            Downstream::Own(server) => server.finish_body().await,
        }
    }

    pub async fn respond_error(&mut self, status: u16) -> Result<()> {
        match self {
            Downstream::Pingora(session, held) => {
                *held = None;
                session.respond_error(status).await
            }
            Downstream::Own(server) => server.respond_error(status).await,
        }
    }

    /// Ends the connection (HTTP/1) or resets the stream (HTTP/2).
    pub async fn shutdown(&mut self) {
        match self {
            Downstream::Pingora(session, _) => session.shutdown().await,
            Downstream::Own(server) => server.shutdown().await,
        }
    }
}
