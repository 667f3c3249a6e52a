//! The admin HTTP endpoint every service has: probes, Prometheus metrics, and whatever JSON
//! routes the service merges in.

use std::sync::Arc;

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// What `/readyz` asks: `Err(reason)` answers 503 with the reason.
pub trait Readiness: Send + Sync + 'static {
    fn readiness(&self) -> Result<(), String>;
}

#[derive(Clone)]
struct ProbeState {
    readiness: Arc<dyn Readiness>,
    registry: prometheus::Registry,
}

/// `/livez`, `/readyz` and `/metrics`.
pub fn probes_router(readiness: Arc<dyn Readiness>, registry: prometheus::Registry) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ProbeState {
            readiness,
            registry,
        })
        .fallback(not_found)
}

async fn livez() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<ProbeState>) -> Response {
    match state.readiness.readiness() {
        Ok(()) => Json(serde_json::json!({ "ready": true })).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ready": false, "reason": reason })),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<ProbeState>) -> Response {
    let families = state.registry.gather();
    match prometheus::TextEncoder::new().encode_to_string(&families) {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(err) => ApiError::internal(err.to_string()).into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: "no such endpoint".into(),
        retriable: false,
    }
}

/// The one JSON error shape of the admin API: `{code, message, retriable}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retriable: bool,
}

impl ApiError {
    pub fn internal(message: String) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message,
            retriable: true,
        }
    }

    pub fn not_found(message: String) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message,
            retriable: false,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
    retriable: bool,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code,
            message: &self.message,
            retriable: self.retriable,
        };
        (self.status, Json(body)).into_response()
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled.
pub async fn serve_http(listener: TcpListener, router: Router, shutdown: CancellationToken) {
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(err) = result {
        warn!(%err, "admin http server failed");
    }
}
