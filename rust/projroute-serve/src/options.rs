//! [`Options`]: the command line of `projroute serve` (and of the `projroute-serve`
//! binary), parsed by clap in one place for both.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::api::Limits;
use crate::batcher::Batching;

/// Serve a projroute model or index file over HTTP: JSON in and out, described by the
/// OpenAPI document at GET /openapi.json. Stops on SIGINT or SIGTERM after the requests
/// in flight finish.
#[derive(Parser, Clone, Debug, PartialEq, Eq)]
#[command(name = "projroute-serve", version)]
pub struct Options {
    /// A model file (POST /project; POST /search when it stores answers) or an index
    /// file (POST /embed and POST /search, text in).
    pub path: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: a free port; the address is printed on start).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Index file only: static model folder instead of the one it records.
    #[arg(long, value_name = "DIR")]
    pub encoder: Option<PathBuf>,
    /// Index file only: model file instead of the one it records.
    #[arg(long, value_name = "MODEL")]
    pub model: Option<PathBuf>,
    /// Most queries (vectors or texts) in one request.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_queries: usize,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 8 << 20, value_name = "BYTES")]
    pub max_body_bytes: usize,
    /// Longest a request may take, in milliseconds (then 503).
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    pub timeout_ms: u64,
    /// Micro-batching: longest a batch waits for more requests after its first, in
    /// microseconds. 0 (the default) takes only what is already queued: requests that
    /// arrive while a batch runs make up the next, so batches grow with the load and an
    /// idle server answers at once. Timers tick in milliseconds.
    #[arg(long, default_value_t = 0, value_name = "US")]
    pub batch_wait_us: u64,
    /// Micro-batching: a batch closes at this many queries; requests this large run alone.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_batch: usize,
    /// Turn micro-batching off: every request runs the core alone, on its own thread.
    #[arg(long)]
    pub no_batching: bool,
    /// Threads answering HTTP (tokio workers; default one per core). The core computes
    /// on rayon's pool (RAYON_NUM_THREADS).
    #[arg(long, value_name = "N")]
    pub http_threads: Option<usize>,
}

impl Options {
    /// The limits on each request; an error names a limit of zero.
    pub fn limits(&self) -> Result<Limits, String> {
        for (name, v) in [("--max-queries", self.max_queries), ("--max-body-bytes", self.max_body_bytes)] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.timeout_ms == 0 {
            return Err("--timeout-ms must be at least 1".into());
        }
        Ok(Limits {
            max_queries: self.max_queries,
            max_body_bytes: self.max_body_bytes,
            timeout: Duration::from_millis(self.timeout_ms),
        })
    }

    /// The micro-batching, `None` when it is off; an error for `--max-batch 0`.
    pub fn batching(&self) -> Result<Option<Batching>, String> {
        if self.max_batch == 0 {
            return Err("--max-batch must be at least 1".into());
        }
        Ok((!self.no_batching)
            .then(|| Batching { wait: Duration::from_micros(self.batch_wait_us), max_rows: self.max_batch }))
    }
}
