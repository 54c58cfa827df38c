//! Real parts for mailgate's tests: the real binary on free loopback ports,
//! a loopback DNS server, a raw SMTP client, an SMTP sink that records what it receives, and a
//! blackhole listener. Synchronous and thread-based, so tests need no runtime.
//!
//! Nothing here talks to anything but 127.0.0.1.

pub mod dns;
pub mod https;
pub mod net;
pub mod process;
pub mod sink;
pub mod smtp;
pub mod tls;

pub use dns::{DnsServer, Zone};
pub use net::free_port;
pub use process::{MailgateProcess, Server, ServerBuilder};
pub use sink::{Blackhole, ReceivedMessage, SmtpSink};
pub use smtp::{Reply, SmtpClient};
