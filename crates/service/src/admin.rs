//! The admin HTTP endpoint every service has: probes, Prometheus metrics, and whatever JSON
//! routes the service merges in.

use std::sync::Arc;

use std::net::SocketAddr;

use axum::{
    extract::{rejection::QueryRejection, ConnectInfo, Query, Request, State},
    http::{header, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::connections::{ConnectionTable, ConnectionView};

/// What `/readyz` asks: `Err(reason)` answers 503 with the reason.
pub trait Readiness: Send + Sync + 'static {
    fn readiness(&self) -> Result<(), String>;
}

#[derive(Clone)]
struct ProbeState {
    readiness: Arc<dyn Readiness>,
    registry: prometheus::Registry,
}

/// `GET /v1/connections?after=&limit=`: the client connections open now, in the order they
/// were accepted.
pub fn connections_router(table: Arc<ConnectionTable>) -> Router {
    Router::new()
        .route("/v1/connections", get(connections))
        .with_state(table)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionPageQuery {
    /// Connections after this id (the `next` of the previous page).
    after: Option<u64>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
}

async fn connections(
    State(table): State<Arc<ConnectionTable>>,
    query: Result<Query<ConnectionPageQuery>, QueryRejection>,
) -> Result<Json<Page<ConnectionView>>, ApiError> {
    let Query(query) = query.map_err(|rejection| bad_request(rejection.body_text()))?;
    let limit = page_limit(query.limit, 100)?;
    let views = table.views(query.after, limit + 1);
    Ok(Json(Page::of(views.into_iter(), limit, |c| {
        c.id.to_string()
    })))
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

/// One page of a list: `next`, when present, is the `after` that continues it.
#[derive(Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// The first `limit` of `items`, with `next` set from the last when more follow.
    pub fn of(items: impl Iterator<Item = T>, limit: usize, key: impl Fn(&T) -> String) -> Page<T> {
        let mut items: Vec<T> = items.take(limit + 1).collect();
        let more = items.len() > limit;
        items.truncate(limit);
        let next = if more { items.last().map(key) } else { None };
        Page { items, next }
    }
}

/// A list request's `limit`: `default` when absent, refused outside 1..=1000.
pub fn page_limit(limit: Option<usize>, default: usize) -> Result<usize, ApiError> {
    match limit.unwrap_or(default) {
        limit @ 1..=1000 => Ok(limit),
        other => Err(bad_request(format!(
            "limit must be in 1..=1000, not {other}"
        ))),
    }
}

pub fn bad_request(message: String) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "invalid_request",
        message,
        retriable: false,
    }
}

/// Who may change things through the admin API. Reads (`GET`) are open to whoever reaches
/// the port (probes and metrics must be); anything else needs `Authorization: Bearer <token>`
/// when a token is configured, and otherwise comes only from a loopback address.
#[derive(Clone)]
pub struct AdminAccess {
    token: Option<Arc<str>>,
}

/// How long a refused mutation waits before its answer, to slow down token guessing.
const REFUSAL_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

impl AdminAccess {
    /// `token`: empty for none.
    pub fn new(token: &str) -> AdminAccess {
        AdminAccess {
            token: (!token.is_empty()).then(|| Arc::from(token)),
        }
    }

    /// A line for the start-up log saying how mutations are guarded.
    pub fn describe(&self) -> &'static str {
        match self.token {
            Some(_) => "admin API: changes need the bearer token (admin_token)",
            None => {
                "admin API: no admin_token configured, so changes are accepted only from \
                 loopback addresses; reads and probes are open to whoever reaches the port"
            }
        }
    }

    fn check(&self, request: &Request) -> Result<(), ApiError> {
        if matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        ) {
            return Ok(());
        }
        match &self.token {
            Some(token) => {
                let presented = request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                if same_secret(presented.as_bytes(), token.as_bytes()) {
                    Ok(())
                } else {
                    Err(ApiError {
                        status: StatusCode::UNAUTHORIZED,
                        code: "unauthorized",
                        message: "this request changes the broker: send Authorization: Bearer \
                                  <admin_token>"
                            .into(),
                        retriable: false,
                    })
                }
            }
            None => {
                let loopback = request
                    .extensions()
                    .get::<ConnectInfo<SocketAddr>>()
                    .is_some_and(|ConnectInfo(peer)| peer.ip().is_loopback());
                if loopback {
                    Ok(())
                } else {
                    Err(ApiError {
                        status: StatusCode::FORBIDDEN,
                        code: "forbidden",
                        message: "no admin_token is configured, so changes are accepted only \
                                  from loopback addresses"
                            .into(),
                        retriable: false,
                    })
                }
            }
        }
    }
}

/// Compares without stopping at the first difference (only the length can leak).
fn same_secret(presented: &[u8], expected: &[u8]) -> bool {
    presented.len() == expected.len()
        && presented
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

async fn guard(State(access): State<AdminAccess>, request: Request, next: Next) -> Response {
    match access.check(&request) {
        Ok(()) => next.run(request).await,
        Err(refused) => {
            tokio::time::sleep(REFUSAL_DELAY).await;
            refused.into_response()
        }
    }
}

/// Serves `router` on `listener`, guarded by `access`, until `shutdown` is cancelled.
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    access: AdminAccess,
    shutdown: CancellationToken,
) {
    let router = router.layer(axum::middleware::from_fn_with_state(access, guard));
    let result = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await;
    if let Err(err) = result {
        warn!(%err, "admin http server failed");
    }
}
