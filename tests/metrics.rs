//! The layer's metrics in an embedding service's own recorder (feature `metrics`), in-process.
#![cfg(feature = "metrics")]

mod support;

use http::{Method, StatusCode};
use metrics_exporter_prometheus::PrometheusBuilder;
use support::{call, request, Backend};
use tower::Layer;
use tower_conditional::ConditionalLayer;

/// Handles registered while the service is made land in the recorder in force then, labelled
/// with the layer's class; requests later only add to them.
#[tokio::test]
async fn a_service_gets_the_layers_metrics_in_its_own_recorder() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    let backend = Backend::default();
    let mut service = metrics::with_local_recorder(&recorder, || {
        ConditionalLayer::new()
            .metrics_class("documents")
            .layer(backend.service())
    });

    let saved = call(&mut service, request(Method::PUT, "/doc", &[], "v1")).await;
    assert_eq!(saved.status, StatusCode::OK);
    let tag = saved.tag();
    let read = call(&mut service, request(Method::GET, "/doc", &[], "")).await;
    assert_eq!(read.status, StatusCode::OK);
    let condition = [("if-none-match", tag.as_str())];
    for _ in 0..3 {
        let unchanged = call(&mut service, request(Method::GET, "/doc", &condition, "")).await;
        assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);
    }
    let stale = [("if-match", "\"stale.1\"")];
    let refused = call(&mut service, request(Method::PUT, "/doc", &stale, "v2")).await;
    assert_eq!(refused.status, StatusCode::PRECONDITION_FAILED);

    let text = prometheus.render();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("the Prometheus text format");
    let requests = |labels: &[(&str, &str)]| -> Vec<f64> {
        scrape
            .samples
            .iter()
            .filter(|sample| {
                sample.metric == "tower_conditional_requests_total"
                    && labels
                        .iter()
                        .all(|(key, value)| sample.labels.get(key) == Some(*value))
            })
            .map(|sample| match sample.value {
                prometheus_parse::Value::Counter(value) => value,
                ref other => panic!("not a counter: {other:?}"),
            })
            .collect()
    };
    let documents = |outcome| requests(&[("class", "documents"), ("outcome", outcome)]);
    assert_eq!(documents("not_modified"), [3.0]);
    assert_eq!(documents("forwarded_read"), [1.0]);
    let failed = [
        ("class", "documents"),
        ("outcome", "precondition_failed"),
        ("precondition", "if_match"),
    ];
    assert_eq!(requests(&failed), [1.0]);
    let written = [
        ("class", "documents"),
        ("outcome", "forwarded_write"),
        ("result", "2xx"),
    ];
    assert_eq!(requests(&written), [1.0]);
    assert!(
        requests(&[("class", "default")]).is_empty(),
        "no series for a class the layer does not have: {text}"
    );
}
