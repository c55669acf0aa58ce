//! How many threads the core's work uses: rayon's global pool by default (the
//! `RAYON_NUM_THREADS` environment variable, or one thread per core), or, after
//! [`set_num_threads`]`(n)`, a pool of `n` threads for each calling thread, so that a
//! call uses at most `n` threads and callers on different threads never queue behind
//! each other (as with `torch.set_num_threads`).

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::error::{Error, Result};

/// Threads per call set by [`set_num_threads`]; 0 means rayon's global pool.
static NUM_THREADS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's pool, built for the setting it was built under.
    static POOL: RefCell<Option<(usize, Arc<ThreadPool>)>> = const { RefCell::new(None) };
}

/// Use `n` threads per call from now on (`n = 0`: back to rayon's global pool). The
/// calling thread's pool is built here, so that a failure to start threads is an
/// [`Error::Backend`] now rather than later.
pub fn set_num_threads(n: usize) -> Result<()> {
    NUM_THREADS.store(n, Ordering::Relaxed);
    if n > 0 {
        pool(n)?;
    }
    Ok(())
}

/// Threads a call uses: the [`set_num_threads`] setting, or the global pool's size.
pub fn num_threads() -> usize {
    match NUM_THREADS.load(Ordering::Relaxed) {
        0 => rayon::current_num_threads(),
        n => n,
    }
}

/// Run `f` (the core's work for one call) on the threads the setting gives: inline on
/// rayon's global pool by default, else in this thread's pool of `n` threads (if that
/// pool cannot be built, `f` runs on the global pool).
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match NUM_THREADS.load(Ordering::Relaxed) {
        0 => f(),
        n => match pool(n) {
            Ok(pool) => pool.install(f),
            Err(_) => f(),
        },
    }
}

/// This thread's pool of `n` threads, built (or rebuilt for a new `n`) on first use.
fn pool(n: usize) -> Result<Arc<ThreadPool>> {
    POOL.with(|cell| {
        let mut cached = cell.borrow_mut();
        if let Some((size, pool)) = cached.as_ref() {
            if *size == n {
                return Ok(pool.clone());
            }
        }
        let pool = ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("projroute-{i}"))
            .build()
            .map_err(|e| Error::Backend(format!("cannot start {n} threads: {e}")))?;
        let pool = Arc::new(pool);
        *cached = Some((n, pool.clone()));
        Ok(pool)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_sizes_each_callers_pool() {
        // One test touches the process-wide setting, so tests do not race on it.
        set_num_threads(3).unwrap();
        assert_eq!(num_threads(), 3);
        assert_eq!(install(rayon::current_num_threads), 3);
        let other = std::thread::spawn(|| install(|| (rayon::current_num_threads(), rayon::current_thread_index())));
        assert_eq!(other.join().unwrap().0, 3);
        set_num_threads(1).unwrap();
        assert_eq!(install(rayon::current_num_threads), 1);
        set_num_threads(0).unwrap();
        assert_eq!(install(rayon::current_thread_index), None);
        assert_eq!(num_threads(), rayon::current_num_threads());
    }
}
