//! Transfer progress: a live bar on a terminal, a few plain lines in a pipe
//! or log (a redrawn bar would fill a log file with escape codes), nothing
//! with --quiet.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Plain mode prints a line each time another tenth is done.
const PLAIN_STEPS: u64 = 10;

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
                let style = ProgressStyle::with_template(
                    "{msg}: {percent:>3}% [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("█▉▊▋▌▍▎▏ ");
                bar.set_style(style);
                bar.set_message(label.to_owned());
                bar.set_position(already);
                bar.reset_eta();
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
                println!(
                    "{}: {:>3}% ({} of {})",
                    plain.label,
                    now * (100 / PLAIN_STEPS),
                    human_bytes(done),
                    human_bytes(plain.total)
                );
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
    fn quiet_progress_counts_silently() {
        let p = Progress::new(Mode::Quiet, "x", 10, 3);
        p.inc(4);
        assert_eq!(p.done(), 7);
    }
}
