//! A tiny leveled logger to stderr. Log little: one startup line, one shutdown summary,
//! rate-limited warnings; per-connection events only at `debug`.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
#[repr(u8)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

#[inline]
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Writes one line with the level and the calling thread's name.
pub fn write(level: Level, args: std::fmt::Arguments<'_>) {
    let tag = match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
    };
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("main");
    // Never eprintln!: it panics when stderr is gone (a closed pipe), and a panic in the
    // signal thread would leave SIGTERM unanswered. A lost log line is the lesser harm.
    let _ = writeln!(std::io::stderr().lock(), "epoll-echo[{name}] {tag}: {args}");
}

#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)+) => {
        if $crate::log::enabled($level) {
            $crate::log::write($level, format_args!($($arg)+));
        }
    };
}
