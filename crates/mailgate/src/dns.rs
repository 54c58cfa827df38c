//! The DNS resolver every stage shares: `[dns].nameservers`, or the system
//! resolver when that is absent.

use std::net::SocketAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

pub fn resolver(nameservers: Option<&[SocketAddr]>) -> anyhow::Result<TokioResolver> {
    let builder = match nameservers {
        Some(list) => {
            let servers = list
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
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
    opts.attempts = 2;
    opts.timeout = std::time::Duration::from_secs(5);
    Ok(builder.build()?)
}
