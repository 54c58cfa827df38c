//! Reports: DMARC aggregate and TLS-RPT reports, read from other receivers.

pub mod ingest;
