//! Counting sends against rate limits: the [`RateCounter`] trait and its
//! in-memory implementation, [`MemoryCounter`].
//!
//! The rule, for each limit `N` per `window` (with an optional `burst`):
//! a send of `n` is allowed when the sends counted in the last `window`
//! plus `n` are at most `N` (a sliding window over the times of the
//! sends, not fixed buckets that would let `2N` through across a bucket
//! edge) and, if `burst` is set, a bucket of `burst` tokens refilled
//! continuously at `N` per `window` (GCRA) holds `n` tokens. Without
//! `burst`, all `N` may go at once.
//!
//! A send is counted against every limit it asks, or against none: the
//! limits of one recipient (user, domain, network) are checked and
//! counted together, under one lock.
//!
//! Memory: send times are kept rounded *up* to 1/1024 of the window, so a
//! key holds at most 1025 entries whatever `N` is, and a count is never
//! under the truth (a slot frees at most `window / 1024` late). Keys with
//! nothing left in their window are dropped by a sweep every few thousand
//! calls.
//!
//! May import: `config` (the [`Rate`] type). Nothing else: the checks
//! use it, and a shared counter (`cluster::Counters` in PostgreSQL) may
//! implement the same trait.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use crate::config::Rate;

/// One limit to count a send against: a key naming what is counted
/// (`user:app1`, `domain:example.com`, `net:192.0.2.0/24`) and its rate.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub key: &'a str,
    pub rate: &'a Rate,
}

/// Why a send was refused: which of the asks (its index) and how long
/// until it would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub ask: usize,
    pub retry_after: Duration,
    /// This is the first refusal of this key in its window: the caller
    /// logs it (one line per key per window, not one per refusal).
    pub first_in_window: bool,
}

/// Something that counts sends per key. `acquire` is all-or-nothing:
/// either every ask has room for `n` more and `n` is counted against each,
/// or nothing is counted and the first ask without room is named.
///
/// An implementation shared by several nodes (a PostgreSQL table) does
/// the same in one transaction; it is called on the SMTP session's
/// thread, so it must answer quickly (a shared implementation should keep
/// a local answer and reconcile in the background rather than block on
/// the network for each RCPT).
pub trait RateCounter: Send + Sync {
    fn acquire(&self, asks: &[Ask<'_>], n: u64) -> Result<(), Refused>;
}

/// The per-node counter, in memory.
pub struct MemoryCounter {
    start: Instant,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, KeyState>,
    calls: u64,
}

/// One key: its sends in the window and its bucket.
#[derive(Default)]
struct KeyState {
    /// (time in ms, rounded up to the window's tick; sends at that time).
    sends: VecDeque<(u64, u64)>,
    /// Sum of `sends`.
    total: u64,
    /// GCRA's theoretical arrival time, in µs: the bucket is full when it
    /// is at or before now.
    tat: u64,
    /// When a refusal of this key was last reported (ms).
    reported: Option<u64>,
    /// The window of the rate last counted (ms), for the sweep.
    window: u64,
}

/// Sweep idle keys once every this many calls.
const SWEEP_EVERY: u64 = 4096;
/// A window is kept to 1/TICKS of its length.
const TICKS: u64 = 1024;

impl Default for MemoryCounter {
    fn default() -> Self {
        MemoryCounter::new()
    }
}

impl MemoryCounter {
    pub fn new() -> MemoryCounter {
        MemoryCounter { start: Instant::now(), state: Mutex::new(State::default()) }
    }

    /// Keys held now (for tests of the memory bound).
    pub fn keys(&self) -> usize {
        self.state.lock().map(|s| s.keys.len()).unwrap_or(0)
    }

    /// [`RateCounter::acquire`] at `now_ms` milliseconds on this counter's
    /// clock (tests pass their own time).
    pub fn acquire_at(&self, asks: &[Ask<'_>], n: u64, now_ms: u64) -> Result<(), Refused> {
        // A poisoned lock only means another session panicked mid-count:
        // the counts are still usable.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.calls += 1;
        if state.calls.is_multiple_of(SWEEP_EVERY) {
            state.keys.retain(|_, k| !k.idle(now_ms));
        }
        for (i, ask) in asks.iter().enumerate() {
            let key = state.keys.entry(ask.key.to_string()).or_default();
            key.expire(ask.rate, now_ms);
            if let Some(wait) = key.wait(ask.rate, n, now_ms) {
                let window = ms(ask.rate.window);
                let first_in_window = key.reported.is_none_or(|t| now_ms.saturating_sub(t) >= window);
                if first_in_window {
                    key.reported = Some(now_ms);
                }
                return Err(Refused { ask: i, retry_after: Duration::from_micros(wait), first_in_window });
            }
        }
        for ask in asks {
            if let Some(key) = state.keys.get_mut(ask.key) {
                key.count(ask.rate, n, now_ms);
            }
        }
        Ok(())
    }
}

impl RateCounter for MemoryCounter {
    fn acquire(&self, asks: &[Ask<'_>], n: u64) -> Result<(), Refused> {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.acquire_at(asks, n, now)
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl KeyState {
    /// Drops the sends that left the window: a send at `t` counts while
    /// `now < t + window`.
    fn expire(&mut self, rate: &Rate, now_ms: u64) {
        let window = ms(rate.window);
        while let Some(&(t, n)) = self.sends.front() {
            if t + window > now_ms {
                break;
            }
            self.sends.pop_front();
            self.total -= n;
        }
    }

    /// `None` if `n` more may go now, else µs until they may.
    fn wait(&self, rate: &Rate, n: u64, now_ms: u64) -> Option<u64> {
        let window = ms(rate.window);
        if n > rate.count || rate.burst.is_some_and(|b| n > b) {
            // Never: wait a whole window, which is as honest as it gets.
            return Some(window * 1000);
        }
        let mut wait_ms = 0;
        if self.total + n > rate.count {
            // The oldest sends must leave until there is room for n.
            let mut freed = 0;
            for &(t, k) in &self.sends {
                freed += k;
                if self.total - freed + n <= rate.count {
                    wait_ms = (t + window).saturating_sub(now_ms);
                    break;
                }
            }
        }
        let mut wait_us = wait_ms * 1000;
        if let Some(burst) = rate.burst {
            let (t, tau) = gcra(rate, burst);
            let now = now_ms * 1000;
            let next = self.tat.max(now) + n * t;
            // Allowed when the bucket's debt after these n is at most tau.
            if next > now + tau {
                wait_us = wait_us.max(next - tau - now);
            }
        }
        (wait_us > 0).then_some(wait_us)
    }

    fn count(&mut self, rate: &Rate, n: u64, now_ms: u64) {
        let tick = ms(rate.window).div_ceil(TICKS);
        // Rounded up: the send is remembered as a little later than it
        // was, so it leaves the window a little late, never early.
        let t = now_ms.div_ceil(tick) * tick;
        match self.sends.back_mut() {
            Some((last, k)) if *last == t => *k += n,
            _ => self.sends.push_back((t, n)),
        }
        self.total += n;
        self.window = ms(rate.window);
        if let Some(burst) = rate.burst {
            let (interval, _) = gcra(rate, burst);
            self.tat = self.tat.max(now_ms * 1000) + n * interval;
        }
    }

    /// Nothing counted in the window, the bucket full, and no refusal
    /// reported in the window (forgetting it would log again).
    fn idle(&self, now_ms: u64) -> bool {
        let gone = |t: u64| t.saturating_add(self.window) <= now_ms;
        self.sends.back().is_none_or(|&(t, _)| gone(t)) && self.tat <= now_ms * 1000 && self.reported.is_none_or(gone)
    }
}

/// GCRA's emission interval (µs per send: window / N) and its tolerance
/// (µs of debt allowed: `burst` sends' worth, less the one being sent).
fn gcra(rate: &Rate, burst: u64) -> (u64, u64) {
    let interval = (ms(rate.window) * 1000 / rate.count).max(1);
    (interval, interval * burst)
}

#[cfg(test)]
mod tests;
