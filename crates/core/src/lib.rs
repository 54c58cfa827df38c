//! Sans-I/O SMTP logic and the data model of mailgate.
//!
//! A key design decision made in this crate is that it does no I/O at all: no
//! sockets, no files, no clock reads and no randomness. The inbound session is a
//! state machine that takes bytes in and hands back [`session::Action`]s (send
//! this reply, store this message, close). Time and identifiers are passed in by
//! the caller. This keeps every protocol decision testable without a network and
//! lets fuzz targets drive the real code with junk.
//!
//! Layout:
//! - [`address`]: mailboxes, domains and SMTP paths, parsed once at the edge;
//! - [`command`]: the SMTP command line parser and ESMTP parameters;
//! - [`reply`]: replies with RFC 3463 enhanced status codes;
//! - [`bounce`]: failure replies and DSNs classified hard/soft and by category;
//! - [`envelope`]: the envelope, recipients and DSN parameters stored in the spool;
//! - [`session`]: the inbound SMTP session state machine;
//! - [`received`]: the `Received:` trace header.

pub mod address;
pub mod bounce;
pub mod client;
pub mod command;
pub mod dkim;
pub mod envelope;
pub mod received;
pub mod reply;
pub mod retry;
pub mod session;
pub mod xtext;

pub use address::{Domain, Mailbox, ReversePath};
pub use envelope::{Envelope, QueueId, Recipient, RecipientStatus};
pub use reply::Reply;
