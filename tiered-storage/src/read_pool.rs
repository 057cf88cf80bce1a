//! Threads for catch-up reads, at a lower CPU priority than the rest of the
//! broker: decoding what replays fetch from object storage, and reading
//! local segments for consumers behind the memory tail.
//!
//! Decoding Parquet (zstd, and one copy per record) is most of a replay's
//! CPU, and a catch-up from local segments copies and checksums every
//! batch. On a machine whose cores the write path needs, a catch-up at full
//! speed takes them from the producers. At a higher nice value the reads
//! get the CPU live traffic leaves over, and all of it when the broker is
//! otherwise idle; the delivery of what they read waits for them, so the
//! whole catch-up slows down, not only its reads. The pool also bounds how
//! many reads run at once, where the blocking pool would start a thread for
//! each, and runs the jobs a reader waits for before readahead, so a
//! replay's next messages never queue behind objects it will need later.
//!
//! The priority is per thread, which Linux supports; elsewhere the threads
//! run at the broker's own priority. An unprivileged process may raise its
//! nice value but not lower it again, hence threads of their own rather
//! than blocking-pool threads lent for the length of a decode.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of low-priority threads running read jobs in arrival order,
/// jobs a reader waits for before readahead.
#[derive(Debug)]
pub struct ReadPool {
    /// `None` when no thread could be started: jobs then go to the blocking
    /// pool at normal priority.
    queue: Option<Arc<Queue>>,
}

/// Which of the pool's two queues a job joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Work a reader is waiting for.
    Wanted,
    /// Work done ahead of a reader (readahead), run only when no wanted
    /// job waits.
    Ahead,
}

#[derive(Default)]
struct Queue {
    jobs: Mutex<Jobs>,
    ready: Condvar,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Jobs {
    wanted: VecDeque<Job>,
    ahead: VecDeque<Job>,
    /// Set when the pool is dropped: threads finish the queued jobs, then end.
    closed: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next job, wanted ones first; `None` once closed and empty.
    fn next(&self) -> Option<Job> {
        let mut jobs = self.lock();
        loop {
            if let Some(job) = jobs.wanted.pop_front().or_else(|| jobs.ahead.pop_front()) {
                return Some(job);
            }
            if jobs.closed {
                return None;
            }
            jobs = self
                .ready
                .wait(jobs)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl ReadPool {
    /// Starts `threads` threads named `name` and their number, whose nice
    /// value is `nice` above the broker's (0 keeps its priority; nice values
    /// stop at 19). They end once the pool is dropped and their queue is
    /// empty.
    pub fn start(name: &str, threads: usize, nice: i32) -> ReadPool {
        let queue = Arc::new(Queue::default());
        let mut started = 0;
        for index in 0..threads.max(1) {
            let queue = Arc::clone(&queue);
            let spawned = std::thread::Builder::new()
                // Linux keeps 15 bytes of a thread's name.
                .name(format!("{name}-{index}"))
                .spawn(move || serve(&queue, nice));
            match spawned {
                Ok(_) => started += 1,
                Err(error) => {
                    tracing::warn!(%error, pool = name, "cannot start a read thread");
                }
            }
        }
        ReadPool {
            queue: (started > 0).then_some(queue),
        }
    }

    /// Runs `job` on the pool, in the [`Lane::Wanted`] queue, and returns
    /// its result. A job that panics gives [`Error::ReadAborted`].
    pub async fn run<T, F>(&self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.run_in(Lane::Wanted, job).await
    }

    /// Runs `job` on the pool in `lane` and returns its result.
    pub async fn run_in<T, F>(&self, lane: Lane, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let Some(queue) = &self.queue else {
            return tokio::task::spawn_blocking(job)
                .await
                .map_err(|_| Error::ReadAborted);
        };
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(job());
        });
        {
            let mut jobs = queue.lock();
            match lane {
                Lane::Wanted => jobs.wanted.push_back(job),
                Lane::Ahead => jobs.ahead.push_back(job),
            }
        }
        queue.ready.notify_one();
        result.await.map_err(|_| Error::ReadAborted)
    }
}

impl Drop for ReadPool {
    fn drop(&mut self) {
        if let Some(queue) = &self.queue {
            queue.lock().closed = true;
            queue.ready.notify_all();
        }
    }
}

/// One thread's life: lower its priority, then run jobs until the pool is
/// dropped and its queues are empty.
fn serve(queue: &Queue, nice: i32) {
    lower_priority(nice);
    while let Some(job) = queue.next() {
        // A panicking job drops its result sender, which its caller sees.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
    }
}

#[cfg(target_os = "linux")]
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: nice takes no pointers and, on Linux, changes the calling
    // thread alone; errno is thread-local, so clearing it first is what
    // tells a failure from a new nice value of -1.
    let failed = unsafe {
        *libc::__errno_location() = 0;
        libc::nice(nice) == -1 && *libc::__errno_location() != 0
    };
    if failed {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, nice, "cannot lower the priority of a read thread");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_nice: i32) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_the_pool_and_return_their_results() {
        let pool = ReadPool::start("sava-test", 2, 0);
        let names =
            futures::future::join_all((0..8).map(|i| {
                pool.run(move || (i * 2, std::thread::current().name().map(str::to_owned)))
            }))
            .await;
        for (i, outcome) in names.into_iter().enumerate() {
            let (doubled, name) = outcome.unwrap();
            assert_eq!(doubled, i * 2);
            assert!(name.unwrap().starts_with("sava-test-"));
        }
    }

    #[tokio::test]
    async fn a_panicking_job_fails_alone_and_the_pool_goes_on() {
        let pool = ReadPool::start("sava-test", 1, 0);
        let failed = pool.run(|| -> u32 { panic!("a corrupt object") }).await;
        assert!(matches!(failed, Err(Error::ReadAborted)), "{failed:?}");
        assert_eq!(pool.run(|| 7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn wanted_jobs_run_before_readahead_queued_earlier() {
        let pool = ReadPool::start("sava-test", 1, 0);
        let order = Arc::new(Mutex::new(Vec::new()));
        // Holds the one thread until every job below is queued.
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let blocker = pool.run(move || gate.recv().ok());
        let log = |name: &'static str| {
            let order = Arc::clone(&order);
            move || order.lock().unwrap().push(name)
        };
        let ahead = pool.run_in(Lane::Ahead, log("ahead"));
        let wanted = pool.run_in(Lane::Wanted, log("wanted"));
        // join polls in order, so all three are queued before the release.
        let releaser = async {
            tokio::task::yield_now().await;
            release.send(()).unwrap();
        };
        let (blocked, ahead, wanted, ()) = futures::join!(blocker, ahead, wanted, releaser);
        blocked.unwrap();
        ahead.unwrap();
        wanted.unwrap();

        assert_eq!(*order.lock().unwrap(), vec!["wanted", "ahead"]);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_threads_run_at_the_nice_value_asked_for() {
        let pool = ReadPool::start("sava-test", 1, 5);
        let nice = pool
            .run(|| {
                // SAFETY: as in lower_priority.
                unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
            })
            .await
            .unwrap();
        // SAFETY: as above, for the calling thread.
        let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        assert_eq!(nice, (own + 5).min(19));
    }
}
