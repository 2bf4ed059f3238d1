//! JSON logs and the process-wide Prometheus recorder.
//!
//! The recorder is global (one per process), so `exchange all` exposes every
//! service's series on every `/metrics`; the `service` label tells them apart.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets for `http_request_duration_seconds` (seconds).
const HTTP_DURATION_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the JSON log subscriber once; later calls are no-ops (tests).
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The process-wide Prometheus handle; installs the recorder on first use.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("http_request_duration_seconds".into()),
                HTTP_DURATION_BUCKETS,
            )
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a test harness); then
        // this handle renders an empty registry rather than panicking.
        let _ = metrics::set_global_recorder(recorder);
        describe_metrics();
        handle
    })
}

fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "http_requests_total",
        "HTTP requests answered, by service, method, route template and status"
    );
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by service and route template"
    );
    describe_gauge!(
        "exchange_ready",
        "1 when the service's /ready answers ok, 0 when degraded"
    );
    describe_gauge!(
        "exchange_consumer_up",
        "1 while a stream consumer loop's heartbeat is fresh"
    );
    describe_counter!(
        crate::consumer_name::CONFLICTS_METRIC,
        "Claims of a consumer name that found another live process's claim (two processes under one *_CONSUMER_NAME)"
    );
    describe_gauge!(
        "exchange_stream_lag",
        "Entries in the stream not yet delivered to the group"
    );
    describe_gauge!(
        "exchange_stream_pending",
        "Entries delivered to the group and not yet acknowledged"
    );
    describe_gauge!(
        "exchange_stream_dlq_length",
        "Entries in the stream's dead-letter stream"
    );
    describe_counter!(
        "exchange_orders_accepted_total",
        "Orders accepted by the order service, by market"
    );
    describe_counter!("exchange_trades_total", "Trades executed, by market");
    describe_gauge!(
        "exchange_ws_connections",
        "Open WebSocket connections, by service and kind"
    );
    describe_gauge!("exchange_market_halted", "1 when the market is halted");
    describe_counter!(
        "exchange_db_reads_total",
        "History reads (exchange_common::replica), by the database that served them: replica or primary"
    );
    describe_gauge!(
        "exchange_db_read_replica_lag_seconds",
        Unit::Seconds,
        "How far the read replica (DB_READ_URL) is behind the primary, at most (WAL positions compared)"
    );
    describe_gauge!(
        "exchange_db_read_replica_up",
        "1 when the read replica answered the last lag check as a standby"
    );
    describe_gauge!(
        "exchange_db_read_replica_in_use",
        "1 while history reads go to the read replica (up and within DB_READ_MAX_LAG_MS)"
    );
    describe_gauge!(
        "exchange_reconcile_ok",
        "1 when the last reconciliation found the invariant to hold"
    );
    describe_gauge!(
        "exchange_reconcile_last_run_timestamp_seconds",
        Unit::Seconds,
        "Unix time of the last reconciliation run"
    );
}
