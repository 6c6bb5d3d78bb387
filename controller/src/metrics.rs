//! Prometheus metrics.
//!
//! Process counters (enrollments, RPC errors) live in [`Metrics`]. Fleet gauges (connected
//! agents, certificate expiry in the x509-certificate-exporter style) are computed from the
//! registry and the store at scrape time, so they can never drift from the state they describe.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label for counters split by kind or result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// Kind.
    pub kind: String,
}

/// Labels of one certificate location's expiry gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    /// Agent name.
    pub agent: String,
    /// Host name.
    pub host: String,
    /// Platform of the role.
    pub platform: String,
    /// Role.
    pub role: String,
    /// Subject DN.
    pub subject: String,
    /// Fingerprint prefix.
    pub fingerprint: String,
    /// Where (`vecs MACHINE_SSL_CERT __MACHINE_CERT`, a path, …).
    pub location: String,
}

/// Label for per-status counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// Platform.
    pub platform: String,
    /// Role.
    pub role: String,
}

/// Process-lifetime counters.
#[derive(Default)]
pub struct Metrics {
    enrollments: Family<KindLabel, Counter>,
    rpc_errors: Family<KindLabel, Counter>,
    renewals: Counter,
}

impl Metrics {
    /// Counts an enrollment attempt by result (`ok`, `bad_token`, `expired_token`, …).
    pub fn enrollment(&self, result: &str) {
        self.enrollments
            .get_or_create(&KindLabel {
                kind: result.to_owned(),
            })
            .inc();
    }

    /// Counts a refused or failed RPC by kind.
    pub fn rpc_error(&self, kind: &str) {
        self.rpc_errors
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts an agent certificate renewal.
    pub fn renewal(&self) {
        self.renewals.inc();
    }

    /// A registry with the process counters, to which scrape-time gauges are added.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("certfleet");
        r.register(
            "enrollments",
            "Agent enrollment attempts by result",
            self.enrollments.clone(),
        );
        r.register(
            "rpc_errors",
            "Refused or failed RPCs by kind",
            self.rpc_errors.clone(),
        );
        r.register(
            "agent_certificate_renewals",
            "Agent certificates renewed over the live link",
            self.renewals.clone(),
        );
        r
    }
}

/// Adds a plain gauge to a scrape registry.
pub fn gauge(r: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    r.register(name, help, g);
}
