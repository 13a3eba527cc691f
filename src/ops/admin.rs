//! The admin listener: `/metrics`, `/healthz`, `/readyz`.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::metrics;
use crate::proxy::state::Shared;

pub struct Admin {
    shared: Arc<Shared>,
}

impl Admin {
    pub fn new(shared: Arc<Shared>) -> Self {
        Admin { shared }
    }
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if session.req_header().method != http::Method::GET {
            return reply(405, "text/plain", b"method not allowed\n".to_vec());
        }
        match session.req_header().uri.path() {
            "/metrics" => reply(200, "text/plain; version=0.0.4", metrics::global().render()),
            "/healthz" => reply(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" if self.shared.is_ready() => {
                let fingerprint = self.shared.runtime().snapshot.fingerprint.to_string();
                reply(200, "text/plain", format!("ready {fingerprint}\n").into_bytes())
            }
            "/readyz" if self.shared.is_draining() => reply(503, "text/plain", b"draining\n".to_vec()),
            "/readyz" => reply(503, "text/plain", b"starting\n".to_vec()),
            _ => reply(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}
