//! A team of helper threads that run a call's tasks with the calling thread, the way an
//! OpenMP runtime runs a parallel loop: the caller takes tasks too, and each helper
//! keeps polling for a while after a call before it sleeps ([`spin`],
//! `PROJROUTE_SPIN_US`), yielding its core to any other runnable thread meanwhile.
//!
//! Why not rayon's pool alone: its workers sleep within microseconds of running out of
//! work, and on a shared host (a VM whose cores the hypervisor lends to others while
//! they sleep) waking one again took 1-3 ms, as long as a whole 1024-row PRLE batch.
//! Back-to-back calls paid it every time. A helper that is still polling when the next
//! call comes needs no waking; one that sleeps is woken, and until it arrives the caller
//! works alone, never waiting for a helper that has not started.
//!
//! One team serves the process, for one call at a time: a call that finds it busy (a
//! second thread's call, or a task's own) runs its tasks on the current rayon pool
//! instead, as does a call under `packed::on_this_thread` (serially).

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, TryLockError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// How long a helper polls for the next call before it sleeps: `PROJROUTE_SPIN_US`
/// microseconds (read once; 0 sleeps at once), by default 1 ms.
fn spin() -> Duration {
    static SPIN: OnceLock<Duration> = OnceLock::new();
    *SPIN.get_or_init(|| {
        let us = std::env::var("PROJROUTE_SPIN_US").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(1000);
        Duration::from_micros(us)
    })
}

/// Run `task(i)` once for every `i < n`, on the calling thread and the team's helpers
/// (the current rayon pool's size in all), returning when all have run. A panic in a
/// task is resumed here, after every thread has stopped using `task`.
pub(crate) fn run(n: usize, task: &(dyn Fn(usize) + Sync)) {
    let threads = rayon::current_num_threads();
    if n <= 1 || threads <= 1 || crate::packed::on_this_thread_now() {
        return (0..n).for_each(task);
    }
    static TEAM: Mutex<Option<Team>> = Mutex::new(None);
    let mut team = match TEAM.try_lock() {
        Ok(team) => team,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => return (0..n).into_par_iter().for_each(task),
    };
    if team.as_ref().is_none_or(|t| t.helpers.len() != threads - 1) {
        *team = None; // the old team's helpers stop before new ones start
        *team = Team::start(threads - 1);
    }
    match team.as_ref() {
        Some(team) => team.run(n, task),
        None => (0..n).into_par_iter().for_each(task),
    }
}

/// `f(i)` for every `i < n`, as the tasks of [`run`]: the results in order.
pub(crate) fn map<T: Send + Sync>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let done: Vec<OnceLock<T>> = (0..n).map(|_| OnceLock::new()).collect();
    run(n, &|i| assert!(done[i].set(f(i)).is_ok(), "task {i} ran twice"));
    done.into_iter().map(|d| d.into_inner().expect("every task ran")).collect()
}

/// `f(chunk, first)` on each chunk of `rows` rows of `x` (`first` its first row's index
/// in `x`), each chunk one task of [`run`] on one thread (`packed::on_this_thread`):
/// the results stacked in batch order, or the first failing chunk's error.
pub(crate) fn map_rows(
    x: ArrayView2<f32>,
    rows: usize,
    f: impl Fn(ArrayView2<f32>, usize) -> Result<Array2<f32>> + Sync,
) -> Result<Array2<f32>> {
    let chunks: Vec<ArrayView2<f32>> = x.axis_chunks_iter(Axis(0), rows.max(1)).collect();
    let done = map(chunks.len(), |t| crate::packed::on_this_thread(|| f(chunks[t], t * rows)));
    let done = done.into_iter().collect::<Result<Vec<_>>>()?;
    let views: Vec<ArrayView2<f32>> = done.iter().map(|y| y.view()).collect();
    ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Backend(format!("chunks of unequal width: {e}")))
}

/// `state`: the call's generation in the high 32 bits, [`CLOSED`], and the number of
/// helpers that joined the call in the bits below.
const CLOSED: u64 = 1 << 31;
const JOINED: u64 = CLOSED - 1;

/// One call's work, on the caller's stack while the call lasts.
struct Job<'a> {
    task: &'a (dyn Fn(usize) + Sync),
    n: usize,
}

/// What the caller and the helpers share.
struct Shared {
    state: AtomicU64,
    /// The current call's [`Job`]: set before its generation is published, read only by
    /// helpers that joined it, which the caller waits for before the job goes away.
    job: AtomicPtr<Job<'static>>,
    /// The next task to take.
    next: AtomicUsize,
    /// Helpers that joined the current call and are done with it.
    finished: AtomicUsize,
    /// The first panic of a helper's task in the current call.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    quit: AtomicBool,
}

impl Shared {
    /// Take tasks until none are left.
    fn work(&self, job: &Job<'_>) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= job.n {
                return;
            }
            (job.task)(i);
        }
    }
}

struct Team {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
}

impl Team {
    /// `helpers` threads, or `None` if the system will not start them.
    fn start(helpers: usize) -> Option<Self> {
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            next: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            panic: Mutex::new(None),
            quit: AtomicBool::new(false),
        });
        let mut team = Team { shared, helpers: Vec::with_capacity(helpers) };
        for i in 0..helpers {
            let shared = team.shared.clone();
            let spawned = thread::Builder::new().name(format!("projroute-team-{i}")).spawn(move || helper(&shared));
            // On failure `team` drops here, stopping the helpers already started.
            team.helpers.push(spawned.ok()?);
        }
        Some(team)
    }

    fn run(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
        let s = &self.shared;
        let job = Job { task, n };
        s.next.store(0, Ordering::Relaxed);
        s.finished.store(0, Ordering::Relaxed);
        // SAFETY of the lifetime erased here: helpers read `job` only after joining this
        // generation, and this call does not return (or unwind) before every helper that
        // joined has finished with it; the pointer is cleared before `job` drops.
        s.job.store((&job as *const Job<'_>).cast_mut().cast(), Ordering::Relaxed);
        let generation = (s.state.load(Ordering::Relaxed) >> 32) + 1;
        s.state.store(generation << 32, Ordering::Release);
        self.helpers.iter().for_each(|h| h.thread().unpark());
        let mine = catch_unwind(AssertUnwindSafe(|| s.work(&job)));
        // Close the call: no helper joins after this; wait for those that did.
        let joined = (s.state.fetch_or(CLOSED, Ordering::AcqRel) & JOINED) as usize;
        while s.finished.load(Ordering::Acquire) < joined {
            std::hint::spin_loop();
        }
        s.job.store(std::ptr::null_mut(), Ordering::Relaxed);
        let theirs = s.panic.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(payload) = mine.err().or(theirs) {
            resume_unwind(payload);
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.quit.store(true, Ordering::Release);
        for h in self.helpers.drain(..) {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

/// A helper's life: wait for a call (polling, then asleep), join it unless it is
/// closed, take tasks, report done; until the team stops.
fn helper(s: &Shared) {
    let mut seen = 0;
    loop {
        let Some(mut state) = wait_for_call(s, seen) else { return };
        seen = state >> 32;
        while state >> 32 == seen && state & CLOSED == 0 {
            match s.state.compare_exchange_weak(state, state + 1, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => {
                    // SAFETY: joined before the call closed, so the caller waits for
                    // `finished` below before its job goes away.
                    let job = unsafe { &*s.job.load(Ordering::Relaxed) };
                    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| s.work(job))) {
                        s.panic.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(payload);
                    }
                    s.finished.fetch_add(1, Ordering::Release);
                    break;
                }
                Err(now) => state = now,
            }
        }
    }
}

/// The state of the first call after generation `seen`, or `None` once the team stops:
/// polling (and yielding) for [`spin`], then parked until the caller unparks this thread.
fn wait_for_call(s: &Shared, seen: u64) -> Option<u64> {
    let since = Instant::now();
    let mut spins = 0u32;
    loop {
        if s.quit.load(Ordering::Acquire) {
            return None;
        }
        let state = s.state.load(Ordering::Acquire);
        if state >> 32 != seen {
            return Some(state);
        }
        // Between checks the core is offered to any other runnable thread (rayon's
        // workers, after a call that mixes the two): the helper keeps its core awake
        // without taking it from work.
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(16) {
            std::hint::spin_loop();
        } else if since.elapsed() < spin() {
            thread::yield_now();
        } else {
            thread::park();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many times each of `n` tasks ran, and on how many threads.
    fn counts(n: usize, pool: &rayon::ThreadPool) -> (Vec<usize>, usize) {
        let ran: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        let threads = Mutex::new(std::collections::HashSet::new());
        pool.install(|| {
            run(n, &|i| {
                ran[i].fetch_add(1, Ordering::Relaxed);
                threads.lock().unwrap().insert(thread::current().id());
                // Long enough for a helper to wake and take some.
                thread::sleep(Duration::from_micros(200));
            })
        });
        (ran.into_iter().map(AtomicUsize::into_inner).collect(), threads.into_inner().unwrap().len())
    }

    #[test]
    fn every_task_runs_once_on_the_caller_and_the_helpers() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for n in [0, 1, 2, 7, 64] {
            assert!(counts(n, &pool).0.iter().all(|&c| c == 1), "{n} tasks");
        }
        // Over some calls of 64 tasks the helpers take part (whether a sleeping helper
        // wakes within one call is up to the system).
        assert!((0..20).any(|_| counts(64, &pool).1 > 1), "no helper ever ran a task");
        // A pool of one runs on the caller alone.
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        assert_eq!(counts(16, &one), (vec![1; 16], 1));
    }

    #[test]
    fn map_rows_stacks_the_chunks_in_order_or_gives_the_first_error() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let x = Array2::from_shape_fn((203, 3), |(i, j)| (i * 3 + j) as f32);
        // Each chunk's rows doubled, and a column with the chunk's first row.
        let f = |c: ArrayView2<f32>, first: usize| {
            let mut y = ndarray::concatenate(Axis(1), &[c.view(), c.view()]).unwrap();
            y.column_mut(0).fill(first as f32);
            if c.iter().any(|&v| v < 0.0) {
                return Err(Error::InvalidInput(format!("chunk at {first}")));
            }
            Ok(y)
        };
        let y = pool.install(|| map_rows(x.view(), 16, f)).unwrap();
        assert_eq!(y.dim(), (203, 6));
        for (i, row) in y.outer_iter().enumerate() {
            assert_eq!(row[0], (i / 16 * 16) as f32, "row {i}");
            assert_eq!(row.slice(ndarray::s![1..3]), x.row(i).slice(ndarray::s![1..3]));
            assert_eq!(row.slice(ndarray::s![3..]), x.row(i));
        }
        let mut bad = x.clone();
        bad[[200, 1]] = -1.0;
        bad[[40, 1]] = -1.0;
        for _ in 0..10 {
            let err = pool.install(|| map_rows(bad.view(), 16, f)).unwrap_err();
            assert_eq!(err.to_string(), Error::InvalidInput("chunk at 32".into()).to_string());
        }
    }

    #[test]
    fn a_panicking_task_panics_the_call_and_the_team_goes_on() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for bad in [0, 31] {
            let result =
                catch_unwind(AssertUnwindSafe(|| pool.install(|| run(32, &|i| assert_ne!(i, bad, "task {i} fails")))));
            let message = result.unwrap_err().downcast::<String>().unwrap();
            assert!(message.contains(&format!("task {bad} fails")), "{message}");
            assert_eq!(counts(32, &pool).0, vec![1; 32]);
        }
    }

    #[test]
    fn concurrent_and_nested_calls_all_complete() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let total = AtomicUsize::new(0);
        thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    pool.install(|| {
                        run(8, &|_| {
                            // A call inside a task finds the team busy.
                            run(4, &|_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            })
                        })
                    })
                });
            }
        });
        assert_eq!(total.into_inner(), 4 * 8 * 4);
    }
}
