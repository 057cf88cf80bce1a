//! Trace context in message attributes, and (feature `export`) logs on
//! stdout with spans exported over OTLP/gRPC when an endpoint is configured
//! (`[telemetry]` of the broker, or `OTEL_EXPORTER_OTLP_ENDPOINT`).
//!
//! Export runs on the OpenTelemetry SDK's batch processor: spans are queued
//! and sent in batches from its own thread, and dropped when the queue is
//! full, so a slow or absent collector never holds up the data path. The
//! exporter's own HTTP/2 and gRPC spans are filtered out, or every export
//! would trace itself.
//!
//! Trace context crosses the broker in message attributes: a producer puts
//! a W3C `traceparent` on each message it traces, the broker's spans
//! continue it, and consumers get the attribute with the message (see
//! [`TRACEPARENT`]).
//!
//! Sampling is decided once, where a trace starts. A client starts a trace
//! for a share [`sampling_ratio`] of the batches it sends: one send span
//! for the batch, whose context the batch's first message carries. The
//! other batches get no span and their messages no `traceparent`, so an
//! untraced batch costs the client one random number, and the broker and
//! the consumers nothing per message. The broker's own per-batch spans for
//! batches without a traced message (from clients that do not trace) are
//! sampled by the SDK at the configured ratio.

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

/// The message attribute carrying W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The share of batches a client starts a trace for, as `f64` bits; 0
/// (no traces) until [`init`] exports spans or [`set_sampling_ratio`].
static SAMPLING_RATIO: AtomicU64 = AtomicU64::new(0);

/// The share of new traces (0.0 to 1.0) started where a trace may start:
/// 0 unless spans are exported.
pub fn sampling_ratio() -> f64 {
    f64::from_bits(SAMPLING_RATIO.load(Ordering::Relaxed))
}

/// Sets [`sampling_ratio`], for an application that exports spans through
/// its own OpenTelemetry setup rather than [`init`]; clamped to 0.0..=1.0.
pub fn set_sampling_ratio(ratio: f64) {
    let ratio = if ratio.is_nan() {
        0.0
    } else {
        ratio.clamp(0.0, 1.0)
    };
    SAMPLING_RATIO.store(ratio.to_bits(), Ordering::Relaxed);
}

/// Attributes held as a list of pairs, as [`carries_trace`] and
/// [`continue_trace`] take them.
pub fn pairs(attributes: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> {
    attributes.iter().map(|(k, v)| (k.as_str(), v.as_str()))
}

/// Whether `attributes` carry trace context to continue.
pub fn carries_trace<'a>(mut attributes: impl Iterator<Item = (&'a str, &'a str)>) -> bool {
    attributes.any(|(key, _)| key == TRACEPARENT)
}

/// Where spans go and how many, as a binary configures it; the standard
/// `OTEL_*` variables override it.
#[cfg(feature = "export")]
#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// OTLP/gRPC endpoint; empty: no export unless
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` names one.
    pub endpoint: String,
    /// `service.name`, unless `OTEL_SERVICE_NAME` is set.
    pub service_name: String,
    /// The share of new traces recorded, 0.0 to 1.0, unless
    /// `OTEL_TRACES_SAMPLER_ARG` holds one. Traces a message's producer
    /// recorded are always continued.
    pub sampling_ratio: f64,
    /// The `RUST_LOG`-style filter for logs when `RUST_LOG` is unset.
    pub default_log_filter: String,
    /// Logs on stderr rather than stdout (a CLI whose stdout is data).
    pub logs_on_stderr: bool,
    /// The binary starts traces itself, for a share [`sampling_ratio`] of
    /// its batches, so the SDK records every root span it is given (a
    /// client); otherwise the SDK samples roots at the ratio (a broker).
    pub caller_samples: bool,
}

/// Keeps the exporter alive; dropping it flushes the spans still queued.
#[cfg(feature = "export")]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

#[cfg(feature = "export")]
impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("flushing spans at exit failed: {error}");
        }
    }
}

/// Installs the global subscriber: logs on stdout or stderr (filtered by
/// `RUST_LOG`)
/// and, when an endpoint is configured, span export. Call once, inside the
/// tokio runtime (the exporter's channel lives on it).
///
/// # Errors
///
/// When the endpoint is not a valid URL.
#[cfg(feature = "export")]
pub fn init(config: &ExportConfig) -> Result<Telemetry, String> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};

    let writer = match config.logs_on_stderr {
        true => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
        false => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stdout),
    };
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(&config.default_log_filter)),
        );
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| config.endpoint.clone());
    if endpoint.is_empty() {
        tracing_subscriber::registry().with(logs).init();
        return Ok(Telemetry { provider: None });
    }

    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|error| format!("otlp endpoint {endpoint}: {error}"))?;
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| config.service_name.clone());
    // `Resource::builder` also reads OTEL_RESOURCE_ATTRIBUTES.
    let resource = Resource::builder().with_service_name(service).build();
    // The standard variable overrides the configured ratio.
    let ratio = std::env::var("OTEL_TRACES_SAMPLER_ARG")
        .ok()
        .and_then(|arg| arg.parse::<f64>().ok())
        .filter(|ratio| (0.0..=1.0).contains(ratio))
        .unwrap_or(config.sampling_ratio);
    let roots = match config.caller_samples {
        true => Sampler::AlwaysOn,
        false => Sampler::TraceIdRatioBased(ratio),
    };
    let sampler = Sampler::ParentBased(Box::new(roots));
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer(config.service_name.clone());
    // No timing of every enter and exit, no context switch on entering: a
    // long-lived task span is entered on every poll of its task.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_threads(false)
        .with_filter(EnvFilter::new(
            "info,h2=off,tonic=off,hyper=off,hyper_util=off,tower=off,opentelemetry=off",
        ));
    tracing_subscriber::registry().with(logs).with(spans).init();
    set_sampling_ratio(ratio);
    tracing::info!(endpoint = %endpoint, sampling_ratio = ratio, "exporting spans over otlp");
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// The remote span context a `traceparent` value names
/// (`00-<trace id>-<span id>-<flags>`), if it is one.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || trace.len() != 32 || span.len() != 16 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// The `traceparent` of `span`'s context, when it is recorded and valid.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// Makes `span` continue the trace of the message attributes
/// `attributes` carry, if any.
pub fn continue_trace<'a>(
    span: &tracing::Span,
    mut attributes: impl Iterator<Item = (&'a str, &'a str)>,
) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let Some(remote) = attributes
        .find(|(key, _)| *key == TRACEPARENT)
        .and_then(|(_, value)| parse_traceparent(value))
    else {
        return;
    };
    let parent = opentelemetry::Context::new().with_remote_span_context(remote);
    let _ = span.set_parent(parent);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_parse_and_bad_ones_are_ignored() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = parse_traceparent(good).unwrap();
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(context.is_sampled());
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
