//! Everything the CLI prints goes through here.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use fleet_engine::apply::{ApplyEvent, Observer};

/// Writes a block to standard output.
pub(crate) fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// Writes a line to standard output.
pub(crate) fn line(text: &str) {
    out(&format!("{text}\n"));
}

/// Writes a line to standard error.
pub(crate) fn warn(text: &str) {
    eprintln!("{text}");
}

/// Writes a diagnostic to standard error with the installed miette handler. Fleet-file
/// problems whose lines are too long to draw carry no snippet (`spec::diagnostic`), so this
/// cannot hit the graphical handler's 65,535-column limit.
pub(crate) fn diagnostic(report: miette::Report) {
    warn(&format!("{report:?}"));
}

/// Whether to colour standard output.
pub(crate) fn color() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stdout().is_terminal()
}

/// Apply progress: one updating status line on a terminal, one line per event otherwise.
pub(crate) struct Progress {
    terminal: bool,
    last_width: Mutex<usize>,
}

impl Progress {
    pub(crate) fn new() -> Progress {
        Progress {
            terminal: std::io::stdout().is_terminal(),
            last_width: Mutex::new(0),
        }
    }

    fn permanent(&self, text: &str) {
        let mut width = self.last_width.lock().unwrap_or_else(|p| p.into_inner());
        if self.terminal && *width > 0 {
            out(&format!("\r{}\r", " ".repeat(*width)));
            *width = 0;
        }
        line(text);
    }

    fn status(&self, text: &str) {
        let mut width = self.last_width.lock().unwrap_or_else(|p| p.into_inner());
        let padding = width.saturating_sub(text.chars().count());
        out(&format!("\r{text}{}", " ".repeat(padding)));
        *width = text.chars().count();
    }

    /// Clears the status line.
    pub(crate) fn finish(&self) {
        let mut width = self.last_width.lock().unwrap_or_else(|p| p.into_inner());
        if self.terminal && *width > 0 {
            out(&format!("\r{}\r", " ".repeat(*width)));
            *width = 0;
        }
    }
}

impl Observer for Progress {
    fn event(&self, event: &ApplyEvent, done: usize, total: usize) {
        match event {
            ApplyEvent::Started {
                address,
                step,
                name,
            } => {
                if self.terminal {
                    self.status(&format!("[{done}/{total}] {step} {address} ({name})…"));
                } else {
                    line(&format!(
                        "[{done}/{total}] {step} {address} ({name}): started"
                    ));
                }
            }
            ApplyEvent::Replanned {
                plan_id,
                summary,
                changes,
                ..
            } => {
                self.permanent(&format!(
                    "The cloud changed between the plan and the lock; planned again under the lock (plan {plan_id}): {summary}"
                ));
                for change in changes {
                    self.permanent(&format!("  {change}"));
                }
            }
            ApplyEvent::Retrying {
                address,
                step,
                attempt,
                error,
                delay_ms,
            } => {
                let text = format!("        {step} {address}: attempt {attempt} failed ({error}); retrying in {delay_ms} ms");
                if self.terminal {
                    self.status(&text);
                } else {
                    line(&text);
                }
            }
            ApplyEvent::Succeeded {
                address, step, id, ..
            } => {
                self.permanent(&format!("[{done}/{total}] {step} {address}: done ({id})"));
            }
            ApplyEvent::Failed {
                address,
                step,
                error,
            } => {
                self.permanent(&format!(
                    "[{done}/{total}] {step} {address}: FAILED: {error}"
                ));
            }
            ApplyEvent::NotStarted {
                address,
                step,
                because,
            } => {
                self.permanent(&format!(
                    "[{done}/{total}] {step} {address}: not started, because {because}"
                ));
            }
            ApplyEvent::Skipped {
                address,
                step,
                because,
            } => {
                self.permanent(&format!(
                    "[{done}/{total}] {step} {address}: skipped, because {because} failed"
                ));
            }
        }
    }
}
