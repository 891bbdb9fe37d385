//! A plugin's stdout and stderr: each line goes to the host log with the
//! plugin's name, and the last lines are kept so that a trap can be reported
//! with what the plugin printed before it (a Rust panic message, say).

use crate::locks::Lock;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use super::log_budget::LogBudget;
use super::observer::Observer;

/// How many of the latest lines are kept for trap reports.
const TAIL_LINES: usize = 4;
/// A line longer than this is cut, so a plugin cannot grow host memory.
const MAX_LINE: usize = 2048;

/// The output stream handed to one instance.
#[derive(Clone)]
pub struct GuestOutput {
    plugin: Arc<str>,
    tail: Arc<Mutex<VecDeque<String>>>,
    budget: Arc<LogBudget>,
    observer: Option<Arc<dyn Observer>>,
}

impl GuestOutput {
    pub fn new(
        plugin: Arc<str>,
        budget: Arc<LogBudget>,
        observer: Option<Arc<dyn Observer>>,
    ) -> Self {
        GuestOutput {
            plugin,
            tail: Arc::default(),
            budget,
            observer,
        }
    }

    /// The latest lines, oldest first, and forgets them.
    pub fn take_tail(&self) -> Vec<String> {
        self.tail.locked().drain(..).collect()
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            output: self.clone(),
            line: Vec::new(),
        })
    }
}

struct LineWriter {
    output: GuestOutput,
    line: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line).trim_end().to_string();
        self.line.clear();
        if text.is_empty() {
            return;
        }
        // The tail is kept whatever the budget: it explains a trap.
        if let Some(observer) = &self.output.observer {
            observer.record(format!("output: {text}"));
        } else if self.output.budget.admit() {
            tracing::info!(target: "plugin", plugin = &*self.output.plugin, "output: {text}");
        }
        let mut tail = self.output.tail.locked();
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(text);
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        for &byte in buf {
            if byte == b'\n' {
                this.emit();
            } else if this.line.len() < MAX_LINE {
                this.line.push(byte);
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.line.is_empty() {
            this.emit();
        }
        Poll::Ready(Ok(()))
    }
}
