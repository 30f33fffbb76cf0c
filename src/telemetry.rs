//! Logs and traces.
//!
//! Logs: JSON lines in production (pretty locally), each carrying the node id and, inside a
//! span that knows them, the `trace_id`, `conn` and `room` at the top level, so one query
//! finds every line of one message's trace or of one connection.
//!
//! Traces: OpenTelemetry, off unless `telemetry.otlp_endpoint` is set. Then an OTLP/HTTP
//! (protobuf) exporter is built, sending through our reqwest client on the runtime, and a
//! `tracing-opentelemetry` layer listens to the spans of `chatty_actors::trace::TARGET`
//! only; which messages have such spans is decided once per message at the edge
//! ([`receive_span`]). Off, no exporter, processor or layer exists.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chatty_actors::trace::{self, TraceParent, TARGET};
use chatty_actors::{Cid, ConnId, RoomId};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SamplingDecision, SamplingResult, SdkTracerProvider,
    ShouldSample, SpanData, SpanExporter,
};
use opentelemetry_sdk::Resource;
use prometheus::IntCounterVec;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::settings::{Settings, TelemetrySettings};

/// Spans the exporter handed to the collector, by outcome (process-wide: one exporter per
/// process; every app registry built in it serves the same counter).
pub static SPANS_EXPORTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        prometheus::Opts::new(
            "chatty_trace_spans_exported_total",
            "Trace spans sent to the OTLP collector, by result (ok, failed).",
        ),
        &["result"],
    )
    .expect("a valid metric")
});

/// What `init` built; shutting it down flushes the spans still queued.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Export what is queued and stop the exporter (bounded by its export timeout). Call it
    /// after the server stopped, while the runtime still runs: the export's HTTP request is
    /// a task on it.
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown() {
                tracing::warn!(error = %e, "trace export did not finish");
            }
        }
    }
}

/// Install the global subscriber once: logs as `log.format` says, and traces when
/// `telemetry.otlp_endpoint` is set (the exporter's requests run on `rt`).
pub fn init(settings: &Settings, rt: &tokio::runtime::Handle) -> anyhow::Result<Telemetry> {
    let provider = if settings.telemetry.enabled() {
        Some(provider(
            &settings.telemetry,
            &settings.node.id,
            rt.clone(),
        )?)
    } else {
        None
    };
    // One filter for every layer (no per-layer filters: with them, spans were now and then
    // not seen by the OpenTelemetry layer, so sampled messages went untraced). The trace
    // spans are always let through; the sampler exports only them.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("chatty"))
            // Every trace span names its parent explicitly: no need to track the
            // current OpenTelemetry context, or busy/idle time, on each poll of every
            // instrumented future (a connection's reader, say).
            .with_context_activation(false)
            .with_tracked_inactivity(false)
    });
    let _ = Registry::default()
        .with(filter(&settings.log.level))
        .with(log_layer(
            &settings.log.format,
            Some(settings.node.id.as_str()),
        ))
        .with(otel)
        .try_init();
    let ratio = settings.telemetry.sample_ratio;
    trace::configure(provider.as_ref().map(|_| ratio));
    if provider.is_some() {
        tracing::info!(
            endpoint = %traces_url(&settings.telemetry.otlp_endpoint),
            sample_ratio = ratio,
            "tracing on"
        );
    }
    Ok(Telemetry { provider })
}

/// Logs only, no traces (the `migrate` command).
pub fn init_logs(format: &str, level: &str) {
    let _ = Registry::default()
        .with(filter(level))
        .with(log_layer(format, None))
        .try_init();
}

/// For tests: logs only when `TEST_LOG` is set.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        init_logs("pretty", "info,chatty=debug,chatty_actors=debug");
    }
}

/// `level` (or `RUST_LOG`), and the trace spans (they print nothing themselves, and a
/// warning inside one then names its trace even when `level` hides `info`).
fn filter(level: &str) -> EnvFilter {
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| level.to_owned());
    EnvFilter::new(format!("{directives},{TARGET}=info"))
}

/// The log layer: `json` (with the capture of the ids a line lifts out of its spans) or
/// pretty.
fn log_layer<S>(format: &str, node: Option<&str>) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if format == "json" {
        let line = JsonLine {
            node: node.map(Arc::from),
        };
        IdsLayer.and_then(fmt.event_format(line)).boxed()
    } else {
        fmt.compact().boxed()
    }
}

/// The span of a message arriving at this node's edge (`source`: `socket` or `http`), if it
/// is to be traced: a caller's `traceparent` decides (a sampled one is followed, an unsampled
/// one is not traced), else `telemetry.sample_ratio` does: the span and its context, which
/// the message carries on. `None` while tracing is off.
pub fn receive_span(
    source: &'static str,
    caller: Option<(TraceParent, bool)>,
    room: &RoomId,
    cid: &Cid,
    conn: Option<&ConnId>,
) -> Option<(tracing::Span, TraceParent)> {
    let sampled = match caller {
        Some((_, sampled)) => sampled && trace::enabled(),
        None => trace::sample(),
    };
    if !sampled {
        return None;
    }
    let span = tracing::info_span!(
        target: TARGET, parent: None, "chatty.receive",
        otel.kind = "server", source, room = %room, cid = %cid,
        conn = tracing::field::Empty, trace_id = tracing::field::Empty,
        decode_us = tracing::field::Empty,
    );
    if let Some(c) = conn {
        span.record("conn", c.0);
    }
    let tp = match caller {
        Some((parent, _)) => trace::follow(&span, &parent),
        None => TraceParent::of(&span),
    }?;
    span.record("trace_id", tp.trace_id());
    Some((span, tp))
}

/// `http://collector:4318` → `http://collector:4318/v1/traces`; a URL with a path of its own
/// is used as it is (a proxy's route, say).
fn traces_url(endpoint: &str) -> String {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    match rest.find('/') {
        Some(i) if rest[i..].len() > 1 => endpoint.to_owned(),
        _ => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
    }
}

fn provider(
    t: &TelemetrySettings,
    node: &str,
    rt: tokio::runtime::Handle,
) -> anyhow::Result<SdkTracerProvider> {
    let timeout = Duration::from_millis(t.export_timeout_ms);
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| anyhow::anyhow!("telemetry: building the HTTP client: {e}"))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(OnRuntime { client, rt })
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(traces_url(&t.otlp_endpoint))
        .with_timeout(timeout)
        .build()
        .map_err(|e| anyhow::anyhow!("telemetry.otlp_endpoint: {e}"))?;
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(t.max_queue)
        .with_max_export_batch_size(512.min(t.max_queue))
        .with_scheduled_delay(Duration::from_millis(500))
        .build();
    let processor = BatchSpanProcessor::builder(Counted(exporter))
        .with_batch_config(batch)
        .build();
    // OTEL_RESOURCE_ATTRIBUTES (an ECS task ARN, say) is read by the default detectors.
    let resource = Resource::builder()
        .with_service_name(t.service_name.clone())
        .with_attributes([
            KeyValue::new("service.instance.id", node.to_owned()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .with_sampler(OursOnly)
        .build())
}

/// Every span of `TARGET` (all named `chatty.*`) belongs to a message the edge sampled: keep
/// them all. The layer also sees the other spans the log filter lets through (a connection's,
/// say): those are dropped here, unrecorded.
#[derive(Clone, Debug)]
struct OursOnly;

impl ShouldSample for OursOnly {
    fn should_sample(
        &self,
        _parent: Option<&opentelemetry::Context>,
        _trace: opentelemetry::trace::TraceId,
        name: &str,
        _kind: &opentelemetry::trace::SpanKind,
        _attributes: &[KeyValue],
        _links: &[opentelemetry::trace::Link],
    ) -> SamplingResult {
        SamplingResult {
            decision: if name.starts_with("chatty.") {
                SamplingDecision::RecordAndSample
            } else {
                SamplingDecision::Drop
            },
            attributes: Vec::new(),
            trace_state: Default::default(),
        }
    }
}

/// The exporter's HTTP client: our reqwest client, each request a task on the server's
/// runtime. The batch processor exports from its own thread (`block_on`), where reqwest
/// would find no runtime; awaiting a spawned task works from any executor.
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    rt: tokio::runtime::Handle,
}

/// A collector answers an export with a few bytes; more than this is not read.
const MAX_RESPONSE: usize = 64 * 1024;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let task = self.rt.spawn(async move {
            let (parts, body) = request.into_parts();
            let mut resp = client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await?;
            let mut out = http::Response::builder().status(resp.status());
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await? {
                if body.len() + chunk.len() > MAX_RESPONSE {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            if let Some(h) = out.headers_mut() {
                *h = std::mem::take(resp.headers_mut());
            }
            Ok::<_, opentelemetry_http::HttpError>(out.body(bytes::Bytes::from(body))?)
        });
        task.await?
    }
}

/// Counts what the exporter sent (`chatty_trace_spans_exported_total`).
#[derive(Debug)]
struct Counted<E>(E);

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let r = self.0.export(batch).await;
        let result = if r.is_ok() { "ok" } else { "failed" };
        SPANS_EXPORTED.with_label_values(&[result]).inc_by(n);
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource)
    }
}

/// The ids a log line lifts out of its spans, captured once per span.
#[derive(Default)]
struct Ids {
    trace_id: Option<String>,
    conn: Option<String>,
    room: Option<String>,
}

impl Visit for Ids {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let slot = match field.name() {
            "trace_id" => &mut self.trace_id,
            "conn" => &mut self.conn,
            "room" => &mut self.room,
            _ => return,
        };
        *slot = Some(format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        // As written, not Debug-quoted.
        self.record_debug(field, &format_args!("{value}"))
    }
}

impl Ids {
    fn any(&self) -> bool {
        self.trace_id.is_some() || self.conn.is_some() || self.room.is_some()
    }
}

/// Keeps each span's [`Ids`] in its extensions for [`JsonLine`].
struct IdsLayer;

impl<S> Layer<S> for IdsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut ids = Ids::default();
        attrs.record(&mut ids);
        if ids.any() {
            if let Some(span) = ctx.span(id) {
                span.extensions_mut().insert(ids);
            }
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        match ext.get_mut::<Ids>() {
            Some(ids) => values.record(ids),
            None => {
                let mut ids = Ids::default();
                values.record(&mut ids);
                if ids.any() {
                    ext.insert(ids);
                }
            }
        }
    }
}

/// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's
/// fields, `node`, and from the innermost span that has them `trace_id`, `conn`, `room`
/// (an event's own field of the same name wins), and `span`, the innermost span's name.
struct JsonLine {
    node: Option<Arc<str>>,
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        use serde_json::Value;
        let mut map = serde_json::Map::new();
        let mut ts = String::new();
        SystemTime.format_time(&mut Writer::new(&mut ts))?;
        map.insert("timestamp".into(), Value::String(ts));
        let meta = event.metadata();
        map.insert("level".into(), Value::String(meta.level().to_string()));
        event.record(&mut JsonFields(&mut map));
        map.insert("target".into(), Value::String(meta.target().to_owned()));
        if let Some(node) = &self.node {
            map.entry("node")
                .or_insert_with(|| Value::String(node.to_string()));
        }
        if let Some(scope) = ctx.event_scope() {
            let mut first = true;
            for span in scope {
                if first {
                    map.entry("span")
                        .or_insert_with(|| Value::String(span.name().to_owned()));
                    first = false;
                }
                let ext = span.extensions();
                let Some(ids) = ext.get::<Ids>() else {
                    continue;
                };
                for (k, v) in [
                    ("trace_id", &ids.trace_id),
                    ("conn", &ids.conn),
                    ("room", &ids.room),
                ] {
                    if let Some(v) = v {
                        map.entry(k).or_insert_with(|| Value::String(v.clone()));
                    }
                }
            }
        }
        let line = serde_json::to_string(&map).map_err(|_| fmt::Error)?;
        writeln!(w, "{line}")
    }
}

/// An event's fields as JSON values (numbers and booleans stay so).
struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for JsonFields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn a_bare_collector_url_gets_the_traces_path_and_one_with_a_path_is_kept() {
        assert_eq!(
            traces_url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://proxy.example/otlp/v1/traces"),
            "https://proxy.example/otlp/v1/traces"
        );
    }
}
