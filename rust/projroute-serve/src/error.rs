//! [`ApiError`], every failed answer (a status and a JSON body `{"error": "..."}`), and
//! [`ApiJson`], the JSON body extractor whose rejections are such errors.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;

/// A failed request: the status and a message naming the problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status (4xx for the caller's mistakes, 5xx for the server's).
    pub status: StatusCode,
    /// What went wrong, in one line.
    pub message: String,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }

    /// 422: well-formed JSON whose content is unusable (dimension, values, `k`, batch size).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    /// 500: the server failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl From<projroute::Error> for ApiError {
    fn from(err: projroute::Error) -> Self {
        match err {
            projroute::Error::InvalidInput(msg) => Self::invalid(msg),
            other => Self::internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

/// A JSON request body of type `T`. Rejections: 415 without a JSON content type, 413
/// past the body limit, 400 for malformed JSON (naming NaN and Infinity, which JSON
/// has no literal for), 422 for JSON of the wrong shape.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime.eq_ignore_ascii_case("application/json") || mime.to_ascii_lowercase().ends_with("+json")
            });
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected a JSON body with `Content-Type: application/json`",
            ));
        }
        let body = Bytes::from_request(req, state).await.map_err(body_error)?;
        parse(&body).map(ApiJson)
    }
}

/// A body that could not be read: over the limit (413) or cut off (400).
fn body_error(rejection: BytesRejection) -> ApiError {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(status, "request body too large (see --max-body-bytes)")
    } else {
        ApiError::new(status, format!("could not read the request body: {}", rejection.body_text()))
    }
}

/// `body` parsed as a `T`: 400 if it is not JSON, 422 if it is JSON of another shape.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            return ApiError::invalid(e.to_string());
        }
        let non_finite = [b"NaN".as_slice(), b"Infinity"].iter().any(|t| body.windows(t.len()).any(|w| w == *t));
        let hint = if non_finite { " (NaN and Infinity are not JSON numbers: send finite values)" } else { "" };
        ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}{hint}"))
    })
}
