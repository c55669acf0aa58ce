//! The router: the endpoints of what is served, and the layers every request goes
//! through (metrics, timeout, panic catcher, body limit); and serving it until a
//! shutdown signal, letting requests in flight finish.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower_http::catch_panic::CatchPanicLayer;

use crate::api::{self, IndexApi, Limits, ModelApi};
use crate::batcher::Batching;
use crate::error::ApiError;
use crate::metrics::{self, Metrics};
use crate::service::Service;

/// What every request sees: the limits, the metrics and the served description.
struct Shared {
    limits: Limits,
    metrics: Arc<Metrics>,
    openapi: Value,
    health: Value,
}

/// The whole application for `service`: its endpoints, `/health`, `/metrics`,
/// `/openapi.json`, and the layers of [`harden`]. Batchers' tasks start on the current
/// tokio runtime (`batching: None` runs each request alone).
pub fn router(service: Service, limits: Limits, batching: Option<Batching>) -> Router {
    let metrics = Arc::new(Metrics::default());
    let shared = Arc::new(Shared {
        limits,
        metrics: metrics.clone(),
        openapi: crate::openapi::document(&service, &limits),
        health: serde_json::json!({
            "status": "ok",
            "kind": service.kind(),
            "input": if matches!(service, Service::Model(_)) { "vectors" } else { "texts" },
            "dim_in": match &service { Service::Model(m) => Some(m.projector.dim_in()), Service::Index(_) => None },
            "dim_out": service.dim_out(),
            "answers": service.answers(),
        }),
    });
    let endpoints = match service {
        Service::Model(model) => {
            let has_answers = model.answers.is_some();
            let api = Arc::new(ModelApi::new(*model, limits, batching, &metrics));
            let mut r = Router::new().route("/project", post(api::project).with_state(api.clone()));
            if has_answers {
                r = r.route("/search", post(api::search_vectors).with_state(api));
            }
            r
        }
        Service::Index(searcher) => {
            let api = Arc::new(IndexApi::new(*searcher, limits, batching, &metrics));
            Router::new()
                .route("/embed", post(api::embed).with_state(api.clone()))
                .route("/search", post(api::search_texts).with_state(api))
        }
    };
    let info = Router::new()
        .route("/health", get(|State(s): State<Arc<Shared>>| async move { Json(s.health.clone()) }))
        .route("/openapi.json", get(|State(s): State<Arc<Shared>>| async move { Json(s.openapi.clone()) }))
        .route("/metrics", get(render_metrics))
        .with_state(shared.clone());
    harden(endpoints.merge(info), shared)
}

async fn render_metrics(State(s): State<Arc<Shared>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render()).into_response()
}

/// The layers around every route: JSON 404 and 405 answers, the body limit, a panic
/// catcher (a panicking handler answers 500 and the server goes on), and, outermost,
/// the timeout and the metrics.
fn harden(routes: Router, shared: Arc<Shared>) -> Router {
    routes
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint (see GET /openapi.json)") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint (see GET /openapi.json)")
        })
        .layer(DefaultBodyLimit::max(shared.limits.max_body_bytes))
        .layer(CatchPanicLayer::custom(|_| ApiError::internal("internal error: the handler panicked").into_response()))
        .layer(middleware::from_fn_with_state(shared, observe))
}

/// Decrements the in-flight gauge however the request ends (dropped futures included).
struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Times out the request and records it in the metrics.
async fn observe(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let path = metrics::label(req.uri().path());
    let start = Instant::now();
    s.metrics.start();
    let _in_flight = InFlight(&s.metrics);
    let response = match tokio::time::timeout(s.limits.timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("request timed out after {} ms (see --timeout-ms)", s.limits.timeout.as_millis()),
        )
        .into_response(),
    };
    s.metrics.finish(path, response.status().as_u16(), start.elapsed());
    response
}

/// Serve `app` on `listener` until `shutdown` completes; then stop accepting, let the
/// requests in flight finish, and return.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// A future that completes on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed
/// when this is called (inside the runtime), not when the future is first polled, so a
/// signal sent as soon as the address is printed is not lost.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt()).ok();
        let mut terminate = signal(SignalKind::terminate()).ok();
        async move {
            tokio::select! {
                _ = recv(interrupt.as_mut()) => {},
                _ = recv(terminate.as_mut()) => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The next delivery of `signal`; never, without one.
#[cfg(unix)]
async fn recv(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_the_server_goes_on() {
        let limits = Limits { max_queries: 1, max_body_bytes: 64, timeout: std::time::Duration::from_secs(1) };
        let shared = Arc::new(Shared {
            limits,
            metrics: Arc::new(Metrics::default()),
            openapi: Value::Null,
            health: Value::Null,
        });
        let boom = Router::new()
            .route(
                "/boom",
                get(|| async {
                    let fine: Option<&str> = std::hint::black_box(None);
                    fine.expect("boom")
                }),
            )
            .route("/fine", get(|| async { "fine" }));
        let app = harden(boom, shared.clone());
        for _ in 0..2 {
            let response = app.clone().oneshot(Request::get("/boom").body(Body::empty()).unwrap()).await.unwrap();
            assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
            let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
            assert_eq!(&body[..], br#"{"error":"internal error: the handler panicked"}"#);
        }
        let response = app.oneshot(Request::get("/fine").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let metrics = shared.metrics.render();
        assert!(metrics.contains("projroute_http_responses_total{path=\"other\",status=\"500\"} 2"), "{metrics}");
        assert!(metrics.contains("projroute_requests_in_flight 0"), "{metrics}");
    }
}
