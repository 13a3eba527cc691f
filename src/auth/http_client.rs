//! HTTP calls to identity providers (discovery, JWKS, token, revocation), bounded in time and size.
//!
//! Responses are hostile input: bodies are capped at [`MAX_BODY`], every call has a deadline, and
//! only JSON objects are accepted.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Largest IdP response read.
pub const MAX_BODY: usize = 1024 * 1024;
/// Deadline of one IdP call, connection included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("invalid URL `{0}`")]
    Url(String),
    #[error("request failed: {0}")]
    Transport(String),
    #[error("timed out after {}s", CALL_TIMEOUT.as_secs())]
    Timeout,
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("response is not a JSON object: {0}")]
    Body(String),
}

/// A JSON response with its status.
#[derive(Debug)]
pub struct JsonResponse {
    pub status: u16,
    pub body: serde_json::Map<String, serde_json::Value>,
}

pub struct IdpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Default for IdpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl IdpClient {
    pub fn new() -> Self {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CALL_TIMEOUT));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            // The ring provider always supports the default protocol versions.
            .unwrap_or_else(|error| unreachable!("ring provider rejected: {error}"))
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        IdpClient {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        }
    }

    /// Sends `request` and reads at most [`MAX_BODY`] of the answer, all within [`CALL_TIMEOUT`]:
    /// the status, and the body or why it could not be read.
    async fn exchange(
        &self,
        request: http::Request<Full<Bytes>>,
    ) -> Result<(u16, Result<Bytes, FetchError>), FetchError> {
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|error| FetchError::Transport(error.to_string()))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map(|collected| collected.to_bytes())
                .map_err(|error| FetchError::Body(error.to_string()));
            Ok((status, body))
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| FetchError::Timeout)?
    }

    async fn call(&self, request: http::Request<Full<Bytes>>) -> Result<JsonResponse, FetchError> {
        let (status, body) = self.exchange(request).await?;
        let body = body?;
        if body.iter().all(u8::is_ascii_whitespace) {
            // RFC 7009 revocation answers 200 with an empty body.
            return Ok(JsonResponse {
                status,
                body: serde_json::Map::new(),
            });
        }
        let parsed: serde_json::Value =
            serde_json::from_slice(&body).map_err(|error| FetchError::Body(error.to_string()))?;
        match parsed {
            serde_json::Value::Object(body) => Ok(JsonResponse { status, body }),
            _ => Err(FetchError::Body("not an object".into())),
        }
    }

    /// GET `url` and return only its status (the body is discarded, up to [`MAX_BODY`]).
    pub async fn get_status(&self, url: &str) -> Result<u16, FetchError> {
        let request = http::Request::get(url)
            .header("user-agent", concat!("vestibule/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::new()))
            .map_err(|_| FetchError::Url(url.to_owned()))?;
        let (status, _) = self.exchange(request).await?;
        Ok(status)
    }

    /// GET a JSON document; non-2xx is an error.
    pub async fn get_json(&self, url: &str) -> Result<serde_json::Map<String, serde_json::Value>, FetchError> {
        let request = http::Request::get(url)
            .header("accept", "application/json")
            .header("user-agent", concat!("vestibule/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::new()))
            .map_err(|_| FetchError::Url(url.to_owned()))?;
        let response = self.call(request).await?;
        if !(200..300).contains(&response.status) {
            return Err(FetchError::Status(response.status));
        }
        Ok(response.body)
    }

    /// POST a form with HTTP Basic client authentication (RFC 6749 §2.3.1); any status is
    /// returned with its JSON body so OAuth errors can be read.
    pub async fn post_form(
        &self,
        url: &str,
        client: (&str, &str),
        form: &[(&str, &str)],
    ) -> Result<JsonResponse, FetchError> {
        use base64::Engine;
        let encode = |value: &str| url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>();
        let credentials = format!("{}:{}", encode(client.0), encode(client.1));
        let authorization = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials.as_bytes())
        );
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let request = http::Request::post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .header("authorization", authorization)
            .header("user-agent", concat!("vestibule/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| FetchError::Url(url.to_owned()))?;
        self.call(request).await
    }
}
