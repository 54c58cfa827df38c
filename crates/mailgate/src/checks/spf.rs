//! SPF (RFC 7208) through the `mail-auth` crate: a small typed wrapper that
//! checks the HELO and MAIL FROM identities against `[dns].nameservers`, and
//! formats the `Received-SPF:` trace field (RFC 7208 §9.1).
//!
//! RFC 7208 processing limits, as enforced by mail-auth 0.13: at most 10
//! DNS-querying terms (include, a, mx, ptr, exists, redirect) per check →
//! permerror, and at most 10 MX names per `mx` term → permerror; `ptr`
//! looks at no more than the names the remaining term budget allows. The
//! void-lookup limit (§4.6.4, 2 lookups answering NXDOMAIN or no data) is
//! NOT enforced by mail-auth 0.13 (see the tests below).
//!
//! Not wired into the SMTP pipeline yet, hence the `dead_code` allowances
//! on the items below (remove them when inbound.rs calls the checker).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use hickory_resolver::TokioResolver;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{MessageAuthenticator, SpfOutput};

#[cfg(test)]
#[path = "spf_suite.rs"]
mod suite;

/// The result of an SPF check, RFC 7208 §2.6.
#[allow(dead_code)] // not wired into the SMTP pipeline yet
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfResult {
    Pass,
    Fail,
    SoftFail,
    Neutral,
    None,
    TempError,
    PermError,
}

#[allow(dead_code)] // not wired into the SMTP pipeline yet
impl SpfResult {
    /// The RFC 8601 / RFC 7208 word, lower case.
    pub fn as_str(self) -> &'static str {
        match self {
            SpfResult::Pass => "pass",
            SpfResult::Fail => "fail",
            SpfResult::SoftFail => "softfail",
            SpfResult::Neutral => "neutral",
            SpfResult::None => "none",
            SpfResult::TempError => "temperror",
            SpfResult::PermError => "permerror",
        }
    }
}

impl fmt::Display for SpfResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<mail_auth::SpfResult> for SpfResult {
    fn from(r: mail_auth::SpfResult) -> Self {
        match r {
            mail_auth::SpfResult::Pass => SpfResult::Pass,
            mail_auth::SpfResult::Fail => SpfResult::Fail,
            mail_auth::SpfResult::SoftFail => SpfResult::SoftFail,
            mail_auth::SpfResult::Neutral => SpfResult::Neutral,
            mail_auth::SpfResult::None => SpfResult::None,
            mail_auth::SpfResult::TempError => SpfResult::TempError,
            mail_auth::SpfResult::PermError => SpfResult::PermError,
        }
    }
}

/// Which identity was checked (RFC 7208 §2.3, §2.4).
#[allow(dead_code)] // not wired into the SMTP pipeline yet
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfIdentity {
    Helo,
    MailFrom,
}

#[allow(dead_code)] // not wired into the SMTP pipeline yet
impl SpfIdentity {
    pub fn as_str(self) -> &'static str {
        match self {
            SpfIdentity::Helo => "helo",
            SpfIdentity::MailFrom => "mailfrom",
        }
    }
}

/// What a check found.
#[allow(dead_code)] // not wired into the SMTP pipeline yet
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfOutcome {
    pub result: SpfResult,
    /// The domain whose policy was evaluated.
    pub domain: String,
    /// The expanded `exp=` text of a `fail`, when the domain gives one.
    pub explanation: Option<String>,
}

impl From<SpfOutput> for SpfOutcome {
    fn from(out: SpfOutput) -> Self {
        SpfOutcome { result: out.result().into(), domain: out.domain().to_string(), explanation: out.explanation().map(str::to_string) }
    }
}

/// An SPF checker sharing one resolver.
#[allow(dead_code)] // not wired into the SMTP pipeline yet
pub struct SpfChecker {
    auth: MessageAuthenticator,
    /// This host's name, the `%{r}` macro.
    host_domain: String,
}

#[allow(dead_code)] // not wired into the SMTP pipeline yet
impl SpfChecker {
    /// Queries `nameservers` (with their ports) only; `None` means the
    /// system resolver, as everywhere in mailgate (`crate::dns`).
    pub fn new(nameservers: Option<&[SocketAddr]>, host_domain: &str) -> anyhow::Result<Self> {
        Ok(Self::from_resolver(crate::dns::resolver(nameservers)?, host_domain))
    }

    pub fn from_resolver(resolver: TokioResolver, host_domain: &str) -> Self {
        SpfChecker { auth: MessageAuthenticator(resolver), host_domain: host_domain.to_string() }
    }

    /// Checks the MAIL FROM identity. An empty reverse-path (`<>`) checks
    /// `postmaster@<helo>`; a sender without a local-part gets `postmaster`
    /// (RFC 7208 §2.4, §4.3).
    pub async fn check_mail_from(&self, ip: IpAddr, helo: &str, mail_from: &str) -> SpfOutcome {
        let sender = mail_from_identity(helo, mail_from);
        let params = SpfParameters::verify_mail_from(ip, helo, &self.host_domain, &sender);
        self.auth.verify_spf(params).await.into()
    }

    /// Checks the HELO identity (sender `postmaster@<helo>`).
    pub async fn check_helo(&self, ip: IpAddr, helo: &str) -> SpfOutcome {
        let params = SpfParameters::verify_ehlo(ip, helo, &self.host_domain);
        self.auth.verify_spf(params).await.into()
    }
}

/// The `<sender>` of check_host() for a MAIL FROM reverse-path.
#[allow(dead_code)] // not wired into the SMTP pipeline yet
pub fn mail_from_identity(helo: &str, mail_from: &str) -> String {
    let mail_from = mail_from.trim_start_matches('<').trim_end_matches('>');
    match mail_from.rsplit_once('@') {
        _ if mail_from.is_empty() => format!("postmaster@{helo}"),
        Some(("", domain)) => format!("postmaster@{domain}"),
        Some(_) => mail_from.to_string(),
        None => format!("postmaster@{mail_from}"),
    }
}

/// An RFC 7208 §9.1 `Received-SPF:` header field, folded, ending in CRLF.
/// `receiver` is this host's name; `mail_from` is the reverse-path as given
/// (empty for `<>`).
#[allow(dead_code)] // not wired into the SMTP pipeline yet
pub fn received_spf_header(outcome: &SpfOutcome, identity: SpfIdentity, receiver: &str, ip: IpAddr, helo: &str, mail_from: &str) -> String {
    let sender = match identity {
        SpfIdentity::MailFrom => mail_from_identity(helo, mail_from),
        SpfIdentity::Helo => format!("postmaster@{helo}"),
    };
    let comment = match outcome.result {
        SpfResult::Pass => format!("{receiver}: domain of {sender} designates {ip} as permitted sender"),
        SpfResult::Fail => format!("{receiver}: domain of {sender} does not designate {ip} as permitted sender"),
        SpfResult::SoftFail => format!("{receiver}: transitioning domain of {sender} does not designate {ip} as permitted sender"),
        SpfResult::Neutral => format!("{receiver}: {ip} is neither permitted nor denied by domain of {sender}"),
        SpfResult::None => format!("{receiver}: domain of {sender} does not designate permitted sender hosts"),
        SpfResult::TempError => format!("{receiver}: error in processing during lookup of {sender}"),
        SpfResult::PermError => format!("{receiver}: permanent error in processing domain of {sender}"),
    };
    let mut pairs = vec![
        format!("client-ip={ip}"),
        format!("envelope-from={}", value(mail_from.trim_start_matches('<').trim_end_matches('>'))),
        format!("helo={}", value(helo)),
    ];
    if let (SpfResult::Fail, Some(exp)) = (outcome.result, &outcome.explanation) {
        pairs.push(format!("problem={}", value(exp)));
    }
    pairs.push(format!("receiver={}", value(receiver)));
    pairs.push(format!("identity={}", identity.as_str()));
    format!("Received-SPF: {} ({})\r\n\t{};\r\n", outcome.result, ctext(&comment), pairs.join(";\r\n\t"))
}

/// A comment's content: backslash-escape `(`, `)` and `\`, drop controls.
#[allow(dead_code)] // not wired into the SMTP pipeline yet
fn ctext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().filter(|c| !c.is_control()) {
        if matches!(c, '(' | ')' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A key-value pair's value: a dot-atom as is, anything else quoted.
#[allow(dead_code)] // not wired into the SMTP pipeline yet
fn value(s: &str) -> String {
    const SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";
    let atom = |a: &str| !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || SPECIALS.contains(c));
    if s.split('.').all(atom) {
        return s.to_string();
    }
    let mut out = String::from("\"");
    for c in s.chars().filter(|c| !c.is_control()) {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailgate_testkit::dns::{DnsServer, Zone};
    use std::time::Duration;

    pub(super) fn checker(dns: &DnsServer, timeout: Duration) -> SpfChecker {
        use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
        use hickory_resolver::net::runtime::TokioRuntimeProvider;
        let addr = dns.addr();
        let mut udp = ConnectionConfig::udp();
        udp.port = addr.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = addr.port();
        let servers = vec![NameServerConfig::new(addr.ip(), true, vec![udp, tcp])];
        let mut builder = TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), TokioRuntimeProvider::default());
        let opts = builder.options_mut();
        opts.ndots = 0;
        opts.attempts = 1;
        opts.timeout = timeout;
        SpfChecker::from_resolver(builder.build().expect("resolver"), "mx.test.invalid")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn result_words() {
        let all = [
            (SpfResult::Pass, "pass"),
            (SpfResult::Fail, "fail"),
            (SpfResult::SoftFail, "softfail"),
            (SpfResult::Neutral, "neutral"),
            (SpfResult::None, "none"),
            (SpfResult::TempError, "temperror"),
            (SpfResult::PermError, "permerror"),
        ];
        for (r, w) in all {
            assert_eq!(r.to_string(), w);
        }
    }

    #[test]
    fn sender_identity() {
        assert_eq!(mail_from_identity("h.example", ""), "postmaster@h.example");
        assert_eq!(mail_from_identity("h.example", "<>"), "postmaster@h.example");
        assert_eq!(mail_from_identity("h.example", "a@b.example"), "a@b.example");
        assert_eq!(mail_from_identity("h.example", "@b.example"), "postmaster@b.example");
    }

    #[tokio::test]
    async fn wrapper_checks_through_configured_nameservers() {
        let dns = DnsServer::start(
            Zone::new()
                .txt("example.com", "v=spf1 ip4:192.0.2.1 -all exp=why.example.com")
                .txt("why.example.com", "%{i} may not send for %{d}")
                .txt("helo.example.com", "v=spf1 a -all")
                .a("helo.example.com", "192.0.2.9"),
        );
        let addrs = [dns.addr()];
        let spf = SpfChecker::new(Some(&addrs), "mx.test.invalid").unwrap();
        let o = spf.check_mail_from(ip("192.0.2.1"), "helo.example.com", "a@example.com").await;
        assert_eq!((o.result, o.domain.as_str(), o.explanation), (SpfResult::Pass, "example.com", None));
        let o = spf.check_mail_from(ip("192.0.2.2"), "helo.example.com", "a@example.com").await;
        assert_eq!(o.result, SpfResult::Fail);
        assert_eq!(o.explanation.as_deref(), Some("192.0.2.2 may not send for example.com"));
        // <> checks postmaster@<helo>.
        let o = spf.check_mail_from(ip("192.0.2.9"), "helo.example.com", "").await;
        assert_eq!((o.result, o.domain.as_str()), (SpfResult::Pass, "helo.example.com"));
        let o = spf.check_helo(ip("192.0.2.9"), "helo.example.com").await;
        assert_eq!(o.result, SpfResult::Pass);
        let o = spf.check_helo(ip("192.0.2.1"), "helo.example.com").await;
        assert_eq!(o.result, SpfResult::Fail);
        let o = spf.check_helo(ip("192.0.2.1"), "nothing.example.com").await;
        assert_eq!(o.result, SpfResult::None);
    }

    #[tokio::test]
    async fn limits() {
        // 10 DNS-querying terms are fine, the 11th is a permerror.
        let mut zone = Zone::new();
        let mut ten = String::from("v=spf1");
        for i in 0..10 {
            ten.push_str(&format!(" a:h{i}.example.com"));
            zone = zone.a(&format!("h{i}.example.com"), "192.0.2.200");
        }
        zone = zone
            .txt("ten.example.com", &format!("{ten} ip4:192.0.2.1 -all"))
            .txt("eleven.example.com", &format!("{ten} a:h0.example.com ip4:192.0.2.1 -all"))
            .txt("incl.example.com", "v=spf1 include:i1.example.com -all")
            .txt("i1.example.com", "v=spf1 include:i2.example.com")
            .txt("i2.example.com", "v=spf1 include:i3.example.com")
            .txt("i3.example.com", "v=spf1 include:i4.example.com")
            .txt("i4.example.com", "v=spf1 include:i5.example.com")
            .txt("i5.example.com", "v=spf1 include:i6.example.com")
            .txt("i6.example.com", "v=spf1 include:i7.example.com")
            .txt("i7.example.com", "v=spf1 include:i8.example.com")
            .txt("i8.example.com", "v=spf1 include:i9.example.com")
            .txt("i9.example.com", "v=spf1 include:i10.example.com")
            .txt("i10.example.com", "v=spf1 include:i11.example.com")
            .txt("i11.example.com", "v=spf1 +all")
            // 10 MX names to look up are fine, 11 are a permerror.
            .txt("mx10.example.com", "v=spf1 mx:m10.example.com -all")
            .txt("mx11.example.com", "v=spf1 mx:m11.example.com -all")
            // Void lookups: three names that do not exist.
            .txt("void.example.com", "v=spf1 a:n1.example.com a:n2.example.com a:n3.example.com ip4:192.0.2.1 -all");
        for i in 0..11 {
            let host = format!("mxhost{i}.example.com");
            if i < 10 {
                zone = zone.mx("m10.example.com", 10, &host);
            }
            zone = zone.mx("m11.example.com", 10, &host);
            zone = zone.a(&host, "192.0.2.200");
        }
        let dns = DnsServer::start(zone);
        let spf = checker(&dns, Duration::from_secs(2));
        let ip = ip("192.0.2.1");
        assert_eq!(spf.check_mail_from(ip, "h", "x@ten.example.com").await.result, SpfResult::Pass);
        assert_eq!(spf.check_mail_from(ip, "h", "x@eleven.example.com").await.result, SpfResult::PermError);
        assert_eq!(spf.check_mail_from(ip, "h", "x@incl.example.com").await.result, SpfResult::PermError);
        assert_eq!(spf.check_mail_from(ip, "h", "x@mx10.example.com").await.result, SpfResult::Fail);
        assert_eq!(spf.check_mail_from(ip, "h", "x@mx11.example.com").await.result, SpfResult::PermError);
        // RFC 7208 §4.6.4 wants permerror after the 2nd void lookup;
        // mail-auth 0.13 does not count void lookups and goes on to ip4.
        assert_eq!(spf.check_mail_from(ip, "h", "x@void.example.com").await.result, SpfResult::Pass);
    }

    #[tokio::test]
    async fn unanswered_queries_are_temperror() {
        let dns = DnsServer::start(Zone::new().timeout("slow.example.com").txt("ok.example.com", "v=spf1 a:slow.example.com -all"));
        let spf = checker(&dns, Duration::from_millis(300));
        let ip = ip("192.0.2.1");
        assert_eq!(spf.check_mail_from(ip, "h", "x@slow.example.com").await.result, SpfResult::TempError);
        assert_eq!(spf.check_mail_from(ip, "h", "x@ok.example.com").await.result, SpfResult::TempError);
    }

    #[test]
    fn received_spf_field() {
        let o = SpfOutcome { result: SpfResult::Pass, domain: "example.com".into(), explanation: None };
        let h =
            received_spf_header(&o, SpfIdentity::MailFrom, "mybox.example.org", ip("192.0.2.1"), "foo.example.com", "myname@example.com");
        assert_eq!(
            h,
            "Received-SPF: pass (mybox.example.org: domain of myname@example.com designates 192.0.2.1 as permitted sender)\r\n\t\
             client-ip=192.0.2.1;\r\n\tenvelope-from=\"myname@example.com\";\r\n\thelo=foo.example.com;\r\n\t\
             receiver=mybox.example.org;\r\n\tidentity=mailfrom;\r\n"
        );
        let o = SpfOutcome { result: SpfResult::Fail, domain: "example.com".into(), explanation: Some("see (why) \"here\"".into()) };
        let h = received_spf_header(&o, SpfIdentity::Helo, "mybox.example.org", ip("2001:db8::1"), "foo.example.com", "");
        assert!(
            h.starts_with("Received-SPF: fail (mybox.example.org: domain of postmaster@foo.example.com does not designate 2001:db8::1")
        );
        assert!(h.contains("envelope-from=\"\";"), "{h}");
        assert!(h.contains("problem=\"see (why) \\\"here\\\"\";"), "{h}");
        assert!(h.contains("identity=helo;"), "{h}");
    }
}
