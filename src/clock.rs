//! The wall clock, read in one place: now as epoch seconds or milliseconds.
//! A clock before 1970 reads as 0. Code that must run on a simulated clock
//! (the pollers' schedule) takes the time as an argument instead.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in epoch seconds.
pub fn now_seconds() -> i64 {
    now_ms().div_euclid(1000)
}

/// Now, in epoch milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
