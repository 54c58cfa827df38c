//! mailgate as a library: the stages the binary wires together, public so
//! that benchmarks (`bench/`) and tests can drive the very code the server
//! runs. The data flow is one way:
//! listener → inbound session → checks → spool → scheduler → delivery.

pub mod advisor;
pub mod checks;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dns;
pub mod dnssec;
pub mod events;
pub mod http;
pub mod inbound;
pub mod listener;
pub mod metrics;
pub mod outbound;
pub mod privileges;
pub mod ratelimit;
pub mod report;
pub mod scheduler;
pub mod server;
pub mod sign;
pub mod spool;
pub mod srs;
pub mod store;
pub mod suppression;
pub mod tls;
pub mod webhook;
