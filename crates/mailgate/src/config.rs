//! Configuration: the TOML file read into a raw form, then validated into
//! [`Config`]. Every error names the file and the key.
//!
//! Relative paths are resolved against the directory of the config file, or
//! the working directory when no file is given.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use mailgate_core::Domain;
use mailgate_core::session::Role;
use serde::Deserialize;
use thiserror::Error;

pub use delivery::{Delivery, dane_required_matches};
pub use dns::{DnsSettings, DnssecMode, DnssecSettings};
use dns::{RawDns, dns_settings, dnssec_settings};
pub use limits::Limits;

mod cluster;
mod delivery;
mod dns;
mod limits;
mod policy;
mod rate;
mod reports;
mod risks;
mod sections;
mod srs;
mod suppression;
mod webhook;
pub use cluster::Cluster;
pub use policy::{Action, PolicyConfig, TempErrorAction};
pub use rate::{NetworkRate, Rate, RateLimits};
pub use reports::Reports;
pub use risks::{Warning, warnings};
pub use srs::{Forward, SrsConfig, same_address};
pub use suppression::{SuppressAction, Suppression};
pub use webhook::{EVENTS as WEBHOOK_EVENTS, Webhook};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: {key}: {message}")]
    Invalid { file: String, key: String, message: String },
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    listener: Option<Vec<RawListener>>,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    relay: RawRelay,
    #[serde(default)]
    delivery: Delivery,
    #[serde(default)]
    domain: Vec<RawDomain>,
    #[serde(default)]
    user: Vec<RawUser>,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    spool: RawSpool,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    dkim: DkimGlobal,
    #[serde(default)]
    lookalike: RawLookalike,
    #[serde(default)]
    policy: policy::RawPolicy,
    #[serde(default)]
    arc: RawArc,
    #[serde(default)]
    reports: reports::RawReports,
    #[serde(default)]
    cluster: cluster::RawCluster,
    #[serde(default)]
    webhook: Vec<webhook::RawWebhook>,
    #[serde(default)]
    srs: srs::RawSrs,
    #[serde(default)]
    forward: Vec<srs::RawForward>,
    #[serde(default)]
    suppression: suppression::RawSuppression,
}

/// `[arc]`: sealing what mailgate forwards.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawArc {
    seal: Option<String>,
}

/// `[lookalike]`: partner and brand domains protected besides our own.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLookalike {
    #[serde(default)]
    protect: Vec<String>,
}

/// `[dkim]`: key rotation.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct DkimGlobal {
    /// Seconds a replaced key stays published ("retiring") after the new
    /// one takes over.
    pub rotation_overlap: u64,
    /// Seconds between DNS checks of pending keys.
    pub dns_check_interval: u64,
}

impl Default for DkimGlobal {
    fn default() -> Self {
        DkimGlobal { rotation_overlap: 7 * 86400, dns_check_interval: 300 }
    }
}

/// `[server] smtp_threads` at most: each is a thread and a runtime.
const MAX_SMTP_THREADS: usize = 256;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    hostname: Option<String>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    public_addresses: Vec<std::net::IpAddr>,
    /// The user `serve` runs as once its listeners are bound, when started
    /// as root.
    user: Option<String>,
    /// Threads that run SMTP sessions; 0 = half the cores, at least one.
    #[serde(default)]
    smtp_threads: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    role: Role,
    bind: SocketAddr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    #[serde(default)]
    trusted_networks: Vec<IpNet>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    name: String,
    deliver: Option<String>,
    /// Sign outbound mail from this domain (default true).
    dkim: Option<bool>,
    /// `ed25519`, `rsa2048`; default both.
    dkim_algorithms: Option<Vec<String>>,
    /// `relaxed/relaxed` (default), `simple/simple`...
    dkim_canonicalization: Option<String>,
    /// Header names to sign instead of the default list.
    dkim_headers: Option<Vec<String>>,
    /// Signatures expire this many seconds after signing (`x=`); 0: never.
    dkim_expire: Option<u64>,
    /// Submission rate limit for mail with this domain as sender.
    rate: Option<String>,
    burst: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password: String,
    #[serde(default)]
    send_as: Vec<String>,
    /// Submission rate limit of this user: `"1000/hour"`.
    rate: Option<String>,
    burst: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    bind: Option<SocketAddr>,
    /// Serve the admin API and dashboard over TLS with the listener
    /// certificate.
    #[serde(default)]
    tls: bool,
    /// The dashboard's login password as an argon2 hash (`mailgate user
    /// hash`); without it only the bearer token opens the pages.
    #[serde(default)]
    admin_password: Option<String>,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp { bind: Some(default_http()), tls: false, admin_password: None }
    }
}

fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8025))
}

/// `[spool]`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
struct RawSpool {
    min_free_space: u64,
    segment_size: u64,
}

impl Default for RawSpool {
    fn default() -> Self {
        RawSpool { min_free_space: 100 * 1024 * 1024, segment_size: 64 * 1024 * 1024 }
    }
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default)]
    format: LogFormat,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub role: Role,
    pub bind: SocketAddr,
}

/// Where mail for a local domain goes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextHop {
    Smtp(String),
    Lmtp(String),
    Maildir(PathBuf),
}

#[derive(Debug, Clone)]
pub struct DomainConfig {
    pub name: Domain,
    pub deliver: Option<NextHop>,
    pub dkim: DkimSettings,
}

/// Per-domain DKIM signing settings.
#[derive(Debug, Clone)]
pub struct DkimSettings {
    pub sign: bool,
    pub algorithms: Vec<mailgate_core::dkim::Algorithm>,
    pub canonicalization: (mailgate_core::dkim::Canon, mailgate_core::dkim::Canon),
    pub headers: Option<Vec<String>>,
    pub expire: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub password_hash: String,
    pub send_as: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Refuse new mail with 452 4.3.1 below this many free bytes.
    pub min_free_space: u64,
    /// Size at which the spool starts a new segment file.
    pub segment_size: u64,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub hostname: String,
    pub data_dir: PathBuf,
    pub public_addresses: Vec<std::net::IpAddr>,
    pub listeners: Vec<Listener>,
    pub tls: Option<TlsFiles>,
    pub nameservers: Option<Vec<SocketAddr>>,
    /// `[dns]` timeouts and cache size.
    pub dns: DnsSettings,
    /// `[dns] dnssec` and `trust_anchor`: DANE for outbound TLS.
    pub dnssec: DnssecSettings,
    pub trusted_networks: Vec<IpNet>,
    pub delivery: Delivery,
    pub smarthost: Option<Smarthost>,
    pub domains: Vec<DomainConfig>,
    pub users: Vec<User>,
    pub http_bind: Option<SocketAddr>,
    /// `[http] tls`: the admin API speaks HTTPS with the listener certificate.
    pub http_tls: bool,
    /// `[http] admin_password`: the argon2 hash the dashboard login checks.
    pub http_admin_password: Option<String>,
    /// `[server] user`: None means "mailgate" if that user exists.
    pub user: Option<String>,
    /// `[server] smtp_threads`: the threads that accept and run SMTP
    /// sessions (resolved: never 0).
    pub smtp_threads: usize,
    pub limits: Limits,
    pub spool: SpoolConfig,
    pub log_format: LogFormat,
    pub dkim: DkimGlobal,
    /// Partner and brand domains that look-alike detection protects too.
    pub protect: Vec<String>,
    /// What the inbound checks' outcomes lead to.
    pub policy: PolicyConfig,
    /// `[arc] seal`: the `[[domain]]` whose active RSA DKIM key ARC-seals
    /// inbound mail on its way to the next hop.
    pub arc_seal: Option<Domain>,
    /// `[reports]`: the report store and the reports mailgate sends and reads.
    pub reports: Reports,
    /// `[cluster]`: shared state in PostgreSQL for several nodes.
    pub cluster: Cluster,
    /// `[[webhook]]`: where delivery events are POSTed.
    pub webhooks: Vec<Webhook>,
    /// Submission rate limits of users, domains and client networks.
    pub rates: RateLimits,
    /// `[srs]`: set when mail is forwarded.
    pub srs: Option<SrsConfig>,
    /// `[[forward]]`: addresses whose mail is relayed on with SRS.
    pub forwards: Vec<Forward>,
    /// `[suppression]`: recipients not to mail again, per sending domain.
    pub suppression: Suppression,
}

impl Config {
    /// Loads `path`, or the built-in defaults when `None`; the first
    /// problem is the error.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_all(path).map_err(first)
    }

    /// Parses config text as if read from `path`; the first problem is the
    /// error.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_all(text, path).map_err(first)
    }

    /// As [`Config::load`], with every problem found (`mailgate config
    /// check`).
    pub fn load_all(path: Option<&Path>) -> Result<Config, Vec<ConfigError>> {
        let Some(path) = path else {
            return Config::from_raw(RawConfig::default(), None, Path::new("."), Vec::new());
        };
        let file = path.display().to_string();
        let text = fs::read_to_string(path).map_err(|source| vec![ConfigError::Read { file: file.clone(), source }])?;
        Config::parse_all(&text, path)
    }

    /// As [`Config::parse`], with every problem found: the TOML errors of
    /// each section (a section with an error counts as absent for the
    /// checks after), then every value check.
    pub fn parse_all(text: &str, path: &Path) -> Result<Config, Vec<ConfigError>> {
        let file = path.display().to_string();
        let (raw, errors) = sections::read(text, &file);
        let raw = raw.map_err(|e| vec![e])?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Config::from_raw(raw, Some(path), base, errors)
    }

    /// Validates `raw`, adding every problem to `errors` (problems found
    /// while reading it); only an empty list gives a [`Config`].
    fn from_raw(raw: RawConfig, source: Option<&Path>, base: &Path, errors: Vec<ConfigError>) -> Result<Config, Vec<ConfigError>> {
        let file = source.map(|p| p.display().to_string()).unwrap_or_else(|| "<defaults>".into());
        let mut problems = Problems { file: file.clone(), list: errors };
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

        let hostname = match raw.server.hostname {
            Some(h) => match Domain::parse(&h, false) {
                Ok(d) => d.to_string(),
                Err(e) => {
                    problems.add("server.hostname", format!("{h:?} is not a hostname: {e}"));
                    h
                }
            },
            None => system_hostname(),
        };
        let data_dir = resolve(raw.server.data_dir.unwrap_or_else(|| PathBuf::from("mailgate-data")));
        let smtp_threads = match raw.server.smtp_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get() / 2).max(1),
            n if n > MAX_SMTP_THREADS => {
                problems.add("server.smtp_threads", format!("{n}: at most {MAX_SMTP_THREADS}"));
                1
            }
            n => n,
        };

        let listeners = match raw.listener {
            Some(list) => list.into_iter().map(|l| Listener { role: l.role, bind: l.bind }).collect(),
            None => vec![
                Listener { role: Role::Mx, bind: SocketAddr::from(([127, 0, 0, 1], 2525)) },
                Listener { role: Role::Submission, bind: SocketAddr::from(([127, 0, 0, 1], 5870)) },
            ],
        };
        for (i, l) in listeners.iter().enumerate() {
            if listeners[..i].iter().any(|o| o.bind == l.bind) {
                problems.add(format!("listener[{i}].bind"), format!("{} is used by another listener", l.bind));
            }
        }

        let mut domains: Vec<DomainConfig> = Vec::new();
        let mut rates = RateLimits::default();
        for (i, d) in raw.domain.into_iter().enumerate() {
            let name = match Domain::parse(&d.name, true) {
                Ok(name) => name,
                Err(e) => {
                    problems.add(format!("domain[{i}].name"), format!("{:?} is not a domain: {e}", d.name));
                    continue;
                }
            };
            if domains.iter().any(|o| o.name == name) {
                problems.add(format!("domain[{i}].name"), format!("{name} is listed twice"));
            }
            let deliver = match d.deliver.map(|s| parse_next_hop(&s, base)).transpose() {
                Ok(hop) => hop,
                Err(m) => {
                    problems.add(format!("domain[{i}].deliver"), m);
                    None
                }
            };
            let mut algorithms = Vec::new();
            for a in d.dkim_algorithms.unwrap_or_else(|| vec!["ed25519".into(), "rsa2048".into()]) {
                match crate::sign::parse_algorithm(&a) {
                    Some(alg) => algorithms.push(alg),
                    None => problems.add(format!("domain[{i}].dkim_algorithms"), format!("{a:?}: use \"ed25519\" or \"rsa2048\"")),
                }
            }
            let canon = d.dkim_canonicalization.as_deref().unwrap_or("relaxed/relaxed");
            let canonicalization = crate::sign::parse_canon(canon).unwrap_or_else(|| {
                problems.add(format!("domain[{i}].dkim_canonicalization"), format!("{canon:?}: use e.g. \"relaxed/relaxed\""));
                (mailgate_core::dkim::Canon::Relaxed, mailgate_core::dkim::Canon::Relaxed)
            });
            match rate::optional(d.rate.as_deref(), d.burst) {
                Ok(Some(r)) => rates.domains.push((name.clone(), r)),
                Ok(None) => {}
                Err(m) => problems.add(format!("domain[{i}].rate"), m),
            }
            let dkim = DkimSettings {
                sign: d.dkim.unwrap_or(true),
                algorithms,
                canonicalization,
                headers: d.dkim_headers.map(|h| h.into_iter().map(|n| n.to_ascii_lowercase()).collect()),
                expire: d.dkim_expire.filter(|&x| x > 0),
            };
            domains.push(DomainConfig { name, deliver, dkim });
        }

        let mut users: Vec<User> = Vec::new();
        for (i, u) in raw.user.into_iter().enumerate() {
            if u.name.is_empty() || users.iter().any(|o| o.name == u.name) {
                problems.add(format!("user[{i}].name"), "must be non-empty and unique".into());
            }
            if !u.password.starts_with("$argon2id$") {
                problems.add(format!("user[{i}].password"), "must be an argon2id hash ($argon2id$...)".into());
            }
            match rate::optional(u.rate.as_deref(), u.burst) {
                Ok(Some(r)) => {
                    rates.users.insert(u.name.clone(), r);
                }
                Ok(None) => {}
                Err(m) => problems.add(format!("user[{i}].rate"), m),
            }
            users.push(User { name: u.name, password_hash: u.password, send_as: u.send_as });
        }
        if let Some(h) = &raw.http.admin_password
            && !h.starts_with("$argon2id$")
        {
            problems.add("http.admin_password", "must be an argon2id hash ($argon2id$...; `mailgate user hash` prints one)".into());
        }

        let smarthost = match raw.delivery.smarthost.as_deref() {
            Some(s) => Smarthost::parse(s).or_else(|| {
                problems.add("delivery.smarthost", format!("{s:?} must look like smtp://[user:pass@]host:port"));
                None
            }),
            None => None,
        };
        let d = &raw.delivery;
        if d.concurrency_per_destination == 0 || d.max_concurrency == 0 || d.max_messages_per_connection == 0 || d.window == 0 {
            problems.add("delivery", "concurrency, messages per connection and window must be positive".into());
        }
        if d.retry_initial == 0 || d.retry_max < d.retry_initial || d.connect_timeout == 0 || d.command_timeout == 0 {
            problems.add("delivery.retry_max", "timeouts must be positive and retry_max >= retry_initial".into());
        }
        let dns = dns_settings(&raw.dns, &mut problems);
        let dnssec = dnssec_settings(&raw.dns, &mut problems);
        let dane_required = delivery::dane_required(&raw.delivery, dnssec.mode).unwrap_or_else(|list| {
            for (key, message) in list {
                problems.add(key, message);
            }
            Vec::new()
        });
        let limits = raw.limits;
        limits.validate(&mut problems);
        rates.network = limits.network_rate(&mut problems);
        if raw.spool.segment_size < 1024 * 1024 {
            problems.add("spool.segment_size", "must be at least 1 MiB".into());
        }
        if raw.server.user.as_deref().is_some_and(|u| u.is_empty() || u.contains(['\0', ':', '/'])) {
            problems.add("server.user", "must be a user name".into());
        }

        let policy = raw.policy.validate(base).map_err(|(key, message)| problems.add(key, message));
        let arc_seal = match raw.arc.seal {
            Some(name) => match Domain::parse(&name, true) {
                Ok(d) => {
                    let rsa = domains
                        .iter()
                        .find(|c| c.name == d)
                        .is_some_and(|c| c.dkim.sign && c.dkim.algorithms.contains(&mailgate_core::dkim::Algorithm::RsaSha256));
                    if !rsa {
                        problems.add(
                            "arc.seal",
                            format!("{name:?} must be a [[domain]] that signs with \"rsa2048\" (ARC seals are rsa-sha256)"),
                        );
                    }
                    Some(d)
                }
                Err(e) => {
                    problems.add("arc.seal", format!("{name:?} is not a domain: {e}"));
                    None
                }
            },
            None => None,
        };
        let first_domain = domains.first().map(|d| d.name.to_string());
        let reports = raw.reports.validate(&hostname, first_domain.as_deref()).map_err(|list| {
            for (key, message) in list {
                problems.add(key, message);
            }
        });
        let cluster = raw.cluster.validate(&hostname).map_err(|list| {
            for (key, message) in list {
                problems.add(key, message);
            }
        });
        let webhooks = webhook::validate(raw.webhook).unwrap_or_else(|list| {
            for (key, message) in list {
                problems.add(key, message);
            }
            Vec::new()
        });
        let forwarding = srs::validate(raw.srs, raw.forward, resolve).map_err(|list| {
            for (key, message) in list {
                problems.add(key, message);
            }
        });
        let suppression = raw.suppression.validate().map_err(|list| {
            for (key, message) in list {
                problems.add(key, message);
            }
        });
        let return_path_domain = suppression::return_path_domain(raw.delivery.return_path_domain.as_deref())
            .map_err(|(key, message)| problems.add(key, message))
            .ok()
            .flatten();
        let (policy, reports, cluster, (srs, forwards), suppression) = match (policy, reports, cluster, forwarding, suppression) {
            (Ok(p), Ok(r), Ok(c), Ok(f), Ok(s)) if problems.list.is_empty() => (p, r, c, f, s),
            _ => return Err(problems.list),
        };

        Ok(Config {
            hostname,
            data_dir,
            public_addresses: raw.server.public_addresses,
            listeners,
            tls: raw.tls.map(|t| TlsFiles { cert: resolve(t.cert), key: resolve(t.key) }),
            nameservers: raw.dns.nameservers,
            dns,
            dnssec: DnssecSettings { trust_anchor: dnssec.trust_anchor.map(&resolve), ..dnssec },
            trusted_networks: raw.relay.trusted_networks,
            delivery: Delivery {
                ca_file: raw.delivery.ca_file.clone().map(&resolve),
                require_tls: raw.delivery.require_tls.iter().map(|d| d.trim_end_matches('.').to_lowercase()).collect(),
                return_path_domain,
                dane_required,
                ..raw.delivery
            },
            smarthost,
            domains,
            users,
            http_bind: raw.http.bind,
            http_tls: raw.http.tls,
            http_admin_password: raw.http.admin_password,
            user: raw.server.user,
            smtp_threads,
            limits,
            spool: SpoolConfig { min_free_space: raw.spool.min_free_space, segment_size: raw.spool.segment_size },
            log_format: raw.log.format,
            dkim: DkimGlobal { dns_check_interval: raw.dkim.dns_check_interval.max(1), ..raw.dkim },
            protect: raw.lookalike.protect.iter().map(|d| d.trim_end_matches('.').to_lowercase()).collect(),
            policy,
            arc_seal,
            reports,
            cluster,
            webhooks,
            rates,
            srs,
            forwards,
            suppression,
        })
    }

    pub fn command_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.command_timeout)
    }

    pub fn data_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.data_timeout)
    }

    pub fn domain(&self, d: &Domain) -> Option<&DomainConfig> {
        self.domains.iter().find(|c| c.name.same_name(d))
    }

    pub fn retry_policy(&self) -> mailgate_core::retry::RetryPolicy {
        let d = &self.delivery;
        mailgate_core::retry::RetryPolicy {
            initial: Duration::from_secs(d.retry_initial),
            max: Duration::from_secs(d.retry_max),
            max_age: Duration::from_secs(d.max_age),
            delay_warning: (d.delay_warning > 0).then(|| Duration::from_secs(d.delay_warning)),
            ..Default::default()
        }
    }
}

/// The problems found so far in one file.
struct Problems {
    file: String,
    list: Vec<ConfigError>,
}

impl Problems {
    fn add(&mut self, key: impl Into<String>, message: String) {
        self.list.push(ConfigError::Invalid { file: self.file.clone(), key: key.into(), message });
    }
}

/// The first of a non-empty list of problems (`serve` reports one line).
fn first(mut errors: Vec<ConfigError>) -> ConfigError {
    if errors.is_empty() {
        // Not reached (an empty list is a valid Config); an error rather
        // than a panic all the same.
        return ConfigError::Parse { file: "<config>".into(), message: "invalid configuration".into() };
    }
    errors.swap_remove(0)
}

/// `[delivery].smarthost`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Smarthost {
    pub host: String,
    pub port: u16,
    pub credentials: Option<(String, String)>,
}

impl Smarthost {
    fn parse(s: &str) -> Option<Smarthost> {
        let rest = s.strip_prefix("smtp://")?;
        let (creds, hostport) = match rest.rsplit_once('@') {
            Some((c, h)) => (Some(c), h),
            None => (None, rest),
        };
        let credentials = match creds {
            Some(c) => {
                let (u, p) = c.split_once(':')?;
                Some((percent_decode(u)?, percent_decode(p)?))
            }
            None => None,
        };
        let (host, port) = hostport.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return None;
        }
        Some(Smarthost { host: host.to_string(), port: port.parse().ok()?, credentials })
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn parse_next_hop(s: &str, base: &Path) -> Result<NextHop, String> {
    let host_port = |rest: &str| -> Result<String, String> {
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| format!("{s:?} needs host:port"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!("{s:?} needs host:port"));
        }
        Ok(rest.to_string())
    };
    if let Some(rest) = s.strip_prefix("smtp://") {
        Ok(NextHop::Smtp(host_port(rest)?))
    } else if let Some(rest) = s.strip_prefix("lmtp://") {
        Ok(NextHop::Lmtp(host_port(rest)?))
    } else if let Some(rest) = s.strip_prefix("maildir:") {
        let p = PathBuf::from(rest);
        Ok(NextHop::Maildir(if p.is_absolute() { p } else { base.join(p) }))
    } else {
        Err(format!("{s:?} must be smtp://host:port, lmtp://host:port or maildir:/path"))
    }
}

fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for writes of its length; gethostname NUL-terminates
    // on success when the name fits.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    match Domain::parse(&name, false) {
        Ok(d) => d.to_string(),
        Err(_) => "localhost".into(),
    }
}

#[cfg(test)]
mod tests;
