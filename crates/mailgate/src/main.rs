mod config;
mod spool;
fn main() {}
