//! The HTTP side: resolve, authorize, forward.
//!
//! Contract, per request:
//! 1. The host comes from `:authority` / the absolute URI, else `Host`; it is normalized without
//!    allocation; malformed or missing → 400.
//! 2. On TLS the host must be covered by the certificate the connection presented → else 421.
//! 3. The host resolves through the live snapshot's [`crate::tenancy::HostTable`]; unknown → 421
//!    on TLS, 404 on plain HTTP.
//! 4. Plain HTTP: ACME HTTP-01 answers first; production applications get a 308 to https.
//! 5. Edge endpoints (`/auth/*`, the edge JWKS) are answered here; public paths skip
//!    authentication; everything else is authenticated against the host's tenant.
//! 6. The upstream request loses every client copy of the identity headers and gains the edge's.
//! 7. Every refusal goes through [`Rejection`], the one place that picks a status; every request
//!    is counted and logged once.
//! 8. The response loses the upstream's hop-by-hop fields and is framed for the client's HTTP
//!    version; client connections are bounded by [`ClientLimits`] (keep-alive wait, header
//!    budget, read and send timeouts).
//!
//! The edge is its own HTTP application on pingora-core (`forward`): one task per connection or
//! HTTP/2 stream runs read → admit → forward → log for each of its requests, with upstream
//! connections from a per-thread pool (`pool`) spoken to by the edge's own HTTP/1.1 client
//! (`upstream_http1`). Bodiless HTTP/1.1 requests are read and answered by the edge's own server
//! side (`server_http1`), the rest by pingora's sessions (`downstream` covers both). The request path takes no lock: the snapshot is
//! an `ArcSwap` load, metrics are atomics, the pool is thread-local.

mod deadline;
mod downstream;
mod forward;
pub mod headers;
mod pool;
pub mod rejection;
mod server_http1;
pub mod state;
pub mod upstream;
mod upstream_http1;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use downstream::Downstream;
use http::HeaderValue;
use pingora_core::apps::HttpServerOptions;
use pingora_core::connectors::TransportConnector;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;

pub use forward::EdgeApp;
pub use rejection::Rejection;
use state::{Runtime, Shared};

use crate::auth;
use crate::metrics;
use crate::ops::access_log::{self, Entry};
use crate::tenancy::{Route, host};
use crate::tls::ConnectionTls;

/// `future`, bounded by `limit`, for futures that usually complete on their first poll (writes):
/// the timer is made only when the future first waits (`fast_timeout` reads the clock as soon as
/// it is made). Reads, which usually wait, use `fast_timeout` directly.
pub(crate) fn bounded<F: std::future::Future>(limit: Duration, future: F) -> Bounded<F> {
    Bounded {
        future,
        limit,
        timer: None,
    }
}

pin_project_lite::pin_project! {
    /// See [`bounded`].
    pub(crate) struct Bounded<F> {
        #[pin]
        future: F,
        limit: Duration,
        timer: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>>,
    }
}

impl<F: std::future::Future> std::future::Future for Bounded<F> {
    type Output = std::result::Result<F::Output, pingora_timeout::Elapsed>;

    fn poll(self: std::pin::Pin<&mut Self>, context: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let this = self.project();
        if let std::task::Poll::Ready(output) = this.future.poll(context) {
            return std::task::Poll::Ready(Ok(output));
        }
        let limit = *this.limit;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(pingora_timeout::fast_timeout::fast_sleep(limit)));
        timer.as_mut().poll(context).map(|()| Err(pingora_timeout::Elapsed))
    }
}

/// Path prefix of ACME HTTP-01 validations (RFC 8555 §8.3).
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

pub struct Edge {
    shared: Arc<Shared>,
    /// Opens new upstream connections; idle ones are kept per worker thread (see [`pool`]).
    connector: TransportConnector,
    limits: ClientLimits,
    /// pingora's per-connection options: the HTTP/2 idle timeout.
    options: HttpServerOptions,
}

/// What a client connection may hold, from `[server]` (read at start; see
/// [`crate::config::ServerSettings`] for each).
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    keepalive_seconds: u64,
    /// The wait for a request on an open connection (the edge's HTTP/1.1 server).
    keepalive: Duration,
    /// The rest of a request header once its first bytes came (the edge's HTTP/1.1 server).
    header: Duration,
    /// Budget for one request header, keep-alive wait included.
    request_header: Duration,
    read: Duration,
    send: Duration,
}

impl ClientLimits {
    pub fn new(server: &crate::config::ServerSettings) -> Self {
        ClientLimits {
            // Whole seconds, at least one: pingora counts keep-alive in seconds and reads 0 as
            // "forever" (the configuration refuses zero).
            keepalive_seconds: server.keepalive_timeout.as_secs().max(1),
            keepalive: server.keepalive_timeout,
            header: server.request_header_timeout,
            request_header: server.keepalive_timeout + server.request_header_timeout,
            read: server.client_read_timeout,
            send: server.send_timeout,
        }
    }
}

impl Edge {
    pub fn new(shared: Arc<Shared>, limits: ClientLimits) -> Self {
        let mut options = HttpServerOptions::default();
        options.h2_idle_timeout = Some(Duration::from_secs(limits.keepalive_seconds));
        Edge {
            shared,
            connector: TransportConnector::new(None),
            limits,
            options,
        }
    }
}

/// Per-request state.
pub struct RequestContext {
    started: Instant,
    runtime: Option<Arc<Runtime>>,
    connection: Option<Arc<ConnectionTls>>,
    tls: bool,
    route: Option<Route>,
    host: Option<HeaderValue>,
    request_id: HeaderValue,
    identity: Option<headers::IdentityValues>,
    user_id: Option<Arc<str>>,
    /// Cookies the edge sets on whatever response goes out (session roll, refresh, logout).
    set_cookies: Vec<String>,
    upstream_target: Option<usize>,
    upstream_started: Option<Instant>,
    rejection: Option<&'static str>,
    /// Counted as in flight (see [`Shared::request_started`]).
    counted: bool,
}

/// What request routing decided.
enum Step {
    Forward,
    Answered,
}

fn tls_of(session: &Downstream<'_>) -> (bool, Option<Arc<ConnectionTls>>) {
    let ssl = session.ssl_digest();
    let connection = ssl.and_then(|ssl| ssl.extension.get::<Arc<ConnectionTls>>()).cloned();
    (ssl.is_some(), connection)
}

impl Edge {
    async fn route(
        &self,
        session: &mut Downstream<'_>,
        context: &mut RequestContext,
        runtime: &Runtime,
    ) -> std::result::Result<Step, Rejection> {
        let request = session.req_header();
        let authority = request.uri.authority().map(|a| a.as_str().as_bytes());
        let raw_host = authority
            .or_else(|| request.headers.get(http::header::HOST).map(HeaderValue::as_bytes))
            .ok_or(Rejection::MissingHost)?;
        let mut buffer = [0u8; host::MAX_NAME_LENGTH + 2];
        let host = host::normalize(raw_host, &mut buffer).map_err(Rejection::BadHost)?;
        if !context.tls
            && let Some(token) = request.uri.path().strip_prefix(ACME_CHALLENGE_PREFIX)
            && let Some(responder) = &self.shared.http01
        {
            // Boxed: a cold path (shared storage) kept out of every connection's future.
            let answer = Box::pin(responder.key_authorization(host, token))
                .await
                .ok_or(Rejection::NotFound)?;
            metrics::global()
                .acme_challenges_answered
                .with_label_values(&["http-01"])
                .inc();
            rejection::respond(
                session,
                200,
                &[("content-type", "application/octet-stream")],
                Bytes::from(answer),
            )
            .await
            .map_err(|_| Rejection::NotFound)?;
            return Ok(Step::Answered);
        }
        if context.tls {
            // Fail closed: a TLS connection without a known certificate serves nothing.
            let covered = context
                .connection
                .as_ref()
                .is_some_and(|tls| tls.certificate.covers(host));
            if !covered {
                return Err(Rejection::Misdirected);
            }
        }
        let route = runtime.snapshot.hosts.resolve(host).ok_or(Rejection::UnknownHost)?;
        context.route = Some(route);
        context.host = HeaderValue::from_str(host).ok();
        let application = runtime.snapshot.application(route.application);

        if !context.tls && application.production {
            let port = self.shared.https_port();
            let path = request.uri.path_and_query().map_or("/", |p| p.as_str());
            let location = if port == 443 {
                format!("https://{host}{path}")
            } else {
                format!("https://{host}:{port}{path}")
            };
            rejection::respond(session, 308, &[("location", &location)], Bytes::new())
                .await
                .map_err(|_| Rejection::NotFound)?;
            context.rejection = Some("https_required");
            return Ok(Step::Answered);
        }
        if request.uri.path() == auth::EDGE_JWKS_PATH {
            let jwks = self.shared.auth.edge_jwks();
            rejection::respond(session, 200, &[("content-type", "application/jwk-set+json")], jwks)
                .await
                .map_err(|_| Rejection::NotFound)?;
            return Ok(Step::Answered);
        }
        let Some(application_auth) = &runtime.applications[route.application as usize].auth else {
            return Ok(Step::Forward);
        };
        let authority = std::str::from_utf8(raw_host).unwrap_or(host);
        let auth_request = auth::AuthRequest {
            method: &request.method,
            path: request.uri.path(),
            query: request.uri.query(),
            host,
            authority,
            tls: context.tls,
            headers: &request.headers,
            route,
            application,
        };
        let decision = application_auth.handle(&auth_request).await;
        match decision {
            auth::Decision::Forward { identity, set_cookies } => {
                context.set_cookies = set_cookies;
                if let Some(identity) = identity {
                    if let Some(tenant) = identity.tenant {
                        context.route = Some(Route {
                            tenant: Some(tenant),
                            ..route
                        });
                    }
                    context.user_id = Some(identity.user_id);
                    context.identity = Some(identity.values);
                }
                Ok(Step::Forward)
            }
            auth::Decision::Respond(response) => {
                let headers: Vec<(&'static str, &str)> = response
                    .headers
                    .iter()
                    .map(|(name, value)| (*name, value.as_str()))
                    .collect();
                rejection::respond(session, response.status, &headers, response.body)
                    .await
                    .map_err(|_| Rejection::NotFound)?;
                Ok(Step::Answered)
            }
            auth::Decision::Reject { error, set_cookies } => {
                context.set_cookies = set_cookies;
                Err(Rejection::Auth(error))
            }
        }
    }

    async fn reject(
        &self,
        session: &mut Downstream<'_>,
        context: &mut RequestContext,
        rejection: Rejection,
    ) -> Result<()> {
        let status = rejection.status(context.tls);
        let code = rejection.code();
        context.rejection = Some(code);
        metrics::global().rejections.with_label_values(&[code]).inc();
        let request_id = context.request_id.to_str().unwrap_or_default();
        let body = rejection::error_body(code, &rejection.to_string(), request_id);
        let mut extra: Vec<(&'static str, &str)> = vec![("content-type", "application/json")];
        let challenge;
        if let Rejection::Auth(error) = &rejection
            && let Some(value) = error.www_authenticate()
        {
            challenge = value;
            extra.push(("www-authenticate", &challenge));
        }
        extra.push(("x-request-id", request_id));
        for cookie in &context.set_cookies {
            extra.push(("set-cookie", cookie));
        }
        self.sent(rejection::respond(session, status, &extra, body)).await
    }
}

/// The phases of one request, called in order by [`forward`]'s request loop.
impl Edge {
    fn new_context(&self) -> RequestContext {
        RequestContext {
            started: Instant::now(),
            runtime: None,
            connection: None,
            tls: false,
            route: None,
            host: None,
            request_id: HeaderValue::from_static(""),
            identity: None,
            user_id: None,
            set_cookies: Vec::new(),
            upstream_target: None,
            upstream_started: None,
            rejection: None,
            counted: false,
        }
    }

    /// Routes and authorizes the request. Returns `true` when the edge answered it itself.
    async fn admit(&self, session: &mut Downstream<'_>, context: &mut RequestContext) -> Result<bool> {
        self.shared.request_started();
        context.counted = true;
        if self.shared.is_draining() {
            // Shutting down: finish this request, then close the connection.
            session.close_after();
        }
        context.request_id = self.shared.request_ids.next();
        (context.tls, context.connection) = tls_of(session);
        let runtime = self.shared.runtime();
        let step = self.route(session, context, &runtime).await;
        context.runtime = Some(runtime);
        match step {
            Ok(Step::Forward) => Ok(false),
            Ok(Step::Answered) => Ok(true),
            Err(rejection) => {
                self.reject(session, context, rejection).await?;
                Ok(true)
            }
        }
    }

    /// The upstream request header: the client's minus hop-by-hop and identity fields, plus the
    /// edge's own (see [`headers::upstream_request`]).
    fn upstream_request(
        &self,
        session: &Downstream<'_>,
        context: &mut RequestContext,
        body_expected: bool,
    ) -> Result<headers::UpstreamRequest> {
        let (Some(runtime), Some(route)) = (&context.runtime, context.route) else {
            return Error::e_explain(ErrorType::InternalError, "upstream request without a route");
        };
        let application = &runtime.applications[route.application as usize];
        let no_host = HeaderValue::from_static("");
        let host = context.host.as_ref().unwrap_or(&no_host);
        let forwarded = headers::Forwarded {
            application_id: &application.id,
            tenant: route.tenant.map(|tenant| &application.tenants[tenant as usize]),
            host,
            tls: context.tls,
            client_ip: session
                .client_addr()
                .and_then(|address| address.as_inet())
                .map(|inet| inet.ip()),
            request_id: &context.request_id,
            identity: context.identity.as_ref(),
        };
        let request = headers::upstream_request(
            session.req_header(),
            &runtime.reserved,
            &runtime.names,
            &forwarded,
            body_expected,
        )
        .map_err(|e| e.into_down())?;
        context.upstream_started = Some(Instant::now());
        Ok(request)
    }

    /// The final response header: the upstream's minus its hop-by-hop fields, plus the edge's
    /// request id and cookies.
    fn response_header(&self, upstream_response: &mut ResponseHeader, context: &mut RequestContext) -> Result<()> {
        headers::strip_response_hop_by_hop(upstream_response);
        if let Some(runtime) = &context.runtime {
            upstream_response.insert_header(runtime.request_id_name.clone(), context.request_id.clone())?;
        }
        for cookie in context.set_cookies.drain(..) {
            upstream_response.append_header("set-cookie", cookie)?;
        }
        Ok(())
    }

    /// A request that could not be completed: answers with the mapped status when no response
    /// has started, and never reuses the connection.
    async fn fail(&self, session: &mut Downstream<'_>, error: &Error, context: &mut RequestContext) {
        session.close_after();
        let rejection = match (error.esource(), error.etype()) {
            (_, ErrorType::HTTPStatus(code)) => return self.fail_with_status(session, *code).await,
            (
                ErrorSource::Upstream,
                ErrorType::ConnectTimedout
                | ErrorType::ConnectRefused
                | ErrorType::ConnectNoRoute
                | ErrorType::ConnectError
                | ErrorType::TLSHandshakeFailure,
            ) => Rejection::UpstreamUnreachable,
            (ErrorSource::Upstream, ErrorType::ReadTimedout | ErrorType::WriteTimedout) => Rejection::UpstreamTimeout,
            (ErrorSource::Upstream, _) => Rejection::UpstreamFailed,
            (
                ErrorSource::Downstream,
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::WriteTimedout | ErrorType::ConnectionClosed,
            ) => {
                return;
            }
            (ErrorSource::Downstream, _) => return self.fail_with_status(session, 400).await,
            _ => return self.fail_with_status(session, 500).await,
        };
        if let (Some(runtime), Some(route)) = (&context.runtime, context.route) {
            let application = &runtime.snapshot.application(route.application).id;
            let kind = rejection.code();
            metrics::global()
                .upstream_errors
                .with_label_values(&[application, kind])
                .inc();
        }
        tracing::warn!(request_id = context.request_id.to_str().unwrap_or_default(), %error, "upstream exchange failed");
        if session.response_status().is_none() {
            let _ = self.reject(session, context, rejection).await;
        } else {
            context.rejection = Some(rejection.code());
        }
    }

    async fn fail_with_status(&self, session: &mut Downstream<'_>, status: u16) {
        if session.response_status().is_none() {
            let _ = session.respond_error(status).await;
        }
    }

    /// Counts and logs the request, once.
    fn log(&self, session: &Downstream<'_>, context: &mut RequestContext) {
        if std::mem::take(&mut context.counted) {
            self.shared.request_finished();
        }
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(context.started);
        let upstream_elapsed = context
            .upstream_started
            .map(|started| now.saturating_duration_since(started));
        let status = session.response_status().unwrap_or(0);
        let runtime = context.runtime.as_ref();
        let application = runtime.zip(context.route).map(|(runtime, route)| {
            (
                &runtime.applications[route.application as usize],
                runtime.snapshot.application(route.application),
                route,
            )
        });
        if let Some((application_runtime, _, _)) = application {
            application_runtime.metrics.count_status(status);
            application_runtime
                .metrics
                .request_duration
                .observe(elapsed.as_secs_f64());
            let edge = elapsed.saturating_sub(upstream_elapsed.unwrap_or(Duration::ZERO));
            application_runtime.metrics.edge_duration.observe(edge.as_secs_f64());
            if let Some(upstream) = upstream_elapsed {
                application_runtime
                    .metrics
                    .upstream_duration
                    .observe(upstream.as_secs_f64());
            }
        }
        if let Some((_, application, route)) = application
            && let Some(tenant) = route.tenant
            && runtime.is_some_and(|runtime| runtime.snapshot.observability.tenant_labels)
        {
            let tenant_id = &application.tenants[tenant as usize].id;
            metrics::global()
                .tenant_requests
                .with_label_values(&[&application.id, tenant_id])
                .inc();
        }
        if !self.shared.access_log.is_enabled() {
            return;
        }
        let request = session.req_header();
        let entry = Entry {
            time: access_log::timestamp(SystemTime::now()),
            request_id: context.request_id.to_str().unwrap_or_default(),
            application: application.map(|(_, application, _)| &*application.id),
            tenant: application
                .and_then(|(_, application, route)| route.tenant.map(|t| &*application.tenants[t as usize].id)),
            user_id: context.user_id.as_deref(),
            method: request.method.as_str(),
            path: request.uri.path(),
            status,
            bytes: session.body_bytes_sent(),
            edge_ms: elapsed
                .saturating_sub(upstream_elapsed.unwrap_or(Duration::ZERO))
                .as_secs_f64()
                * 1e3,
            upstream_ms: upstream_elapsed.map(|elapsed| elapsed.as_secs_f64() * 1e3),
            tls_version: context.connection.as_ref().map(|tls| tls.version),
            sni: context.connection.as_ref().map(|tls| &*tls.server_name),
            client: session.client_addr().map(|address| address.to_string()),
            rejection: context.rejection,
        };
        self.shared.access_log.record(&entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_futures_make_a_timer_only_when_they_wait() {
        let ready = bounded(Duration::from_millis(10), async { 7 });
        assert!(ready.timer.is_none());
        assert_eq!(ready.await.unwrap(), 7);

        let mut waiting = std::pin::pin!(bounded(Duration::from_millis(50), std::future::pending::<()>()));
        let first = std::future::poll_fn(|context| std::task::Poll::Ready(waiting.as_mut().poll(context))).await;
        assert!(first.is_pending());
        assert!(waiting.timer.is_some(), "armed on the first wait");
        let started = Instant::now();
        assert!(waiting.await.is_err());
        assert!(
            started.elapsed() >= Duration::from_millis(30),
            "{:?}",
            started.elapsed()
        );

        let later = bounded(Duration::from_secs(5), tokio::time::sleep(Duration::from_millis(20)));
        assert!(later.await.is_ok(), "finishing within the limit");
    }

    #[test]
    fn the_header_budget_covers_the_keep_alive_wait() {
        let mut server = crate::config::parse(crate::config::tests_support::MINIMAL, &crate::config::Source::Embedded)
            .unwrap()
            .server;
        server.keepalive_timeout = Duration::from_secs(60);
        let limits = ClientLimits::new(&server);
        assert_eq!(limits.keepalive_seconds, 60);
        assert_eq!(
            limits.request_header,
            Duration::from_secs(60) + server.request_header_timeout
        );
    }
}
