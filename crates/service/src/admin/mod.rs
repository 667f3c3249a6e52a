//! The admin HTTP endpoint every service has: probes, Prometheus metrics, and whatever JSON
//! routes the service merges in.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::{
    extract::{rejection::QueryRejection, Query, Request, State},
    http::{header, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::connections::{ConnectionTable, ConnectionView};

mod access;
mod https;

pub use access::AdminAccess;

/// The endpoints every service has, for its OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    paths(livez, readyz, metrics, connections),
    components(schemas(ErrorBody, ConnectionView, Page<ConnectionView>, Status, Readyz))
)]
pub struct CommonApi;

/// A service's OpenAPI document: `api` with the common endpoints merged in.
pub fn openapi_document(
    mut api: utoipa::openapi::OpenApi,
    title: &str,
) -> utoipa::openapi::OpenApi {
    api.merge(CommonApi::openapi());
    api.info.title = title.to_string();
    api.info.version = env!("CARGO_PKG_VERSION").to_string();
    api.info.description = Some(
        "Reads (GET) are open to whoever reaches the admin port. Anything else needs \
         `Authorization: Bearer <admin_token>` when a token is configured, and otherwise comes \
         only from loopback. Errors are `{code, message, retriable}`."
            .to_string(),
    );
    api.info.license = None;
    api
}

/// `GET /v1/openapi.json`: the service's OpenAPI document.
pub fn openapi_router(document: utoipa::openapi::OpenApi) -> Router {
    let document = Arc::new(document);
    Router::new().route(
        "/v1/openapi.json",
        get(move || {
            let document = document.clone();
            async move { Json(document.as_ref().clone()) }
        }),
    )
}

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

#[derive(serde::Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ConnectionPageQuery {
    /// Connections after this id (the `next` of the previous page).
    after: Option<u64>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/v1/connections",
    params(ConnectionPageQuery),
    responses(
        (status = 200, description = "A page of open client connections", body = Page<ConnectionView>),
        (status = 400, description = "Bad parameters", body = ErrorBody),
    ),
    tag = "service"
)]
async fn connections(
    State(table): State<Arc<ConnectionTable>>,
    query: Result<Query<ConnectionPageQuery>, QueryRejection>,
) -> Result<Json<Page<ConnectionView>>, ApiError> {
    let Query(query) = query?;
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

#[derive(Serialize, ToSchema)]
struct Status {
    status: &'static str,
}

/// Alive: the process answers.
#[utoipa::path(get, path = "/livez", responses((status = 200, body = Status)), tag = "service")]
async fn livez() -> Json<Status> {
    Json(Status { status: "ok" })
}

#[derive(Serialize, ToSchema)]
struct Readyz {
    ready: bool,
    /// Why not, when not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// Ready to serve (for a broker: storage open, a Raft leader known, caught up).
#[utoipa::path(
    get,
    path = "/readyz",
    responses(
        (status = 200, description = "Ready", body = Readyz),
        (status = 503, description = "Not ready, with the reason", body = Readyz),
    ),
    tag = "service"
)]
async fn readyz(State(state): State<ProbeState>) -> Response {
    match state.readiness.readiness() {
        Ok(()) => Json(Readyz {
            ready: true,
            reason: None,
        })
        .into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readyz {
                ready: false,
                reason: Some(reason),
            }),
        )
            .into_response(),
    }
}

/// Prometheus metrics, text format (see docs/metrics.md).
#[utoipa::path(
    get,
    path = "/metrics",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")),
    tag = "service"
)]
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

/// Every error answer of the admin API.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable, machine-readable name (`invalid_request`, `not_found`, `not_leader`, …).
    pub code: String,
    pub message: String,
    /// Whether the same request may succeed later (e.g. once a leader is elected).
    pub retriable: bool,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.to_string(),
            message: self.message,
            retriable: self.retriable,
        };
        (self.status, Json(body)).into_response()
    }
}

/// Gives errors the framework answers itself (unsupported method, malformed path, body too
/// large) the API's one JSON error shape.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if status.as_u16() < 400 || is_json {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let code = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase()
        .replace(' ', "_");
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let body = ErrorBody {
        code,
        message,
        retriable: status.is_server_error(),
    };
    let mut answer = (status, Json(body)).into_response();
    if let Some(allow) = allow {
        answer.headers_mut().insert(header::ALLOW, allow);
    }
    answer
}

/// One page of a list: `next`, when present, is the `after` that continues it.
#[derive(Serialize, ToSchema)]
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

/// A malformed query string is the caller's mistake: 400 with what was wrong.
impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        bad_request(rejection.body_text())
    }
}

/// A malformed or mistyped JSON body likewise.
impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::JsonRejection) -> ApiError {
        bad_request(rejection.body_text())
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

/// Serves `router` on `listener` (HTTPS with `tls`), guarded by `access`, until `shutdown`
/// is cancelled.
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    (access, tls): (AdminAccess, Option<Arc<rustls::ServerConfig>>),
    shutdown: CancellationToken,
) {
    use axum::serve::ListenerExt;
    let router = router
        .layer(axum::middleware::from_fn_with_state(access, access::guard))
        .layer(axum::middleware::from_fn(json_errors));
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    let stopped = async move { shutdown.cancelled().await };
    let result = match tls {
        None => {
            axum::serve(listener, service)
                .with_graceful_shutdown(stopped)
                .await
        }
        // `tap_io` gives the listener axum's connect-info support for its peer address.
        Some(tls) => {
            axum::serve(
                https::TlsListener::new(listener, tls).tap_io(|_| {}),
                service,
            )
            .with_graceful_shutdown(stopped)
            .await
        }
    };
    if let Err(err) = result {
        warn!(%err, "admin http server failed");
    }
}
