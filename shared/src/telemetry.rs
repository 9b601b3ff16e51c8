//! Logs and traces, set up in one place.
//!
//! `tracing` everywhere; JSON or human-readable logs (`AUTHBRIDGE_LOG_FORMAT`); an OpenTelemetry
//! OTLP/HTTP exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; W3C trace context carried in
//! AMQP headers and outbound HTTP headers. Secrets are never recorded: spans carry provider and
//! connection ids, never tokens, codes, verifiers or keys.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use tracing::dispatcher::WeakDispatch;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Flushes the log and stops the exporter when dropped (at the end of `main`).
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    _log: tracing_appender::non_blocking::WorkerGuard,
}

/// How many formatted log lines may wait for the writer thread; past it, lines are dropped
/// rather than holding up the requests that log them.
const LOG_QUEUE_LINES: usize = 64 * 1024;

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber. Call once, from `main`, before starting the async runtime
/// (the OTLP exporter runs its own thread with a blocking HTTP client).
pub fn init(service: &'static str) -> TelemetryGuard {
    // The exporter's HTTP client needs rustls' crypto provider in place before it is built.
    crate::install_crypto_provider();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var(crate::config::LOG_FORMAT).is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let dispatch = Arc::new(OnceLock::new());
    // Lines are formatted where they are logged and written by a thread of their own, a batch
    // at a time: a request that logs (the access log line at `info`) never waits on stdout, and
    // a busy service makes one write per batch of lines rather than one per line.
    let (writer, log_guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("authbridge-log")
        .finish(std::io::BufWriter::new(std::io::stdout()));
    let fmt_layer = if json {
        json_layer(dispatch.clone(), writer).boxed()
    } else {
        // Colours for a terminal only: in a file or a log collector they are bytes to write and
        // strip.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
        tracing_subscriber::fmt::layer().compact().with_ansi(ansi).with_writer(writer).boxed()
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let mut provider = None;
    let otel_layer = if std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok_and(|v| !v.is_empty()) {
        match opentelemetry_otlp::SpanExporter::builder().with_http().build() {
            Ok(exporter) => {
                let p = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build())
                    .build();
                let tracer = p.tracer(service);
                opentelemetry::global::set_tracer_provider(p.clone());
                provider = Some(p);
                Some(tracing_opentelemetry::layer().with_tracer(tracer))
            }
            Err(e) => {
                eprintln!("OTLP exporter could not start ({e}); continuing with logs only");
                None
            }
        }
    } else {
        None
    };
    if tracing_subscriber::registry().with(filter).with(fmt_layer).with(otel_layer).try_init().is_ok() {
        // The JSON formatter looks trace ids up through the dispatcher it runs under.
        tracing::dispatcher::get_default(|d| dispatch.set(d.downgrade()).ok());
    }
    TelemetryGuard { provider, _log: log_guard }
}

/// The JSON log layer: one object per line, with the current span's fields, and — when spans
/// are exported — the `trace_id` and `span_id` of the span the event happened in, so a log line
/// leads to its trace (and back). `dispatch` is set once the subscriber is installed.
pub fn json_layer<S, W>(dispatch: Arc<OnceLock<WeakDispatch>>, writer: W) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + 'static,
{
    let inner = tracing_subscriber::fmt::format().json().with_current_span(true).with_span_list(false);
    tracing_subscriber::fmt::layer()
        .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
        .event_format(JsonWithTraceIds { inner, dispatch })
        .with_writer(writer)
}

struct JsonWithTraceIds {
    inner: tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>,
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl<S, N> FormatEvent<S, N> for JsonWithTraceIds
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::with_capacity(256);
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        let ids = ctx.lookup_current().and_then(|span| {
            let dispatch = self.dispatch.get()?.upgrade()?;
            let cx = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
            let sc = cx.span().span_context().clone();
            sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
        });
        match ids {
            Some((trace, span)) if line.ends_with("}\n") => {
                line.truncate(line.len() - 2);
                writeln!(writer, "{line},\"trace_id\":\"{trace}\",\"span_id\":\"{span}\"}}")
            }
            _ => writer.write_str(&line),
        }
    }
}

/// Logs for tests: plain, to the test harness's captured output, at most once per process.
pub fn init_for_tests() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_test_writer())
        .try_init();
}

/// The W3C `traceparent` of the current span, when tracing exports spans.
pub fn current_traceparent() -> Option<String> {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return None; // no span, so no trace to continue: skip the propagator's allocations
    }
    let cx = span.context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the remote context in `traceparent`, if there is one.
pub fn set_remote_parent(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(tp) = traceparent {
        let carrier: HashMap<String, String> = [("traceparent".to_owned(), tp.to_owned())].into();
        let cx = TraceContextPropagator::new().extract(&carrier);
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_the_trace_and_span_ids_of_their_span() {
        let sink = Sink::default();
        let out = sink.clone();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let handle = Arc::new(OnceLock::new());
        let subscriber = tracing_subscriber::registry()
            .with(json_layer(handle.clone(), move || sink.clone()))
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let dispatch = tracing::Dispatch::new(subscriber);
        handle.set(dispatch.downgrade()).ok();
        let (trace, span_id) = tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!("outside any span");
            let span = tracing::info_span!("work", provider = "kartra");
            let _g = span.enter();
            tracing::info!(step = 1, "inside");
            let sc = span.context().span().span_context().clone();
            (sc.trace_id().to_string(), sc.span_id().to_string())
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].get("trace_id").is_none(), "no span, no trace id: {text}");
        assert_eq!(lines[1]["trace_id"], trace.as_str());
        assert_eq!(lines[1]["span_id"], span_id.as_str());
        assert_eq!(lines[1]["span"]["provider"], "kartra");
        assert_eq!(lines[1]["fields"]["message"], "inside");
        assert_eq!(trace.len(), 32);
    }
}
