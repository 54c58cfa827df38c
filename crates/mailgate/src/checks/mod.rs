//! Checks applied to a session's commands and messages before the spool.
//!
//! May import: `config`, `events`, `mailgate-core`. Never the spool or
//! anything downstream of it.

pub mod auth;
pub mod dkim;
pub mod lookalike;
pub mod relay;
pub mod sender;
pub mod spf;
