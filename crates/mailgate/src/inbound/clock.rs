//! The deadlines of one session against slow clients (slowloris).
//!
//! An idle timer that every byte restarts lets a client hold a connection
//! forever by sending one byte every few seconds. So:
//! - a command line must arrive whole within `command_timeout` of its first
//!   byte (or of our previous reply, while nothing has arrived);
//! - message content (DATA, or a BDAT chunk) must average at least
//!   `min_data_rate` octets/s over each [`RATE_WINDOW`], besides arriving at
//!   all within `data_timeout`;
//! - the whole session ends after `session_timeout`. A message still being
//!   received at the minimum rate may finish first (its size is bounded by
//!   `max_message_size`), so a big message on a slow link is not cut off;
//!   the session closes at the next command.
//!
//! Pure bookkeeping over [`Instant`]s: the driver asks when to wake up and
//! reports what it read. May import: `mailgate-core`.

use std::time::{Duration, Instant};

use mailgate_core::session::Waiting;

/// The window the content rate is averaged over.
pub const RATE_WINDOW: Duration = Duration::from_secs(30);

/// The `[limits]` a session's deadlines come from.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    /// Octets per second; 0 = no minimum.
    pub min_data_rate: u64,
    pub session_timeout: Duration,
}

/// Which deadline passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// No complete command line in time.
    Command,
    /// No content at all for `data_timeout`.
    DataIdle,
    /// Content below `min_data_rate` over a window.
    SlowData,
    /// `session_timeout`.
    Session,
}

impl Expired {
    /// The text of the `421 4.4.2` (after the host name).
    pub fn why(self, d: &Deadlines) -> String {
        match self {
            Expired::Command => format!("Timeout exceeded: no complete command within {} s", d.command_timeout.as_secs()),
            Expired::DataIdle => format!("Timeout exceeded: no message content for {} s", d.data_timeout.as_secs()),
            Expired::SlowData => format!("Message content too slow: under {} octets/s over {} s", d.min_data_rate, RATE_WINDOW.as_secs()),
            Expired::Session => format!("Session time limit of {} s exceeded", d.session_timeout.as_secs()),
        }
    }

    /// For the log and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Expired::Command => "command",
            Expired::DataIdle => "data",
            Expired::SlowData => "data-rate",
            Expired::Session => "session",
        }
    }
}

/// Content received in the current rate window.
struct Window {
    start: Instant,
    octets: u64,
}

/// One session's clock.
pub struct Clock {
    limits: Deadlines,
    session_end: Instant,
    /// When the command line being waited for started: its first byte, or
    /// our last reply while nothing of it has arrived.
    command_from: Instant,
    /// A partial line was pending at the previous wait.
    line_was_pending: bool,
    /// Last content octets, for `data_timeout`.
    last_data: Instant,
    /// Set while waiting for content.
    window: Option<Window>,
}

impl Clock {
    pub fn new(limits: Deadlines, now: Instant) -> Self {
        Clock {
            limits,
            session_end: now + limits.session_timeout,
            command_from: now,
            line_was_pending: false,
            last_data: now,
            window: None,
        }
    }

    /// Before each read: when to give up waiting, and why. `line_pending`
    /// is [`mailgate_core::session::Session::line_pending`].
    pub fn wait(&mut self, waiting: Waiting, line_pending: bool, now: Instant) -> (Instant, Expired) {
        if waiting == Waiting::Data {
            self.line_was_pending = false;
            if self.window.is_none() {
                // Content starts now; so does its idle timer.
                self.last_data = now;
                self.window = Some(Window { start: now, octets: 0 });
            }
            if self.judge(now).is_err() {
                return (now, Expired::SlowData);
            }
            return self.data_due();
        }
        self.window = None;
        // A line still arriving keeps the deadline of its first byte; an
        // empty buffer starts the wait for the next one now.
        if !(line_pending && self.line_was_pending) {
            self.command_from = now;
        }
        self.line_was_pending = line_pending;
        earliest((self.command_from + self.limits.command_timeout, Expired::Command), (self.session_end, Expired::Session))
    }

    /// The timer for `expired` went off. `None`: it has expired. Some: a
    /// rate window ended well, and this is the next thing to wait for.
    pub fn fired(&mut self, expired: Expired, now: Instant) -> Option<(Instant, Expired)> {
        if expired != Expired::SlowData || self.window.is_none() || self.judge(now).is_err() {
            return None;
        }
        Some(self.data_due())
    }

    /// A rate window that is over is judged, and the next one starts.
    fn judge(&mut self, now: Instant) -> Result<(), Expired> {
        let min = self.limits.min_data_rate;
        match self.window.as_mut() {
            Some(w) if min > 0 && now >= w.start + RATE_WINDOW => {
                if w.octets < min * RATE_WINDOW.as_secs() {
                    return Err(Expired::SlowData);
                }
                *w = Window { start: now, octets: 0 };
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The next deadline while waiting for content.
    fn data_due(&self) -> (Instant, Expired) {
        let due = (self.last_data + self.limits.data_timeout, Expired::DataIdle);
        match &self.window {
            Some(w) if self.limits.min_data_rate > 0 => earliest(due, (w.start + RATE_WINDOW, Expired::SlowData)),
            // Without a minimum rate nothing else bounds a transfer.
            _ => earliest(due, (self.session_end, Expired::Session)),
        }
    }

    /// `n` octets were read while the session was `waiting`.
    pub fn received(&mut self, waiting: Waiting, n: usize, now: Instant) {
        if waiting == Waiting::Data
            && let Some(w) = self.window.as_mut()
        {
            w.octets += n as u64;
            self.last_data = now;
        }
    }
}

fn earliest(a: (Instant, Expired), b: (Instant, Expired)) -> (Instant, Expired) {
    if b.0 < a.0 { b } else { a }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Deadlines {
        Deadlines {
            command_timeout: Duration::from_secs(10),
            data_timeout: Duration::from_secs(60),
            min_data_rate: 100,
            session_timeout: Duration::from_secs(600),
        }
    }

    #[test]
    fn a_trickled_command_line_keeps_the_deadline_of_its_first_byte() {
        let t0 = Instant::now();
        let mut c = Clock::new(limits(), t0);
        assert_eq!(c.wait(Waiting::Command, false, t0), (t0 + Duration::from_secs(10), Expired::Command));
        // First byte at 3 s, then one byte a second: the deadline stays.
        let first = t0 + Duration::from_secs(3);
        for s in 3..12 {
            let now = t0 + Duration::from_secs(s);
            assert_eq!(c.wait(Waiting::Command, true, now).0, first + Duration::from_secs(10), "at {s} s");
        }
        // The line completes: the next one gets a fresh deadline.
        let now = t0 + Duration::from_secs(12);
        assert_eq!(c.wait(Waiting::Command, false, now).0, now + Duration::from_secs(10));
    }

    #[test]
    fn slow_content_fails_its_window_and_fast_content_passes() {
        let t0 = Instant::now();
        let mut c = Clock::new(limits(), t0);
        assert_eq!(c.wait(Waiting::Data, false, t0), (t0 + RATE_WINDOW, Expired::SlowData));
        // One byte every 2 s keeps the idle timer happy...
        for s in (2..30).step_by(2) {
            let now = t0 + Duration::from_secs(s);
            c.received(Waiting::Data, 1, now);
            assert!(c.wait(Waiting::Data, false, now).0 > now, "at {s} s");
        }
        // ...but not the rate.
        let end = t0 + RATE_WINDOW;
        assert_eq!(c.wait(Waiting::Data, false, end), (end, Expired::SlowData));

        assert_eq!(c.fired(Expired::SlowData, end), None);

        let mut c = Clock::new(limits(), t0);
        c.wait(Waiting::Data, false, t0);
        c.received(Waiting::Data, 3000, t0 + Duration::from_secs(1));
        // The window's timer goes off, it passed: the next one starts.
        assert_eq!(c.fired(Expired::SlowData, end), Some((end + RATE_WINDOW, Expired::SlowData)));
        assert_eq!(c.fired(Expired::DataIdle, end), None, "other deadlines are final");
        c.received(Waiting::Data, 10, end + Duration::from_secs(1));
        let later = end + RATE_WINDOW + Duration::from_secs(1);
        assert_eq!(c.wait(Waiting::Data, false, later), (later, Expired::SlowData), "10 octets in the second window");
    }

    #[test]
    fn content_idle_for_data_timeout_expires_before_the_window() {
        let t0 = Instant::now();
        let l = Deadlines { data_timeout: Duration::from_secs(5), ..limits() };
        let mut c = Clock::new(l, t0);
        assert_eq!(c.wait(Waiting::Data, false, t0), (t0 + Duration::from_secs(5), Expired::DataIdle));
    }

    #[test]
    fn the_session_limit_waits_for_content_at_the_minimum_rate() {
        let t0 = Instant::now();
        let l = Deadlines { session_timeout: Duration::from_secs(15), ..limits() };
        let mut c = Clock::new(l, t0);
        assert_eq!(c.wait(Waiting::Command, false, t0 + Duration::from_secs(6)).1, Expired::Session);
        // In content, the rate window is the bound, not the session.
        assert_eq!(c.wait(Waiting::Data, false, t0 + Duration::from_secs(7)).1, Expired::SlowData);
        // Back to commands: the session limit has passed.
        let now = t0 + Duration::from_secs(16);
        assert_eq!(c.wait(Waiting::Command, false, now), (t0 + Duration::from_secs(15), Expired::Session));
        // Without a minimum rate the session limit bounds content too.
        let mut c = Clock::new(Deadlines { min_data_rate: 0, ..l }, t0);
        assert_eq!(c.wait(Waiting::Data, false, t0 + Duration::from_secs(1)), (t0 + Duration::from_secs(15), Expired::Session));
    }
}
