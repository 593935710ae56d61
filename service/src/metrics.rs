//! Each service's `/metrics`: the process's one Prometheus recorder, and its answer.

use axum::http::header;
use axum::response::{IntoResponse, Response};
pub use metrics_exporter_prometheus::PrometheusHandle;

/// A handle on the process's recorder: installed by the first service to ask. A second
/// service in the same process (tests) gets a handle of its own, which records nothing
/// the first does not.
pub fn recorder() -> PrometheusHandle {
    match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
        Ok(handle) => handle,
        Err(_) => metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle(),
    }
}

/// The `/metrics` answer: text exposition format 0.0.4.
pub fn response(handle: &PrometheusHandle) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}
