//! `[cluster]`: several mailgate nodes sharing their state (the report
//! store, DKIM keys and counters) in one PostgreSQL database. Without a
//! `store`, every node keeps its state to itself (embedded SQLite).

use serde::Deserialize;

/// `[cluster]` as written in the file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCluster {
    pub store: Option<String>,
    pub node_id: Option<String>,
    pub poll_interval: Option<u64>,
}

/// `[cluster]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// `postgres://user:password@host:port/db` (libpq URL or key=value
    /// form); `None`: single node, state in `data_dir`.
    pub store: Option<String>,
    /// This node's name in shared records; the hostname by default.
    pub node_id: String,
    /// Seconds between a node's checks for DKIM key changes made on other
    /// nodes (1 to 60; 60 by default).
    pub poll_interval: u64,
}

impl RawCluster {
    /// Checks the section; `hostname` is the default node id. Problems are
    /// `(key, message)`.
    pub(super) fn validate(self, hostname: &str) -> Result<Cluster, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let node_id = self.node_id.unwrap_or_else(|| hostname.to_string());
        if node_id.is_empty() || node_id.len() > 64 || !node_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            problems.push(("cluster.node_id".into(), format!("{node_id:?} must be 1 to 64 letters, digits, '-', '_' or '.'")));
        }
        if let Some(url) = &self.store {
            let known = ["postgres://", "postgresql://"].iter().any(|p| url.starts_with(p)) || url.contains("host=");
            if !known {
                problems.push((
                    "cluster.store".into(),
                    "must be a PostgreSQL URL (postgres://user@host:port/db) or key=value connection string".into(),
                ));
            }
        }
        let poll_interval = self.poll_interval.unwrap_or(60);
        if !(1..=60).contains(&poll_interval) {
            problems.push(("cluster.poll_interval".into(), format!("{poll_interval} must be 1 to 60 seconds")));
        }
        if problems.is_empty() { Ok(Cluster { store: self.store, node_id, poll_interval }) } else { Err(problems) }
    }
}
