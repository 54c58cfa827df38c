//! Checks applied to a session's commands and messages before the spool.
//!
//! May import: `config`, `events`, `dns`, `metrics`, `ratelimit`, `srs`, `sign::key` (to load ARC sealing
//! keys), `mailgate-core`. Never the spool or anything downstream of it.

pub mod arc;
pub mod auth;
pub mod auth_results;
pub mod author;
pub mod body;
pub mod cache;
pub mod dkim;
pub mod dmarc;
pub mod lookalike;
pub mod rate;
pub mod relay;
pub mod sender;
pub mod spf;
pub mod verdict;
