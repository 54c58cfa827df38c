//! A real DNS server on loopback (hickory-server) serving test zones built
//! in code: MX, A, AAAA and TXT records under one root zone, so any other
//! name is NXDOMAIN and a name without the asked type is NODATA.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, SOA, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};

/// Records to serve. Names are absolute or get a trailing dot added.
#[derive(Default, Clone)]
pub struct Zone {
    records: Vec<(String, RData)>,
    /// Names whose queries go unanswered (see [`Zone::timeout`]).
    timeouts: Vec<String>,
}

/// Per name: the record types still answered although the name times out.
type Timeouts = Arc<RwLock<HashMap<LowerName, HashSet<RecordType>>>>;

fn name(s: &str) -> Name {
    let s = if s.ends_with('.') { s.to_string() } else { format!("{s}.") };
    Name::from_str(&s).expect("valid DNS name")
}

impl Zone {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn mx(mut self, domain: &str, preference: u16, exchange: &str) -> Self {
        self.records.push((domain.into(), RData::MX(MX::new(preference, name(exchange)))));
        self
    }

    /// RFC 7505: `MX 0 .`
    pub fn null_mx(mut self, domain: &str) -> Self {
        self.records.push((domain.into(), RData::MX(MX::new(0, Name::root()))));
        self
    }

    pub fn a(mut self, host: &str, ip: &str) -> Self {
        let ip: Ipv4Addr = ip.parse().expect("IPv4 address");
        self.records.push((host.into(), RData::A(A(ip))));
        self
    }

    pub fn aaaa(mut self, host: &str, ip: &str) -> Self {
        let ip: Ipv6Addr = ip.parse().expect("IPv6 address");
        self.records.push((host.into(), RData::AAAA(AAAA(ip))));
        self
    }

    /// A TXT record; long strings are split into 255-octet pieces.
    pub fn txt(mut self, host: &str, text: &str) -> Self {
        let pieces: Vec<String> = text.as_bytes().chunks(255).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
        self.records.push((host.into(), RData::TXT(TXT::new(pieces))));
        self
    }

    /// One TXT record made of exactly these character-strings (an empty
    /// list gives one empty string).
    pub fn txt_strings(mut self, host: &str, strings: &[&str]) -> Self {
        let mut pieces: Vec<String> = strings.iter().map(|s| s.to_string()).collect();
        if pieces.is_empty() {
            pieces.push(String::new());
        }
        self.records.push((host.into(), RData::TXT(TXT::new(pieces))));
        self
    }

    pub fn ptr(mut self, name_: &str, target: &str) -> Self {
        self.records.push((name_.into(), RData::PTR(PTR(name(target)))));
        self
    }

    pub fn cname(mut self, alias: &str, target: &str) -> Self {
        self.records.push((alias.into(), RData::CNAME(CNAME(name(target)))));
        self
    }

    /// Every query for `host` goes unanswered (the client times out),
    /// except queries for a record type this zone serves at `host`.
    pub fn timeout(mut self, host: &str) -> Self {
        self.timeouts.push(host.into());
        self
    }
}

fn apply_timeouts(zone: &Zone, timeouts: &Timeouts) {
    let mut map = timeouts.write().expect("timeouts lock");
    for host in &zone.timeouts {
        map.entry(LowerName::from(name(host))).or_default();
    }
    for (host, rdata) in &zone.records {
        if let Some(types) = map.get_mut(&LowerName::from(name(host))) {
            types.insert(rdata.record_type());
        }
    }
}

/// The catalog, except that queries for timed-out names are dropped.
struct Handler {
    catalog: Catalog,
    timeouts: Timeouts,
}

impl RequestHandler for Handler {
    fn handle_request<'life0, 'life1, 'async_trait, R, T>(
        &'life0 self,
        request: &'life1 Request,
        response_handle: R,
    ) -> Pin<Box<dyn Future<Output = ResponseInfo> + Send + 'async_trait>>
    where
        R: ResponseHandler + 'async_trait,
        T: Time + 'async_trait,
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            if let Ok(info) = request.request_info() {
                let dropped = {
                    let map = self.timeouts.read().expect("timeouts lock");
                    map.get(info.query.name()).is_some_and(|types| !types.contains(&info.query.query_type()))
                };
                if dropped {
                    drop(response_handle);
                    let metadata = Metadata::new(info.metadata.id, MessageType::Response, info.metadata.op_code);
                    return ResponseInfo::from(Header { metadata, counts: HeaderCounts::default() });
                }
            }
            self.catalog.handle_request::<R, T>(request, response_handle).await
        })
    }
}

/// The running server; stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    updates: tokio::sync::mpsc::UnboundedSender<(Zone, std::sync::mpsc::Sender<()>)>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DnsServer {
    /// Serves `zone` on 127.0.0.1, UDP and TCP on the same free port.
    pub fn start(zone: Zone) -> DnsServer {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (update_tx, mut update_rx) = tokio::sync::mpsc::unbounded_channel::<(Zone, std::sync::mpsc::Sender<()>)>();
        let thread = std::thread::Builder::new()
            .name("test-dns".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                rt.block_on(async move {
                    let (udp, tcp) = bind_pair().await;
                    let _ = addr_tx.send(udp.local_addr().expect("address"));
                    let mut handler: InMemoryZoneHandler = InMemoryZoneHandler::empty(Name::root(), ZoneType::Primary, AxfrPolicy::Deny);
                    let soa = SOA::new(name("ns.test"), name("hostmaster.test"), 1, 3600, 600, 86400, 0);
                    handler.upsert_mut(Record::from_rdata(Name::root(), 60, RData::SOA(soa)), 1);
                    for (host, rdata) in zone.records.iter().cloned() {
                        handler.upsert_mut(Record::from_rdata(name(&host), 60, rdata), 1);
                    }
                    let timeouts: Timeouts = Arc::default();
                    apply_timeouts(&zone, &timeouts);
                    let handler = Arc::new(handler);
                    let mut catalog = Catalog::new();
                    let dyn_handler: Arc<dyn ZoneHandler> = handler.clone();
                    catalog.upsert(LowerName::from(Name::root()), vec![dyn_handler]);
                    let mut server = Server::new(Handler { catalog, timeouts: timeouts.clone() });
                    server.register_socket(udp);
                    server.register_listener(tcp, Duration::from_secs(5), 65535);
                    let mut stop_rx = stop_rx;
                    let mut serial = 2;
                    let run = server.block_until_done();
                    tokio::pin!(run);
                    loop {
                        tokio::select! {
                            _ = &mut run => break,
                            _ = &mut stop_rx => break,
                            Some((zone, done)) = update_rx.recv() => {
                                apply_timeouts(&zone, &timeouts);
                                for (host, rdata) in zone.records {
                                    handler.upsert(Record::from_rdata(name(&host), 60, rdata), serial).await;
                                }
                                serial += 1;
                                let _ = done.send(());
                            }
                        }
                    }
                });
            })
            .expect("spawn DNS thread");
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).expect("DNS server started");
        DnsServer { addr, updates: update_tx, stop: Some(stop_tx), thread: Some(thread) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds records while the server runs (publishing a new DKIM key...).
    pub fn add(&self, zone: Zone) {
        let (done, wait) = std::sync::mpsc::channel();
        self.updates.send((zone, done)).expect("DNS server running");
        wait.recv_timeout(Duration::from_secs(10)).expect("DNS update applied");
    }

    /// The `[dns]` section pointing mailgate at this server.
    pub fn config(&self) -> String {
        format!("[dns]\nnameservers = [\"{}\"]\n", self.addr)
    }
}

async fn bind_pair() -> (tokio::net::UdpSocket, tokio::net::TcpListener) {
    for _ in 0..50 {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
        let port = udp.local_addr().expect("address").port();
        if let Ok(tcp) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            return (udp, tcp);
        }
    }
    panic!("no free port for UDP and TCP together");
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
