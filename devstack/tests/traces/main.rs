//! One trace per user action across services. In its own binary because it owns the process's
//! tracer: spans go to an in-memory OpenTelemetry exporter, and the test checks that the
//! gateway's callback, the expiry message it scheduled, the refresher's handling of it and the
//! refresh share one trace (W3C `traceparent` in AMQP headers), and that a proxied call's span
//! has the upstream call as its child and hands its context to the provider.

#[path = "../e2e/support.rs"]
#[allow(dead_code)]
mod support;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use std::time::Duration;
use support::TestApp;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connect_and_its_scheduled_refresh_are_one_trace_and_a_proxied_call_parents_its_upstream_call() {
    let exporter = InMemorySpanExporter::default();
    // Never dropped: spans still open in other threads' thread-locals when the runtimes shut
    // down end after the test body, and must find the provider (shut down, so they are no-ops).
    let provider: &'static SdkTracerProvider =
        Box::leak(Box::new(SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build()));
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .init();

    let app =
        TestApp::start_with(devstack::StackOptions { token_ttl: Duration::from_secs(2), ..Default::default() }).await;
    app.connect("mock", "traced").await;
    let first = app.token("mock", "traced").await;
    support::eventually("the scheduled refresh", Duration::from_secs(15), || async {
        (app.token("mock", "traced").await != first).then_some(())
    })
    .await;
    // The caller sends its own trace context: the proxied call continues that trace.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = app
        .proxy(reqwest::Method::GET, "mock/traced/contacts")
        .header("traceparent", format!("00-{caller_trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    let echo: serde_json::Value = r.json().await.unwrap();
    let sent_traceparent = echo["headers"]["traceparent"].as_str().unwrap_or_default().to_owned();
    provider.force_flush().unwrap();
    app.stop().await;
    let spans = exporter.get_finished_spans().unwrap();
    let _ = provider.shutdown();

    let named = |n: &str| spans.iter().filter(move |s| s.name == n).collect::<Vec<_>>();
    let callback = named("callback");
    assert_eq!(callback.len(), 1, "one callback span");
    let trace = callback[0].span_context.trace_id();
    let handled: Vec<_> = named("expiry_event").into_iter().filter(|s| s.span_context.trace_id() == trace).collect();
    assert!(!handled.is_empty(), "the refresher's handling of the expiry event continues the callback's trace");
    let refresh: Vec<_> = named("refresh").into_iter().filter(|s| s.span_context.trace_id() == trace).collect();
    assert!(
        refresh.iter().any(|r| handled.iter().any(|h| r.parent_span_id == h.span_context.span_id())),
        "the refresh is a child of the event's span"
    );

    let proxy = named("proxy");
    assert_eq!(proxy.len(), 1);
    assert_eq!(proxy[0].span_context.trace_id().to_string(), caller_trace, "the caller's trace is continued");
    let root: Vec<_> =
        named("http_request").into_iter().filter(|s| s.span_context.span_id() == proxy[0].parent_span_id).collect();
    assert_eq!(root.len(), 1, "the proxied call is a child of its request's root span");
    assert_eq!(root[0].parent_span_id.to_string(), "00f067aa0ba902b7", "whose parent is the caller's span");
    let upstream: Vec<_> =
        named("upstream").into_iter().filter(|s| s.parent_span_id == proxy[0].span_context.span_id()).collect();
    assert_eq!(upstream.len(), 1, "the upstream call is the proxied call's child");
    let upstream_trace = format!("{}", upstream[0].span_context.trace_id());
    assert!(
        sent_traceparent.contains(&upstream_trace),
        "the provider received the trace context: {sent_traceparent:?}"
    );
}
