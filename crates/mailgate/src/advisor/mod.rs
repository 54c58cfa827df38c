//! The advisor: tells the domain owner what to publish, from what
//! mailgate has seen. `spf suggest` and `dmarc whatif` read the report
//! store and resolve through `[dns]`.
//!
//! May import: `store`, `checks::spf`, `config`, hickory.

pub mod esp;
pub mod suggest;
pub mod suggest_cli;
mod suggest_dns;
pub mod whatif;
pub mod whatif_cli;
