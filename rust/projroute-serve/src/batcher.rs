//! [`Batcher`]: micro-batching. Concurrent small requests are queued to one task that
//! gathers them for at most [`Batching::wait`] (or until [`Batching::max_rows`] queries),
//! runs the core once for all of them on rayon's pool, and hands each request its rows
//! back, so that under load the core runs GEMMs instead of GEMVs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::metrics::Metrics;

/// Requests that may wait in a batcher's queue; beyond that, submitting waits.
const QUEUE: usize = 4096;

/// How requests are coalesced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// Longest a batch waits for more requests after its first (zero: take only what is
    /// already queued). Tokio's timers tick in milliseconds, so waits round up to them.
    pub wait: Duration,
    /// A batch closes once it holds this many queries; a request with this many or
    /// more runs alone.
    pub max_rows: usize,
}

/// The core's work for a batch: one output per input, or an error for the batch.
pub type Run<I, O> = dyn Fn(&[I]) -> Result<Vec<O>, ApiError> + Send + Sync;

struct Job<I, O> {
    input: I,
    rows: usize,
    reply: oneshot::Sender<Result<O, ApiError>>,
}

/// Runs requests of one endpoint through the core: batched, or each alone when
/// batching is off.
pub struct Batcher<I, O> {
    run: Arc<Run<I, O>>,
    path: &'static str,
    metrics: Arc<Metrics>,
    /// The collecting task's queue and its batching; `None` when batching is off.
    queue: Option<(mpsc::Sender<Job<I, O>>, Batching)>,
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// A batcher for the endpoint `path` running `run`; with `batching`, its collecting
    /// task is spawned on the current tokio runtime and ends when the batcher is dropped.
    pub fn new(path: &'static str, metrics: Arc<Metrics>, batching: Option<Batching>, run: Arc<Run<I, O>>) -> Self {
        let queue = batching.map(|b| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(collect(rx, b, run.clone(), path, metrics.clone()));
            (tx, b)
        });
        Batcher { run, path, metrics, queue }
    }

    /// The output for `input`, which holds `rows` queries (validated by the caller).
    pub async fn submit(&self, input: I, rows: usize) -> Result<O, ApiError> {
        match &self.queue {
            Some((tx, b)) if rows < b.max_rows => {
                let (reply, answer) = oneshot::channel();
                tx.send(Job { input, rows, reply })
                    .await
                    .map_err(|_| ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?;
                answer.await.map_err(|_| ApiError::internal("the batch was dropped"))?
            }
            _ => {
                let run = self.run.clone();
                self.metrics.batch(self.path, 1, rows);
                let out = on_core(move || run(std::slice::from_ref(&input))).await??;
                out.into_iter().next().ok_or_else(|| ApiError::internal("the core returned no output"))
            }
        }
    }
}

/// Run `f` on rayon's global pool, the core's own threads, and await it: the core's
/// parallel loops then start from a pool thread, rather than each handing its work
/// from an outside thread to the pool and back. A panic in `f` is an internal error.
async fn on_core<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, ApiError> {
    let (tx, rx) = oneshot::channel();
    rayon::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(panic)) => {
            let what =
                panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
            Err(ApiError::internal(format!("internal error: the computation failed ({})", what.unwrap_or_default())))
        }
        Err(_) => Err(ApiError::internal("internal error: the computation was dropped")),
    }
}

/// The collecting task: gather a batch, run it on rayon's pool, answer, repeat.
/// One batch runs at a time; requests arriving meanwhile make up the next one.
async fn collect<I: Send + 'static, O: Send + 'static>(
    mut rx: mpsc::Receiver<Job<I, O>>,
    b: Batching,
    run: Arc<Run<I, O>>,
    path: &'static str,
    metrics: Arc<Metrics>,
) {
    while let Some(first) = rx.recv().await {
        let deadline = Instant::now() + b.wait;
        let mut rows = first.rows;
        let mut jobs = vec![first];
        while rows < b.max_rows {
            let job = match rx.try_recv() {
                Ok(job) => job,
                Err(mpsc::error::TryRecvError::Empty) if !b.wait.is_zero() => {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(job)) => job,
                        _ => break,
                    }
                }
                Err(_) => break,
            };
            rows += job.rows;
            jobs.push(job);
        }
        metrics.batch(path, jobs.len(), rows);
        let (inputs, replies): (Vec<I>, Vec<_>) = jobs.into_iter().map(|j| (j.input, j.reply)).unzip();
        let run = run.clone();
        let outputs = on_core(move || run_each_on_error(run.as_ref(), &inputs)).await;
        match outputs {
            Ok(outputs) => replies.into_iter().zip(outputs).for_each(|(reply, out)| {
                let _ = reply.send(out);
            }),
            Err(err) => replies.into_iter().for_each(|reply| {
                let _ = reply.send(Err(err.clone()));
            }),
        }
    }
}

/// `run` over all `inputs` at once; if that fails (or miscounts), each input alone, so
/// that one bad request fails by itself.
fn run_each_on_error<I, O>(run: &Run<I, O>, inputs: &[I]) -> Vec<Result<O, ApiError>> {
    match run(inputs) {
        Ok(outputs) if outputs.len() == inputs.len() => outputs.into_iter().map(Ok).collect(),
        Err(err) if inputs.len() == 1 => vec![Err(err)],
        _ => inputs
            .iter()
            .map(|input| {
                let out = run(std::slice::from_ref(input))?;
                out.into_iter().next().ok_or_else(|| ApiError::internal("the core returned no output"))
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batcher(batching: Option<Batching>) -> (Batcher<i64, i64>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let run: Arc<Run<i64, i64>> = Arc::new(|xs: &[i64]| {
            if xs.contains(&-1) {
                return Err(ApiError::invalid("negative"));
            }
            Ok(xs.iter().map(|x| x * 10).collect())
        });
        (Batcher::new("/project", metrics.clone(), batching, run), metrics)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_batches_and_errors_stay_their_own() {
        let b = Batching { wait: Duration::from_millis(50), max_rows: 64 };
        let (batcher, metrics) = batcher(Some(b));
        let batcher = Arc::new(batcher);
        let tasks: Vec<_> = (-1..20)
            .map(|x| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.submit(x, 1).await })
            })
            .collect();
        for (x, t) in (-1..20).zip(tasks) {
            let out = t.await.unwrap();
            if x == -1 {
                assert_eq!(out.unwrap_err().message, "negative");
            } else {
                assert_eq!(out.unwrap(), x * 10);
            }
        }
        let text = metrics.render();
        let batches: u64 = text
            .lines()
            .find(|l| l.starts_with("projroute_batches_total{"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap();
        assert!(batches < 21, "21 requests in {batches} batches");
        assert!(text.contains("projroute_batched_requests_total{path=\"/project\"} 21"), "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_wait_requests_queued_behind_a_running_batch_make_up_the_next() {
        let metrics = Arc::new(Metrics::default());
        let (started, release) = (Arc::new(std::sync::Barrier::new(2)), Arc::new(std::sync::Barrier::new(2)));
        let (s, r) = (started.clone(), release.clone());
        let first = std::sync::atomic::AtomicBool::new(true);
        let run: Arc<Run<i64, i64>> = Arc::new(move |xs: &[i64]| {
            if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                s.wait(); // the first batch is running...
                r.wait(); // ...until every later request is queued
            }
            Ok(xs.iter().map(|x| x * 10).collect())
        });
        let b = Batching { wait: Duration::ZERO, max_rows: 64 };
        let batcher = Arc::new(Batcher::new("/project", metrics.clone(), Some(b), run));
        let lone = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.submit(0, 1).await }
        });
        tokio::task::spawn_blocking(move || started.wait()).await.unwrap();
        let queued: Vec<_> = (1..11)
            .map(|x| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.submit(x, 1).await })
            })
            .collect();
        while batcher.queue.as_ref().unwrap().0.capacity() > QUEUE - 10 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::task::spawn_blocking(move || release.wait()).await.unwrap();
        assert_eq!(lone.await.unwrap().unwrap(), 0);
        for (x, t) in (1..11).zip(queued) {
            assert_eq!(t.await.unwrap().unwrap(), x * 10);
        }
        let text = metrics.render();
        assert!(text.contains("projroute_batches_total{path=\"/project\"} 2"), "{text}");
    }

    #[tokio::test]
    async fn unbatched_and_large_requests_run_alone() {
        for batching in [None, Some(Batching { wait: Duration::ZERO, max_rows: 4 })] {
            let (batcher, metrics) = batcher(batching);
            assert_eq!(batcher.submit(3, 4).await.unwrap(), 30);
            assert_eq!(batcher.submit(-1, 1).await.unwrap_err().status, 422);
            assert!(metrics.render().contains("projroute_batches_total{path=\"/project\"} 2"));
        }
    }

    /// A panic in the core is a 500 for its request, batched or not, and the pool and
    /// the batcher go on serving.
    #[tokio::test]
    async fn a_panic_in_the_core_is_an_internal_error() {
        for batching in [None, Some(Batching { wait: Duration::ZERO, max_rows: 4 })] {
            let run: Arc<Run<i64, i64>> = Arc::new(|xs: &[i64]| {
                assert!(!xs.contains(&7), "seven");
                Ok(xs.to_vec())
            });
            let batcher = Batcher::new("/project", Arc::new(Metrics::default()), batching, run);
            let err = batcher.submit(7, 1).await.unwrap_err();
            assert_eq!(err.status, 500);
            assert!(err.message.contains("seven"), "{}", err.message);
            assert_eq!(batcher.submit(2, 1).await.unwrap(), 2);
        }
    }
}
