//! Who may change things through the admin API.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{header, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};

use ferromq_protocol::auth::same_secret;

use super::ApiError;

/// Who may change things through the admin API. Reads (`GET`) are open to whoever reaches
/// the port (probes and metrics must be); anything else needs `Authorization: Bearer <token>`
/// when a token is configured, and otherwise comes only from a loopback address. With
/// `protect_reads`, reads under `/v1/` (message bodies, for one) are guarded the same way.
#[derive(Clone)]
pub struct AdminAccess {
    token: Option<Arc<str>>,
    protect_reads: bool,
}

/// How long a refused mutation waits before its answer, to slow down token guessing.
const REFUSAL_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

impl AdminAccess {
    /// `token`: empty for none.
    pub fn new(token: &str, protect_reads: bool) -> AdminAccess {
        AdminAccess {
            token: (!token.is_empty()).then(|| Arc::from(token)),
            protect_reads,
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
        let read = matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        );
        let path = request.uri().path();
        let guarded_read =
            self.protect_reads && path.starts_with("/v1/") && path != "/v1/openapi.json";
        if read && !guarded_read {
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
                        message: "this request needs Authorization: Bearer <admin_token>".into(),
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

pub(super) async fn guard(
    State(access): State<AdminAccess>,
    request: Request,
    next: Next,
) -> Response {
    match access.check(&request) {
        Ok(()) => next.run(request).await,
        Err(refused) => {
            tokio::time::sleep(REFUSAL_DELAY).await;
            refused.into_response()
        }
    }
}
