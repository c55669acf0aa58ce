//! `projroute serve`: an HTTP service for projroute model and index files, on axum and
//! tokio, with micro-batching. The core crate `projroute` does the work; this crate
//! parses requests, checks them, batches them and answers.
//!
//! Endpoints: `POST /project` (a model file: vectors in), `POST /embed` and
//! `POST /search` (an index file: text in; `/search` also on a model file that stores
//! answers: vectors in), `GET /health`, `GET /metrics` (Prometheus) and
//! `GET /openapi.json` (the OpenAPI 3.1 document of exactly what is served).
#![deny(missing_docs)]

mod api;
mod app;
mod batcher;
mod error;
mod metrics;
mod openapi;
mod options;
mod service;

use std::ffi::OsString;
use std::io::Write;

use clap::Parser;

pub use api::{Limits, DEFAULT_K, MAX_ABS_VALUE, MIN_COMPONENT};
pub use app::{router, serve, shutdown_signal};
pub use batcher::Batching;
pub use error::ApiError;
pub use options::Options;
pub use service::{Answers, ModelService, Service};

/// Why [`run`] stopped early.
#[derive(Debug)]
pub enum RunError {
    /// It could not start: bad options, an unreadable file, an address in use.
    Start(String),
    /// Serving failed after it started.
    Serve(std::io::Error),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Start(msg) => write!(f, "{msg}"),
            RunError::Serve(e) => write!(f, "serving failed: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

/// Open what `options` names and serve it until SIGINT or SIGTERM; the listening
/// address is printed on stdout first (`listening on http://HOST:PORT`).
pub fn run(options: &Options) -> Result<(), RunError> {
    let limits = options.limits().map_err(RunError::Start)?;
    let batching = options.batching().map_err(RunError::Start)?;
    let service = Service::open(&options.path, options.encoder.as_deref(), options.model.as_deref())
        .map_err(|e| RunError::Start(format!("{}: {e}", options.path.display())))?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = options.http_threads {
        runtime.worker_threads(n.max(1));
    }
    let runtime =
        runtime.enable_all().build().map_err(|e| RunError::Start(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((options.host.as_str(), options.port))
            .await
            .map_err(|e| RunError::Start(format!("cannot listen on {}:{}: {e}", options.host, options.port)))?;
        let addr = listener.local_addr().map_err(RunError::Serve)?;
        let shutdown = shutdown_signal(); // handlers installed before the address is printed
        let what = service.describe();
        let app = router(service, limits, batching);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "projroute serve: {what}; listening on http://{addr}");
        let _ = out.flush();
        drop(out);
        serve(listener, app, shutdown).await.map_err(RunError::Serve)
    })
}

/// The command line: parse `args` (the first is the program name), serve, and return
/// the exit status: 0 after a clean shutdown (or for `--help`), 2 for a usage or
/// start-up error (printed on stderr), 1 if serving failed.
pub fn main(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> i32 {
    let options = match Options::try_parse_from(args) {
        Ok(options) => options,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    match run(&options) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("projroute serve: error: {e}");
            match e {
                RunError::Start(_) => 2,
                RunError::Serve(_) => 1,
            }
        }
    }
}
