//! The one place where a refusal becomes an HTTP status and body.

use bytes::Bytes;
use pingora_http::ResponseHeader;

use crate::auth::AuthError;
use crate::tenancy::host::HostError;

/// Why the edge answered a request itself instead of forwarding it.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("the request has no Host")]
    MissingHost,
    #[error("malformed Host: {0}")]
    BadHost(HostError),
    #[error("no application or tenant is served at this host")]
    UnknownHost,
    #[error("this host is not served on this connection; open a new connection for it")]
    Misdirected,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("no healthy upstream for this application")]
    NoHealthyUpstream,
    #[error("the upstream could not be reached")]
    UpstreamUnreachable,
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    #[error("the upstream failed")]
    UpstreamFailed,
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl Rejection {
    /// HTTP status for the refusal. `tls` is whether the connection is HTTPS.
    pub fn status(&self, tls: bool) -> u16 {
        match self {
            Rejection::MissingHost | Rejection::BadHost(_) => 400,
            // On TLS the SNI was fine but the Host is not ours: RFC 9110 §15.5.20.
            Rejection::UnknownHost if tls => 421,
            Rejection::UnknownHost => 404,
            Rejection::Misdirected => 421,
            Rejection::NotFound => 404,
            Rejection::MethodNotAllowed => 405,
            Rejection::NoHealthyUpstream | Rejection::UpstreamUnreachable | Rejection::UpstreamFailed => 502,
            Rejection::UpstreamTimeout => 504,
            Rejection::Auth(error) => error.status(),
        }
    }

    /// Stable machine-readable code: response body `error` and metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::MissingHost => "missing_host",
            Rejection::BadHost(_) => "bad_host",
            Rejection::UnknownHost => "unknown_host",
            Rejection::Misdirected => "misdirected_request",
            Rejection::NotFound => "not_found",
            Rejection::MethodNotAllowed => "method_not_allowed",
            Rejection::NoHealthyUpstream => "no_healthy_upstream",
            Rejection::UpstreamUnreachable => "upstream_unreachable",
            Rejection::UpstreamTimeout => "upstream_timeout",
            Rejection::UpstreamFailed => "upstream_failed",
            Rejection::Auth(error) => error.code(),
        }
    }
}

/// A small JSON error document. `message` and `request_id` are edge-made text, never client input.
pub fn error_body(code: &str, message: &str, request_id: &str) -> Bytes {
    let body = serde_json::json!({ "error": code, "message": message, "request_id": request_id });
    Bytes::from(body.to_string())
}

/// Writes a complete response the edge generated. Boxed: its writes are kept out of every
/// connection's request future (an idle connection carries that future's largest state).
pub async fn respond(
    session: &mut super::Downstream<'_>,
    status: u16,
    headers: &[(&'static str, &str)],
    body: Bytes,
) -> pingora_error::Result<()> {
    Box::pin(respond_inline(session, status, headers, body)).await
}

async fn respond_inline(
    session: &mut super::Downstream<'_>,
    status: u16,
    headers: &[(&'static str, &str)],
    body: Bytes,
) -> pingora_error::Result<()> {
    let mut response = ResponseHeader::build(status, Some(headers.len() + 3))?;
    for (name, value) in headers {
        response.append_header(*name, *value)?;
    }
    response.insert_header("content-length", body.len().to_string())?;
    response.insert_header("cache-control", "no-store")?;
    let head_only = session.req_header().method == http::Method::HEAD;
    session.write_response_header(Box::new(response)).await?;
    if !head_only && !body.is_empty() {
        session.write_response_body(body, true).await?;
    }
    session.finish_body().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(Rejection::UnknownHost.status(true), 421);
        assert_eq!(Rejection::UnknownHost.status(false), 404);
        assert_eq!(Rejection::BadHost(HostError::InvalidCharacter).status(true), 400);
        assert_eq!(Rejection::Misdirected.status(true), 421);
        assert_eq!(Rejection::NoHealthyUpstream.status(true), 502);
        assert_eq!(Rejection::UpstreamTimeout.status(true), 504);
    }

    #[test]
    fn error_bodies_are_json() {
        let body = error_body("unknown_host", "no such host", "abc");
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["error"], "unknown_host");
        assert_eq!(parsed["request_id"], "abc");
    }
}
