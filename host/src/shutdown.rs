//! Shutdown: a token raised by SIGINT/SIGTERM (or by code) that loops wait
//! on between units of work, so a stop finishes the batch in flight,
//! commits and leaves the consumer group instead of dying mid-batch. A
//! loop that sleeps (a backoff, a poll for changes) wakes as soon as the
//! token is raised, not at the end of its sleep.
//!
//! A task of the worker pool must not sleep at all: its token *yields*
//! (see [`Shutdown::yielding`]). A sleep on it returns at once, as a stop
//! would, and records when the sleeper wanted to go on; the pool runs the
//! task again then, so a holding partition waits on a timer, not a thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::locks::Lock;

#[derive(Clone, Default)]
pub struct Shutdown(Arc<Token>);

#[derive(Default)]
struct Token {
    /// Read on hot paths (per polled message) without a lock.
    requested: AtomicBool,
    /// Taken by waiters and by `request` around the notification, so a
    /// waiter never misses it.
    lock: Mutex<()>,
    raised: Condvar,
    /// Set for a pool task's token: sleeps do not block.
    yields: bool,
    /// The earliest end of a sleep a yielding token cut short.
    resume_at: Mutex<Option<Instant>>,
}

impl Shutdown {
    /// A token nothing has raised yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A token whose sleeps return at once (false, as at a stop) and
    /// remember when the sleeper wanted to go on: [`Shutdown::take_resume_at`].
    /// The code that slept then unwinds as it does at a stop, leaving what
    /// it did not finish unsettled, and is called again at that moment.
    pub fn yielding() -> Self {
        Shutdown(Arc::new(Token {
            yields: true,
            ..Token::default()
        }))
    }

    /// When the sleep a yielding token cut short would have ended (the
    /// earliest, if several were); cleared by the call.
    pub fn take_resume_at(&self) -> Option<Instant> {
        self.0.resume_at.locked().take()
    }

    /// A token that SIGINT and SIGTERM raise, from a thread of its own (a
    /// signal handler may not take a lock).
    pub fn on_signals() -> Result<Self> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let shutdown = Self::new();
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
            .context("cannot listen for SIGINT and SIGTERM")?;
        let raise = shutdown.clone();
        std::thread::Builder::new()
            .name("plugboard-signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    tracing::info!(signal, "stopping: finishing the batches in flight");
                    raise.request();
                }
            })
            .context("cannot start the signal thread")?;
        Ok(shutdown)
    }

    /// Raises the token; every waiter wakes.
    pub fn request(&self) {
        self.0.requested.store(true, Ordering::SeqCst);
        let _guard = self.0.lock.locked();
        self.0.raised.notify_all();
    }

    pub fn is_requested(&self) -> bool {
        self.0.requested.load(Ordering::SeqCst)
    }

    /// Sleeps up to `duration`; returns early (false) when the token is
    /// raised meanwhile, true if the whole time passed.
    pub fn sleep(&self, duration: Duration) -> bool {
        let end = Instant::now() + duration;
        if self.0.yields {
            if !self.is_requested() {
                let mut at = self.0.resume_at.locked();
                *at = Some(at.map_or(end, |at| at.min(end)));
            }
            return false;
        }
        let mut guard = self.0.lock.locked();
        while !self.is_requested() {
            let now = Instant::now();
            if now >= end {
                return true;
            }
            guard = self
                .0
                .raised
                .wait_timeout(guard, end - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        false
    }

    /// Waits for `future` on this thread, with no async runtime; `None` if
    /// the token is raised first (the future is dropped). The token is
    /// looked at every `STOP_CHECK`, so a stop ends the wait that soon.
    pub fn block_on<F: Future + Unpin>(&self, mut future: F) -> Option<F::Output> {
        use std::task::{Context, Poll, Wake, Waker};
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        const STOP_CHECK: Duration = Duration::from_millis(20);
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(output) = std::pin::Pin::new(&mut future).poll(&mut cx) {
                return Some(output);
            }
            if self.is_requested() {
                return None;
            }
            std::thread::park_timeout(STOP_CHECK);
        }
    }

    /// Waits until the token is raised.
    pub fn wait(&self) {
        let mut guard = self.0.lock.locked();
        while !self.is_requested() {
            guard = self
                .0
                .raised
                .wait(guard)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleeper_wakes_when_the_token_is_raised() {
        let shutdown = Shutdown::new();
        let raise = shutdown.clone();
        let began = Instant::now();
        let sleeper = std::thread::spawn(move || shutdown.sleep(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(50));
        raise.request();
        assert!(!sleeper.join().unwrap(), "the sleep was cut short");
        assert!(began.elapsed() < Duration::from_secs(5));
        assert!(raise.is_requested());
        raise.wait();
    }

    #[test]
    fn block_on_returns_the_output_or_gives_up_at_a_stop() {
        let shutdown = Shutdown::new();
        let (tx, rx) = futures::channel::oneshot::channel();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            tx.send(7).unwrap();
        });
        assert_eq!(shutdown.block_on(rx), Some(Ok(7)));
        let (_tx, never) = futures::channel::oneshot::channel::<()>();
        let raise = shutdown.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            raise.request();
        });
        let began = Instant::now();
        assert_eq!(shutdown.block_on(never), None);
        assert!(began.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_yielding_sleep_returns_at_once_and_says_when_to_go_on() {
        let token = Shutdown::yielding();
        let began = Instant::now();
        assert!(!token.sleep(Duration::from_secs(30)));
        assert!(!token.sleep(Duration::from_secs(10)));
        assert!(began.elapsed() < Duration::from_secs(5));
        let at = token.take_resume_at().expect("a sleep was cut short");
        assert!(at >= began + Duration::from_secs(10) && at < began + Duration::from_secs(30));
        assert_eq!(token.take_resume_at(), None);
        token.request();
        assert!(!token.sleep(Duration::from_secs(1)));
        assert_eq!(token.take_resume_at(), None, "a stop is not a pause");
    }

    #[test]
    fn a_sleep_that_is_not_interrupted_lasts() {
        let shutdown = Shutdown::new();
        let began = Instant::now();
        assert!(shutdown.sleep(Duration::from_millis(30)));
        assert!(began.elapsed() >= Duration::from_millis(30));
    }
}
