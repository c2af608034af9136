//! Transfer progress: a live bar on a terminal, a few plain lines in a pipe
//! or log (a redrawn bar would fill a log file with escape codes), nothing
//! with --quiet.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// Plain mode prints a line each time another tenth is done.
const PLAIN_STEPS: u64 = 10;
/// A speed measured over less than this is mostly noise (the first block
/// of a window): none is shown before.
const RATE_AFTER: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bar,
    Plain,
    Quiet,
}

impl Mode {
    pub fn pick(quiet: bool) -> Mode {
        if quiet {
            Mode::Quiet
        } else if std::io::stdout().is_terminal() {
            Mode::Bar
        } else {
            Mode::Plain
        }
    }
}

#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    plain: Option<Plain>,
    done: AtomicU64,
    /// Bytes done before this run (a resume): not this run's speed.
    already: u64,
    started: Instant,
}

#[derive(Debug)]
struct Plain {
    label: String,
    total: u64,
    /// Highest tenth already printed; the lock keeps lines in order when
    /// several connections report at once.
    printed: Mutex<u64>,
}

impl Progress {
    /// `already` bytes count as done from the start (a resumed upload).
    pub fn new(mode: Mode, label: &str, total: u64, already: u64) -> Progress {
        let (bar, plain) = match mode {
            Mode::Bar => {
                let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stdout());
                // Speed and ETA from this run's own bytes and clock, not
                // indicatif's estimator, which counts a resumed upload's
                // starting position as bytes moved in its first instant.
                let speed = move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    if let Some(r) = rate(state.pos().saturating_sub(already), state.elapsed()) {
                        let _ = write!(w, "{}/s", human_bytes(r as u64));
                    }
                };
                let eta = move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let left = state.len().unwrap_or(0).saturating_sub(state.pos());
                    match rate(state.pos().saturating_sub(already), state.elapsed()) {
                        Some(r) if r > 0.0 => {
                            let _ = write!(w, "ETA {}", clock(left as f64 / r));
                        }
                        _ => {}
                    }
                };
                let style = ProgressStyle::with_template(
                    "{msg}: {percent:>3}% [{wide_bar}] {bytes}/{total_bytes} {rate} {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .with_key("rate", speed)
                .with_key("eta", eta)
                .progress_chars("█▉▊▋▌▍▎▏ ");
                bar.set_style(style);
                bar.set_message(label.to_owned());
                bar.set_position(already);
                bar.reset_elapsed();
                (Some(bar), None)
            }
            Mode::Plain => (
                None,
                Some(Plain {
                    label: label.to_owned(),
                    total,
                    printed: Mutex::new(tenths(already, total)),
                }),
            ),
            Mode::Quiet => (None, None),
        };
        Progress {
            bar,
            plain,
            done: AtomicU64::new(already),
            already,
            started: Instant::now(),
        }
    }

    pub fn inc(&self, bytes: u64) {
        let done = self.done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
        if let Some(plain) = &self.plain {
            let now = tenths(done, plain.total);
            let mut printed = plain.printed.lock().unwrap_or_else(|p| p.into_inner());
            if now > *printed {
                *printed = now;
                let speed = rate(done.saturating_sub(self.already), self.started.elapsed())
                    .map(|r| format!(", {}/s", human_bytes(r as u64)))
                    .unwrap_or_default();
                crate::say(format_args!(
                    "{}: {:>3}% ({} of {}{speed})",
                    plain.label,
                    now * (100 / PLAIN_STEPS),
                    human_bytes(done),
                    human_bytes(plain.total)
                ));
            }
        }
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Leave the finished bar on screen; the cursor is still on its line, so
    /// what follows needs a line of its own.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
            crate::say("");
        }
    }

    /// Freeze the bar so an error message starts on a clean line below it.
    pub fn abandon(&self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
            crate::say("");
        }
    }
}

/// Bytes per second over this run, once it has run long enough to tell.
fn rate(moved: u64, elapsed: Duration) -> Option<f64> {
    (elapsed >= RATE_AFTER).then(|| moved as f64 / elapsed.as_secs_f64())
}

/// 75.4 → "1:15"; 4000 → "1:06:40".
fn clock(secs: f64) -> String {
    let s = secs.ceil().min(359_999.0) as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

fn tenths(done: u64, total: u64) -> u64 {
    if total == 0 {
        return PLAIN_STEPS;
    }
    // u128: bytes × 10 cannot overflow, whatever the file size.
    (u128::from(done.min(total)) * u128::from(PLAIN_STEPS) / u128::from(total)) as u64
}

/// 1536 → "1.5 KiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A short summary of a finished transfer: size, time and rate.
pub fn summary(bytes: u64, started: Instant) -> String {
    let secs = started.elapsed().as_secs_f64();
    let rate = if secs > 0.0 {
        format!("{}/s", human_bytes((bytes as f64 / secs) as u64))
    } else {
        "-".into()
    };
    format!("{} in {secs:.2} s ({rate})", human_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_steps() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(100 << 20), "100.0 MiB");
        assert_eq!(tenths(0, 100), 0);
        assert_eq!(tenths(19, 100), 1);
        assert_eq!(tenths(100, 100), 10);
        assert_eq!(tenths(0, 0), 10);
        assert_eq!(tenths(u64::MAX, u64::MAX), 10);
    }

    #[test]
    fn rates_wait_for_enough_time_and_clocks_read_well() {
        assert_eq!(rate(1 << 30, Duration::from_millis(10)), None);
        assert_eq!(rate(1 << 20, Duration::from_secs(2)), Some(524_288.0));
        assert_eq!(clock(75.4), "1:16");
        assert_eq!(clock(4000.0), "1:06:40");
        assert_eq!(clock(0.0), "0:00");
    }

    #[test]
    fn quiet_progress_counts_silently() {
        let p = Progress::new(Mode::Quiet, "x", 10, 3);
        p.inc(4);
        assert_eq!(p.done(), 7);
    }
}
