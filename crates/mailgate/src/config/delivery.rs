//! `[delivery]`: how queued mail leaves (MX port, concurrency, timeouts,
//! retries, TLS requirements, MTA-STS, VERP), with every default.

use std::path::PathBuf;

use serde::Deserialize;

/// `[delivery]`: how queued mail leaves, with every default.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    /// TCP port used when delivering to MX hosts.
    pub mx_port: u16,
    /// `smtp://[user:pass@]host:port`: send all non-local mail through it.
    pub smarthost: Option<String>,
    /// Simultaneous connections to one destination.
    pub concurrency_per_destination: usize,
    /// Simultaneous outbound connections in all.
    pub max_concurrency: usize,
    /// Messages sent over one connection before it is closed.
    pub max_messages_per_connection: usize,
    /// Seconds an idle connection is kept for reuse.
    pub idle_timeout: u64,
    /// Seconds to wait for a TCP connection.
    pub connect_timeout: u64,
    /// Seconds to wait for a reply (RFC 5321 §4.5.3.2 asks for minutes).
    pub command_timeout: u64,
    /// Seconds before the first retry; later retries back off exponentially.
    pub retry_initial: u64,
    /// Longest delay between retries, in seconds.
    pub retry_max: u64,
    /// Seconds after which undelivered mail is bounced.
    pub max_age: u64,
    /// Seconds after which the sender gets a delay warning; 0 turns them off.
    pub delay_warning: u64,
    /// Messages the scheduler keeps in flight at once (its memory window).
    pub window: usize,
    /// Send smart host credentials even when STARTTLS is not available.
    pub danger_smarthost_auth_without_tls: bool,
    /// Recipient domains whose mail must travel over TLS (STARTTLS
    /// required; the certificate is not checked unless MTA-STS says so).
    pub require_tls: Vec<String>,
    /// Honour MTA-STS policies (RFC 8461) of recipient domains.
    pub mta_sts: bool,
    /// HTTPS port for fetching MTA-STS policies (tests use another).
    pub mta_sts_port: u16,
    /// Extra CA certificates (PEM) trusted for MTA-STS, besides the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// Rewrite the envelope sender of submitted mail to a per-recipient
    /// VERP address, so asynchronous bounces find their message.
    pub verp: bool,
    /// The domain of VERP addresses; the sender's domain when unset.
    pub return_path_domain: Option<String>,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            mx_port: 25,
            smarthost: None,
            concurrency_per_destination: 20,
            max_concurrency: 200,
            max_messages_per_connection: 100,
            idle_timeout: 5,
            connect_timeout: 30,
            command_timeout: 300,
            retry_initial: 300,
            retry_max: 4 * 3600,
            max_age: 5 * 24 * 3600,
            delay_warning: 0,
            window: 10_000,
            danger_smarthost_auth_without_tls: false,
            require_tls: Vec::new(),
            mta_sts: true,
            mta_sts_port: 443,
            ca_file: None,
            verp: false,
            return_path_domain: None,
        }
    }
}
