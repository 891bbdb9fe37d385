//! The worker pool: a fixed number of threads (`workers` in the host
//! config, default the cores) run the batches of every plugin's
//! partitions, so threads do not grow with plugins × partitions.
//!
//! A [`Job`] is one unit that must run alone and in order (a partition of
//! one plugin). It is scheduled when it has work (its queue's non-empty
//! callback, a stop), runs one step on whichever worker is free, and says
//! what comes next: more work now (it goes to the back of the queue, so
//! every partition gets its turn), nothing until woken, or nothing until a
//! moment (a hold's backoff: a timer, not a sleeping thread). A job is
//! never run by two workers at once and a wake while it runs is kept, not
//! lost. A job that panics is marked dead and not run again; its owner
//! sees that and replaces it.
//!
//! A step that takes long is most likely a plugin waiting on its sink (an
//! HTTP request): it holds its thread without using a core. So, as Go's
//! scheduler hands a blocked thread's place to another, a watcher starts a
//! spare thread while jobs are ready, no thread is free and a step has run
//! longer than [`STALLED`]: the threads that are not waiting stay about
//! `workers`. A thread beyond `workers` ends when it finds no job ready
//! while the waiting steps are over, or after [`SPARE_IDLE`] without work;
//! there are at most [`MAX_SPARES`].

use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::locks::Lock;

/// How long a step runs before its thread counts as waiting, not working.
pub const STALLED: Duration = Duration::from_millis(20);
/// How long a thread beyond `workers` stays without work before it ends.
pub const SPARE_IDLE: Duration = Duration::from_secs(1);
/// The most threads beyond `workers` the pool starts for waiting steps.
pub const MAX_SPARES: usize = 256;

/// What a job wants after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// More work is ready: run again after the jobs queued meanwhile.
    Again,
    /// Nothing to do until woken.
    Idle,
    /// Nothing to do until this moment, unless woken by a stop.
    At(Instant),
    /// Finished for good.
    Done,
}

/// One unit of work the pool runs, one step at a time.
pub trait Job: Send + Sync {
    fn step(&self) -> Next;
    /// Called once if a step panicked (the pool catches it).
    fn died(&self);
    /// Drops what the job holds: it will not step again.
    fn finish(&self) {}
    /// Name for logs.
    fn name(&self) -> String;
}

/// Where a job stands with the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Queued,
    Running,
    /// Running, and woken meanwhile: queued again when the step ends,
    /// unless it ends waiting for a timer.
    Woken,
    /// Running, and woken by a stop meanwhile: queued again when the step
    /// ends, whatever it asks for, so a stop never waits out a backoff.
    WokenNow,
    /// Waiting for a timer; only a forced wake (a stop) runs it sooner.
    Waiting,
    Done,
}

/// The pool's handle on a job: its phase, and what wakes it.
pub struct Handle {
    job: Weak<dyn Job>,
    phase: Mutex<Phase>,
    /// Bumped at each timer set, so a timer that is no longer the job's
    /// latest does nothing when it fires.
    timer: AtomicU64,
    ended: Condvar,
    pool: Weak<Shared>,
}

impl Handle {
    /// There is work: schedules the job unless it is queued, running (then
    /// it runs again after), waiting on a timer or done.
    pub fn wake(self: &Arc<Self>) {
        self.wake_with(false);
    }

    /// As [`Handle::wake`], and a job waiting on a timer runs now too: for
    /// a stop, which must not wait out a backoff.
    pub fn wake_now(self: &Arc<Self>) {
        self.wake_with(true);
    }

    fn wake_with(self: &Arc<Self>, force: bool) {
        let mut phase = self.phase.locked();
        match *phase {
            Phase::Idle => {}
            Phase::Waiting if force => {}
            Phase::Running | Phase::Woken => {
                *phase = if force { Phase::WokenNow } else { Phase::Woken };
                return;
            }
            _ => return,
        }
        *phase = Phase::Queued;
        drop(phase);
        if let Some(pool) = self.pool.upgrade() {
            pool.push(self.clone());
        }
    }

    /// Marks the job done unless a worker runs it now; false if one does
    /// (then [`Handle::wait_done`] waits for that step).
    pub fn finish_unless_running(&self) -> bool {
        let mut phase = self.phase.locked();
        match *phase {
            Phase::Running | Phase::Woken | Phase::WokenNow => false,
            _ => {
                *phase = Phase::Done;
                self.ended.notify_all();
                true
            }
        }
    }

    /// Waits until the job is done.
    pub fn wait_done(&self) {
        let mut phase = self.phase.locked();
        while *phase != Phase::Done {
            phase = self
                .ended
                .wait(phase)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// A timer: `handle` is due at `at` if its timer is still `generation`.
struct Timer {
    at: Instant,
    generation: u64,
    handle: Arc<Handle>,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timer {
    /// The earliest first out of the (max-)heap.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.at.cmp(&self.at)
    }
}

#[derive(Default)]
struct Queues {
    ready: VecDeque<Arc<Handle>>,
    timers: BinaryHeap<Timer>,
    closed: bool,
    /// Threads alive, and those waiting for a job.
    threads: usize,
    idle: usize,
    /// Names given so far (spares get the next).
    named: usize,
}

#[derive(Default)]
struct Shared {
    queues: Mutex<Queues>,
    work: Condvar,
    /// The threads the pool keeps.
    base: usize,
    /// When the step each thread runs began, by thread number.
    steps: Mutex<BTreeMap<usize, Instant>>,
    /// Spare threads, joined when the pool ends.
    spares: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn push(&self, handle: Arc<Handle>) {
        self.queues.locked().ready.push_back(handle);
        self.work.notify_one();
    }

    fn at(&self, handle: Arc<Handle>, at: Instant) {
        let generation = handle.timer.fetch_add(1, Ordering::SeqCst) + 1;
        let mut queues = self.queues.locked();
        let earliest = queues.timers.peek().is_none_or(|t| at < t.at);
        queues.timers.push(Timer {
            at,
            generation,
            handle,
        });
        drop(queues);
        if earliest {
            // A worker sleeping until a later timer must wake for this one.
            self.work.notify_one();
        }
    }

    /// The next job to run, waiting for one; `None` once closed, or when
    /// this thread is beyond `workers` and not needed: no job is ready and
    /// the threads that are not waiting are enough, or it had nothing to
    /// do for [`SPARE_IDLE`].
    fn next(&self) -> Option<Arc<Handle>> {
        let mut queues = self.queues.locked();
        let mut idle_since: Option<Instant> = None;
        loop {
            if queues.closed {
                queues.threads -= 1;
                return None;
            }
            let now = Instant::now();
            while queues.timers.peek().is_some_and(|t| t.at <= now) {
                let timer = queues.timers.pop().expect("peeked");
                if timer.handle.timer.load(Ordering::SeqCst) != timer.generation {
                    continue;
                }
                let mut phase = timer.handle.phase.locked();
                if *phase == Phase::Waiting {
                    *phase = Phase::Queued;
                    drop(phase);
                    queues.ready.push_back(timer.handle);
                }
            }
            if let Some(handle) = queues.ready.pop_front() {
                if !queues.ready.is_empty() {
                    // Others are ready too: another worker takes the next.
                    self.work.notify_one();
                }
                return Some(handle);
            }
            let since = *idle_since.get_or_insert(now);
            if queues.threads > self.base
                && (now.duration_since(since) >= SPARE_IDLE || self.surplus(&queues))
            {
                queues.threads -= 1;
                return None;
            }
            let mut wait = queues
                .timers
                .peek()
                .map(|t| t.at.saturating_duration_since(now));
            if queues.threads > self.base {
                let left = SPARE_IDLE.saturating_sub(now.duration_since(since));
                wait = Some(wait.map_or(left, |w| w.min(left)));
            }
            queues.idle += 1;
            queues = match wait {
                Some(wait) => {
                    self.work
                        .wait_timeout(queues, wait)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0
                }
                None => self
                    .work
                    .wait(queues)
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            };
            queues.idle -= 1;
        }
    }

    /// Whether more threads than `workers` are free to work: those
    /// counted in `queues` less the ones whose step waits.
    fn surplus(&self, queues: &Queues) -> bool {
        queues.threads.saturating_sub(self.stalled()) > self.base
    }

    /// How many steps have run past [`STALLED`].
    fn stalled(&self) -> usize {
        let now = Instant::now();
        self.steps
            .locked()
            .values()
            .filter(|began| now.duration_since(**began) >= STALLED)
            .count()
    }

    /// Starts a spare thread if jobs wait, no thread is free and steps
    /// have run past [`STALLED`] (one spare per such step at most).
    fn lend(self: &Arc<Self>) {
        let stalled = self.stalled();
        let mut queues = self.queues.locked();
        if queues.closed || queues.idle > 0 || stalled == 0 {
            return;
        }
        // One spare per waiting step, for as many jobs as are ready.
        let room = (self.base + stalled.min(MAX_SPARES)).saturating_sub(queues.threads);
        let lend = room.min(queues.ready.len());
        let first = queues.named;
        queues.named += lend;
        queues.threads += lend;
        drop(queues);
        for number in first..first + lend {
            let shared = self.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("plugboard-worker-{number}"))
                .spawn(move || work(&shared, number));
            match spawned {
                Ok(thread) => {
                    let mut spares = self.spares.locked();
                    spares.retain(|t| !t.is_finished());
                    spares.push(thread);
                }
                Err(e) => {
                    self.queues.locked().threads -= 1;
                    tracing::warn!("cannot start a spare thread of the worker pool: {e}");
                }
            }
        }
    }
}

/// The pool; cloned handles share it. The threads end when the last clone
/// is dropped.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
    _threads: Arc<Threads>,
}

struct Threads {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.shared.queues.locked().closed = true;
        self.shared.work.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let spares = std::mem::take(&mut *self.shared.spares.locked());
        for thread in spares {
            let _ = thread.join();
        }
    }
}

impl Pool {
    /// A pool of `workers` threads (at least one).
    pub fn new(workers: usize) -> std::io::Result<Pool> {
        let workers = workers.max(1);
        let shared = Arc::new(Shared {
            base: workers,
            ..Shared::default()
        });
        {
            let mut queues = shared.queues.locked();
            queues.threads = workers;
            queues.named = workers;
        }
        let mut threads = Vec::new();
        for i in 0..workers {
            let shared = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("plugboard-worker-{i}"))
                    .spawn(move || work(&shared, i))?,
            );
        }
        let watched = Arc::downgrade(&shared);
        threads.push(
            std::thread::Builder::new()
                .name("plugboard-pool-watch".into())
                .spawn(move || watch(&watched))?,
        );
        Ok(Pool {
            _threads: Arc::new(Threads {
                shared: shared.clone(),
                threads,
            }),
            shared,
        })
    }

    /// The number of worker threads it keeps.
    pub fn workers(&self) -> usize {
        self.shared.base
    }

    /// Registers `job` and schedules its first step.
    pub fn add(&self, job: Weak<dyn Job>) -> Arc<Handle> {
        let handle = Arc::new(Handle {
            job,
            phase: Mutex::new(Phase::Idle),
            timer: AtomicU64::new(0),
            ended: Condvar::new(),
            pool: Arc::downgrade(&self.shared),
        });
        handle.wake();
        handle
    }
}

/// Lends spare threads while steps wait, until the pool ends.
fn watch(shared: &Weak<Shared>) {
    loop {
        std::thread::sleep(STALLED / 2);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.queues.locked().closed {
            return;
        }
        shared.lend();
    }
}

fn work(shared: &Shared, number: usize) {
    while let Some(handle) = shared.next() {
        {
            let mut phase = handle.phase.locked();
            if *phase != Phase::Queued {
                // Finished meanwhile.
                continue;
            }
            *phase = Phase::Running;
        }
        shared.steps.locked().insert(number, Instant::now());
        let next = match handle.job.upgrade() {
            None => Next::Done,
            Some(job) => {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.step())) {
                    Ok(next) => next,
                    Err(_) => {
                        tracing::error!(job = job.name(), "a job of the worker pool panicked");
                        job.died();
                        Next::Done
                    }
                }
            }
        };
        shared.steps.locked().remove(&number);
        let mut phase = handle.phase.locked();
        let woken = *phase;
        *phase = match next {
            Next::Done => Phase::Done,
            Next::Again => Phase::Queued,
            Next::Idle if woken != Phase::Running => Phase::Queued,
            Next::Idle => Phase::Idle,
            Next::At(_) if woken == Phase::WokenNow => Phase::Queued,
            Next::At(_) => Phase::Waiting,
        };
        let phase_now = *phase;
        drop(phase);
        match (phase_now, next) {
            (Phase::Done, _) => handle.ended.notify_all(),
            (Phase::Queued, _) => shared.push(handle),
            (Phase::Waiting, Next::At(at)) => shared.at(handle, at),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    struct Counter {
        steps: AtomicUsize,
        /// Steps that say Again before it goes idle.
        again: usize,
        wait: Option<Duration>,
        running: AtomicUsize,
        overlapped: AtomicUsize,
    }

    impl Job for Counter {
        fn step(&self) -> Next {
            if self.running.fetch_add(1, Ordering::SeqCst) > 0 {
                self.overlapped.fetch_add(1, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(1));
            let n = self.steps.fetch_add(1, Ordering::SeqCst) + 1;
            self.running.fetch_sub(1, Ordering::SeqCst);
            if n <= self.again {
                Next::Again
            } else if let Some(wait) = self.wait.filter(|_| n == self.again + 1) {
                Next::At(Instant::now() + wait)
            } else {
                Next::Idle
            }
        }
        fn died(&self) {}
        fn name(&self) -> String {
            "counter".into()
        }
    }

    fn counter(again: usize, wait: Option<Duration>) -> Arc<Counter> {
        Arc::new(Counter {
            steps: AtomicUsize::new(0),
            again,
            wait,
            running: AtomicUsize::new(0),
            overlapped: AtomicUsize::new(0),
        })
    }

    fn until(what: impl Fn() -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while !what() {
            assert!(Instant::now() < end, "not in 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn many_jobs_share_few_threads_and_none_runs_twice_at_once() {
        let pool = Pool::new(2).unwrap();
        let jobs: Vec<Arc<Counter>> = (0..20).map(|_| counter(5, None)).collect();
        let handles: Vec<_> = jobs
            .iter()
            .map(|j| pool.add(Arc::downgrade(&(j.clone() as Arc<dyn Job>))))
            .collect();
        until(|| jobs.iter().all(|j| j.steps.load(Ordering::SeqCst) == 6));
        // Woken while idle or while running: each wake is one more step.
        for _ in 0..50 {
            for h in &handles {
                h.wake();
            }
        }
        until(|| jobs.iter().all(|j| j.steps.load(Ordering::SeqCst) >= 7));
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            jobs.iter()
                .all(|j| j.overlapped.load(Ordering::SeqCst) == 0)
        );
    }

    #[test]
    fn a_waiting_job_runs_at_its_time_or_when_woken_now() {
        let pool = Pool::new(1).unwrap();
        let job = counter(0, Some(Duration::from_millis(300)));
        let as_job: Arc<dyn Job> = job.clone();
        let handle = pool.add(Arc::downgrade(&as_job));
        until(|| job.steps.load(Ordering::SeqCst) == 1);
        let began = Instant::now();
        handle.wake();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(job.steps.load(Ordering::SeqCst), 1, "a plain wake waits");
        until(|| job.steps.load(Ordering::SeqCst) == 2);
        assert!(began.elapsed() >= Duration::from_millis(200));

        let job = counter(0, Some(Duration::from_secs(60)));
        let as_job: Arc<dyn Job> = job.clone();
        let handle = pool.add(Arc::downgrade(&as_job));
        until(|| job.steps.load(Ordering::SeqCst) == 1);
        handle.wake_now();
        until(|| job.steps.load(Ordering::SeqCst) == 2);
    }

    /// A step that waits (as on a slow sink) and notes how many run at once.
    struct Waits {
        running: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
        steps: AtomicUsize,
    }

    impl Job for Waits {
        fn step(&self) -> Next {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(150));
            self.running.fetch_sub(1, Ordering::SeqCst);
            self.steps.fetch_add(1, Ordering::SeqCst);
            Next::Idle
        }
        fn died(&self) {}
        fn name(&self) -> String {
            "waits".into()
        }
    }

    #[test]
    fn steps_that_wait_get_spare_threads_which_end_when_idle() {
        let pool = Pool::new(1).unwrap();
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let jobs: Vec<Arc<Waits>> = (0..4)
            .map(|_| {
                Arc::new(Waits {
                    running: running.clone(),
                    most: most.clone(),
                    steps: AtomicUsize::new(0),
                })
            })
            .collect();
        let _handles: Vec<_> = jobs
            .iter()
            .map(|j| pool.add(Arc::downgrade(&(j.clone() as Arc<dyn Job>))))
            .collect();
        until(|| jobs.iter().all(|j| j.steps.load(Ordering::SeqCst) == 1));
        assert!(
            most.load(Ordering::SeqCst) > 1,
            "waiting steps ran one at a time on a pool of one"
        );
        // Without work the spares end; the pool keeps its one thread.
        until(|| pool.shared.queues.locked().threads == 1);
    }

    /// A step that asks to wait a minute, as a held partition does.
    struct Holds {
        steps: AtomicUsize,
        began: Arc<AtomicUsize>,
    }

    impl Job for Holds {
        fn step(&self) -> Next {
            self.began.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(100));
            self.steps.fetch_add(1, Ordering::SeqCst);
            Next::At(Instant::now() + Duration::from_secs(60))
        }
        fn died(&self) {}
        fn name(&self) -> String {
            "holds".into()
        }
    }

    #[test]
    fn a_stop_during_a_step_that_ends_waiting_runs_it_again_at_once() {
        let pool = Pool::new(1).unwrap();
        let began = Arc::new(AtomicUsize::new(0));
        let job = Arc::new(Holds {
            steps: AtomicUsize::new(0),
            began: began.clone(),
        });
        let as_job: Arc<dyn Job> = job.clone();
        let handle = pool.add(Arc::downgrade(&as_job));
        until(|| job.steps.load(Ordering::SeqCst) == 1);
        // A plain wake while it waits does not cut the wait short...
        handle.wake();
        // ...and one while a step runs does not either, once the step
        // asks to wait; a wake for a stop does.
        handle.wake_now();
        until(|| began.load(Ordering::SeqCst) == 2);
        handle.wake();
        handle.wake_now();
        until(|| job.steps.load(Ordering::SeqCst) == 3);
    }

    struct Panics;
    impl Job for Panics {
        fn step(&self) -> Next {
            panic!("on purpose")
        }
        fn died(&self) {}
        fn name(&self) -> String {
            "panics".into()
        }
    }

    #[test]
    fn a_panicking_job_ends_and_the_pool_goes_on() {
        let pool = Pool::new(1).unwrap();
        let bad: Arc<dyn Job> = Arc::new(Panics);
        let handle = pool.add(Arc::downgrade(&bad));
        handle.wait_done();
        let job = counter(0, None);
        let as_job: Arc<dyn Job> = job.clone();
        pool.add(Arc::downgrade(&as_job));
        until(|| job.steps.load(Ordering::SeqCst) == 1);
    }
}
