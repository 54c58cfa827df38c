//! `[limits]`: the SMTP listeners' limits and timeouts, with their
//! defaults and checks. Imports only serde.

use serde::Deserialize;

use super::Problems;

/// `[limits]`: every limit with its default.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message accepted, in octets (SIZE is advertised with it).
    pub max_message_size: u64,
    /// Recipients per message; RFC 5321 requires at least 100.
    pub max_recipients: usize,
    /// Errors per session before 421 and close.
    pub max_errors: u32,
    /// Simultaneous SMTP connections, all listeners together.
    pub max_connections: usize,
    /// Simultaneous SMTP connections from one client IP address.
    pub max_connections_per_ip: usize,
    /// New connections per minute from one client address (an IPv6
    /// client by its /64); over it, `421 4.7.0`. 0 = no limit.
    pub connections_per_ip_per_minute: u32,
    /// Seconds for a whole command line to arrive, counted from its first
    /// byte (or, with nothing sent, from the previous reply): a deadline,
    /// not an idle timer (RFC 5321 §4.5.3.2.7: at least 300).
    pub command_timeout: u64,
    /// Seconds to wait for the next block of message content.
    pub data_timeout: u64,
    /// Octets per second message content must average over each 30 s
    /// window of DATA or a BDAT chunk. 0 = no minimum.
    pub min_data_rate: u64,
    /// Seconds a whole session may last; a message being received at the
    /// minimum rate may finish first.
    pub session_timeout: u64,
    /// Seconds in-flight sessions get to finish on shutdown.
    pub shutdown_grace: u64,
    /// Octets of message content held in memory across all sessions;
    /// content past a small per-message threshold goes to disk and does
    /// not count. Reaching it answers 451 4.3.2.
    pub max_inflight_memory: u64,
    /// Longest line (octets, with CRLF) accepted on submission listeners
    /// and from trusted networks; longer than 998 octets is re-encoded
    /// before signing. `mx` stays at RFC 5321's 1000.
    pub max_submission_line: usize,
    /// Recipients submitted from one client network (see the two prefix
    /// lengths), e.g. `"5000/hour"`; empty = no limit. Submission
    /// listeners only.
    pub submission_rate_per_network: String,
    /// Recipients a client network may submit at once (a bucket refilled
    /// at the rate); 0 = only the window counts.
    pub submission_burst_per_network: u64,
    /// The IPv4 prefix length that makes one client network.
    pub submission_network_prefix_v4: u8,
    /// The IPv6 prefix length that makes one client network.
    pub submission_network_prefix_v6: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 1000,
            max_errors: 10,
            max_connections: 500,
            max_connections_per_ip: 50,
            connections_per_ip_per_minute: 600,
            command_timeout: 300,
            data_timeout: 300,
            min_data_rate: 1024,
            session_timeout: 1800,
            shutdown_grace: 60,
            max_inflight_memory: 256 * 1024 * 1024,
            max_submission_line: 64 * 1024,
            submission_rate_per_network: String::new(),
            submission_burst_per_network: 0,
            submission_network_prefix_v4: 24,
            submission_network_prefix_v6: 56,
        }
    }
}

impl Limits {
    /// The per-network submission limit, if one is set.
    pub(super) fn network_rate(&self, problems: &mut Problems) -> Option<super::NetworkRate> {
        if self.submission_network_prefix_v4 > 32 {
            problems.add("limits.submission_network_prefix_v4", "must be between 0 and 32".into());
        }
        if self.submission_network_prefix_v6 > 128 {
            problems.add("limits.submission_network_prefix_v6", "must be between 0 and 128".into());
        }
        if self.submission_rate_per_network.is_empty() {
            if self.submission_burst_per_network > 0 {
                problems.add("limits.submission_burst_per_network", "needs limits.submission_rate_per_network".into());
            }
            return None;
        }
        let burst = Some(self.submission_burst_per_network).filter(|&b| b > 0);
        match super::Rate::parse(&self.submission_rate_per_network, burst) {
            Ok(rate) => Some(super::NetworkRate {
                rate,
                v4: self.submission_network_prefix_v4.min(32),
                v6: self.submission_network_prefix_v6.min(128),
            }),
            Err(m) => {
                problems.add("limits.submission_rate_per_network", m);
                None
            }
        }
    }

    pub(super) fn validate(&self, problems: &mut Problems) {
        if self.max_recipients < 100 {
            problems.add("limits.max_recipients", "must be at least 100 (RFC 5321 4.5.3.1.8)".into());
        }
        if self.max_message_size < 1024 {
            problems.add("limits.max_message_size", "must be at least 1024".into());
        }
        if self.max_inflight_memory < 1024 * 1024 {
            problems.add("limits.max_inflight_memory", "must be at least 1048576 (1 MiB)".into());
        }
        if !(1000..=16 * 1024 * 1024).contains(&self.max_submission_line) {
            problems.add("limits.max_submission_line", "must be between 1000 and 16777216".into());
        }
        for (key, value) in [
            ("max_connections", self.max_connections as u64),
            ("max_connections_per_ip", self.max_connections_per_ip as u64),
            ("command_timeout", self.command_timeout),
            ("data_timeout", self.data_timeout),
            ("session_timeout", self.session_timeout),
            ("shutdown_grace", self.shutdown_grace.max(1)),
        ] {
            if value == 0 {
                problems.add(format!("limits.{key}"), "must be positive".into());
            }
        }
    }
}
