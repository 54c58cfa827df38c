//! The DNS resolver every stage shares: `[dns].nameservers`, or the system
//! resolver when that is absent.

use std::net::SocketAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

pub fn resolver(nameservers: Option<&[SocketAddr]>) -> anyhow::Result<TokioResolver> {
    resolver_with(nameservers, Lookup { attempts: 2, timeout: std::time::Duration::from_secs(5), tcp: true })
}

/// How each query is made.
#[derive(Debug, Clone, Copy)]
pub struct Lookup {
    pub attempts: usize,
    pub timeout: std::time::Duration,
    /// Also TCP (for truncated answers), besides UDP.
    pub tcp: bool,
}

/// [`resolver`] with other attempts, timeout or transports (tests use
/// short timeouts against their loopback DNS servers).
pub fn resolver_with(nameservers: Option<&[SocketAddr]>, lookup: Lookup) -> anyhow::Result<TokioResolver> {
    let builder = match nameservers {
        Some(list) => {
            let servers = list
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    let transports = if lookup.tcp { vec![udp, tcp] } else { vec![udp] };
                    NameServerConfig::new(addr.ip(), true, transports)
                })
                .collect();
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), TokioRuntimeProvider::default())
        }
        None => TokioResolver::builder_tokio()?,
    };
    let mut builder = builder;
    let opts: &mut ResolverOpts = builder.options_mut();
    // Mail domains are absolute; never append a search domain.
    opts.ndots = 0;
    opts.attempts = lookup.attempts;
    opts.timeout = lookup.timeout;
    Ok(builder.build()?)
}
