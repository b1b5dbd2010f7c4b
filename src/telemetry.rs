//! Logging and tracing. Logs go to standard error (standard output carries events for the
//! `stdout` sink): human-readable on a terminal, JSON lines otherwise; `RUST_LOG` sets the filter
//! (default `info`). When `telemetry.otlp_endpoint` is configured, spans (one per poll, per page
//! and per sink write, each with the tenant id) and the counters of [`crate::metrics`] are also
//! exported over OTLP/HTTP.
//!
//! The OpenTelemetry layer sits in the subscriber from the start, empty, and is filled once the
//! configuration is loaded (its errors must be logged before that).

use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    Auto,
    Json,
    Text,
}

type OtelLayer = tracing_opentelemetry::OpenTelemetryLayer<Registry, SdkTracer>;

struct Telemetry {
    otel: reload::Handle<Option<OtelLayer>, Registry>,
    provider: Mutex<Option<SdkTracerProvider>>,
    meters: Mutex<Option<SdkMeterProvider>>,
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

/// Installs the global subscriber. Call once, from `main`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let (otel, handle) = reload::Layer::new(None::<OtelLayer>);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let fmt = if json {
        fmt.json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed()
    } else {
        fmt.boxed()
    };
    tracing_subscriber::registry()
        .with(otel)
        .with(fmt)
        .with(filter)
        .init();
    let _ = TELEMETRY.set(Telemetry {
        otel: handle,
        provider: Mutex::new(None),
        meters: Mutex::new(None),
    });
}

/// Starts exporting spans to `<endpoint>/v1/traces` and metrics to `<endpoint>/v1/metrics`
/// every `metrics_every` (OTLP over HTTP, protobuf).
pub fn enable_otlp(
    endpoint: &url::Url,
    service_name: &str,
    metrics_every: std::time::Duration,
) -> anyhow::Result<()> {
    let Some(t) = TELEMETRY.get() else {
        anyhow::bail!("telemetry is not initialized");
    };
    crate::net::install_crypto_provider();
    let base = endpoint.as_str().trim_end_matches('/');
    let url = format!("{base}/v1/traces");
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_string())
        .build();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url.clone())
        .build()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot set up the OTLP exporter for {url}: {e} (key telemetry.otlp_endpoint)"
            )
        })?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.clone())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("wiz-connector"));
    t.otel
        .reload(Some(layer))
        .map_err(|e| anyhow::anyhow!("cannot enable tracing export: {e}"))?;
    *t.provider.lock().expect("telemetry lock") = Some(provider);

    let metrics_url = format!("{base}/v1/metrics");
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_endpoint(metrics_url.clone())
        .build()
        .map_err(|e| anyhow::anyhow!("cannot set up the OTLP metric exporter for {metrics_url}: {e} (key telemetry.otlp_endpoint)"))?;
    let reader = PeriodicReader::builder(exporter)
        .with_interval(metrics_every)
        .build();
    let meters = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource)
        .build();
    *t.meters.lock().expect("telemetry lock") = Some(meters);
    tracing::info!(traces = %url, metrics = %metrics_url, "exporting traces and metrics over OTLP");
    Ok(())
}

/// The meter of the OTLP metrics pipeline, when one is enabled.
pub fn meter() -> Option<opentelemetry::metrics::Meter> {
    use opentelemetry::metrics::MeterProvider as _;
    let t = TELEMETRY.get()?;
    let guard = t.meters.lock().expect("telemetry lock");
    guard.as_ref().map(|p| p.meter("wiz-connector"))
}

/// Flushes and stops the span exporter, if any. Call before the process exits.
pub fn shutdown() {
    let Some(t) = TELEMETRY.get() else { return };
    let provider = t.provider.lock().expect("telemetry lock").take();
    if let Some(p) = provider {
        if let Err(e) = p.shutdown() {
            tracing::warn!(error = %e, "could not flush the last spans");
        }
    }
    let meters = t.meters.lock().expect("telemetry lock").take();
    if let Some(m) = meters {
        if let Err(e) = m.shutdown() {
            tracing::warn!(error = %e, "could not export the last metrics");
        }
    }
}
