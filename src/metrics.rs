//! Prometheus metrics for the whole process.
//!
//! Contract:
//! - One registry, served on the admin listener at `/metrics` in the text format.
//! - Label sets are bounded: application and tenant ids come from the configuration (tenant
//!   labels only when `observability.tenant_labels` is on), reasons and results from fixed lists;
//!   raw hosts or paths from clients never become label values.
//! - The request path touches no lock: per-application children are resolved once per snapshot
//!   ([`ApplicationMetrics`]), so a request costs a few atomic increments.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::tls::LoadedCertificate;

/// Latency buckets (seconds) for request, edge and upstream timings.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets (seconds) for how long a first handshake waits for an on-demand certificate.
const ISSUANCE_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0];

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub tenant_requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub edge_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub rejections: IntCounterVec,
    pub auth_outcomes: IntCounterVec,
    pub jwks_fetches: IntCounterVec,
    pub token_cache_entries: IntGauge,
    pub tls_handshakes: IntCounterVec,
    pub tls_handshake_failures: IntCounterVec,
    pub acme_orders: IntCounterVec,
    pub acme_orders_in_flight: IntGauge,
    pub acme_refusals: IntCounterVec,
    pub acme_challenges_answered: IntCounterVec,
    pub acme_handshake_wait: Histogram,
    pub acme_renewals: IntCounterVec,
    pub certificate_expiry: GaugeVec,
    pub config_reloads: IntCounterVec,
    pub config_last_success: Gauge,
    pub config_info: IntGaugeVec,
    pub build_info: IntGaugeVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter definition");
    registry.register(Box::new(metric.clone())).expect("unique metric name");
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let metric = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)
        .expect("valid histogram definition");
    registry.register(Box::new(metric.clone())).expect("unique metric name");
    metric
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge definition");
    registry.register(Box::new(metric.clone())).expect("unique metric name");
    metric
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let acme_orders_in_flight = IntGauge::new(
            "vestibule_acme_orders_in_flight",
            "ACME orders currently being processed",
        )
        .expect("gauge");
        registry
            .register(Box::new(acme_orders_in_flight.clone()))
            .expect("unique metric name");
        let token_cache_entries = IntGauge::new(
            "vestibule_token_cache_entries",
            "Verified bearer tokens currently cached",
        )
        .expect("gauge");
        registry
            .register(Box::new(token_cache_entries.clone()))
            .expect("unique metric name");
        let acme_handshake_wait = Histogram::with_opts(
            HistogramOpts::new(
                "vestibule_acme_handshake_wait_seconds",
                "Time a first handshake waited for its on-demand certificate",
            )
            .buckets(ISSUANCE_BUCKETS.to_vec()),
        )
        .expect("histogram");
        registry
            .register(Box::new(acme_handshake_wait.clone()))
            .expect("unique metric name");
        let certificate_expiry = GaugeVec::new(
            Opts::new(
                "vestibule_certificate_expiry_seconds",
                "Seconds since the epoch at which a certificate expires",
            ),
            &["certificate", "source"],
        )
        .expect("gauge");
        registry
            .register(Box::new(certificate_expiry.clone()))
            .expect("unique metric name");
        let config_last_success = Gauge::new(
            "vestibule_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully",
        )
        .expect("gauge");
        registry
            .register(Box::new(config_last_success.clone()))
            .expect("unique metric name");
        let metrics = Metrics {
            requests: counter(
                r,
                "vestibule_requests_total",
                "Requests by application and status class",
                &["application", "status_class"],
            ),
            tenant_requests: counter(
                r,
                "vestibule_tenant_requests_total",
                "Requests by tenant (only with observability.tenant_labels)",
                &["application", "tenant"],
            ),
            request_duration: histogram(
                r,
                "vestibule_request_duration_seconds",
                "Whole request time as seen by the edge",
                &["application"],
                LATENCY_BUCKETS,
            ),
            edge_duration: histogram(
                r,
                "vestibule_edge_overhead_seconds",
                "Request time spent in the edge itself (total minus upstream)",
                &["application"],
                LATENCY_BUCKETS,
            ),
            upstream_duration: histogram(
                r,
                "vestibule_upstream_duration_seconds",
                "Time from sending the request upstream to the end of its response",
                &["application"],
                LATENCY_BUCKETS,
            ),
            upstream_errors: counter(
                r,
                "vestibule_upstream_errors_total",
                "Failed upstream exchanges",
                &["application", "kind"],
            ),
            rejections: counter(
                r,
                "vestibule_rejections_total",
                "Requests refused by the edge, by reason",
                &["reason"],
            ),
            auth_outcomes: counter(
                r,
                "vestibule_auth_outcomes_total",
                "Authentication results",
                &["application", "outcome"],
            ),
            jwks_fetches: counter(
                r,
                "vestibule_jwks_fetches_total",
                "JWKS and discovery fetches",
                &["result"],
            ),
            token_cache_entries,
            tls_handshakes: counter(
                r,
                "vestibule_tls_handshakes_total",
                "Completed TLS handshakes",
                &["version"],
            ),
            tls_handshake_failures: counter(
                r,
                "vestibule_tls_handshake_failures_total",
                "Connections refused before or during the TLS handshake",
                &["reason"],
            ),
            acme_orders: counter(r, "vestibule_acme_orders_total", "ACME orders by result", &["result"]),
            acme_orders_in_flight,
            acme_refusals: counter(
                r,
                "vestibule_acme_refusals_total",
                "On-demand requests refused before any ACME traffic",
                &["reason"],
            ),
            acme_challenges_answered: counter(
                r,
                "vestibule_acme_challenges_answered_total",
                "ACME validation requests answered",
                &["challenge"],
            ),
            acme_handshake_wait,
            acme_renewals: counter(
                r,
                "vestibule_acme_renewals_total",
                "Certificate renewals by result",
                &["result"],
            ),
            certificate_expiry,
            config_reloads: counter(
                r,
                "vestibule_config_reloads_total",
                "Configuration loads by result",
                &["result"],
            ),
            config_last_success,
            config_info: gauge_vec(
                r,
                "vestibule_config_info",
                "The live configuration's fingerprint (value 1)",
                &["fingerprint"],
            ),
            build_info: gauge_vec(
                r,
                "vestibule_build_info",
                "Build information (value 1)",
                &["version", "pingora"],
            ),
            registry,
        };
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), "0.9.1"])
            .set(1);
        metrics
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buffer = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        buffer
    }

    /// `source` is `configured` or `managed`; the label is the certificate's first name, which
    /// comes from configuration or an issued certificate, never from a client.
    pub fn record_certificate(&self, certificate: &LoadedCertificate, source: &str) {
        if let Some(name) = certificate.names.first() {
            self.certificate_expiry
                .with_label_values(&[name, source])
                .set(certificate.not_after as f64);
        }
    }

    /// Records a configuration load.
    pub fn record_reload(&self, fingerprint: Option<&str>) {
        match fingerprint {
            Some(fingerprint) => {
                self.config_reloads.with_label_values(&["success"]).inc();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |elapsed| elapsed.as_secs_f64());
                self.config_last_success.set(now);
                self.config_info.reset();
                self.config_info.with_label_values(&[fingerprint]).set(1);
            }
            None => self.config_reloads.with_label_values(&["failure"]).inc(),
        }
    }
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Status classes used as label values.
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// Children of the request metrics for one application, resolved once per snapshot.
pub struct ApplicationMetrics {
    requests: [IntCounter; 6],
    pub request_duration: Histogram,
    pub edge_duration: Histogram,
    pub upstream_duration: Histogram,
}

impl ApplicationMetrics {
    pub fn new(application: &str) -> Self {
        let metrics = global();
        ApplicationMetrics {
            requests: STATUS_CLASSES.map(|class| metrics.requests.with_label_values(&[application, class])),
            request_duration: metrics.request_duration.with_label_values(&[application]),
            edge_duration: metrics.edge_duration.with_label_values(&[application]),
            upstream_duration: metrics.upstream_duration.with_label_values(&[application]),
        }
    }

    pub fn count_status(&self, status: u16) {
        let index = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            500..=599 => 4,
            _ => 5,
        };
        self.requests[index].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_named_series() {
        let application = ApplicationMetrics::new("metrics-test-app");
        application.count_status(204);
        application.count_status(503);
        let text = String::from_utf8(global().render()).unwrap();
        assert!(
            text.contains(r#"vestibule_requests_total{application="metrics-test-app",status_class="2xx"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"vestibule_requests_total{application="metrics-test-app",status_class="5xx"} 1"#));
        assert!(text.contains("vestibule_build_info{"));
    }
}
