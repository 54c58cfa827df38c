//! SPF (RFC 7208), mailgate's own implementation: checks the HELO and
//! MAIL FROM identities over `[dns].nameservers` (hickory's `TokioResolver`,
//! whose per-TTL answer cache is our DNS cache) and formats the
//! `Received-SPF:` trace field (§9.1). Each domain's record is also kept
//! parsed (`checks::cache`) for its TTL, and its absence for the SOA
//! minimum (RFC 2308), so a repeated sender costs no lookup and no parse.
//!
//! Layout: `record` parses records strictly (§4.5, §4.6, §5, §6, §12),
//! `macros` parses and expands macro-strings (§7), `eval` is check_host()
//! with the §4.6.4 limits: 10 DNS-querying terms, 2 void lookups, 10 MX
//! names per `mx`, 10 PTR names per `ptr`. `suite` runs the openspf
//! conformance suites against a loopback DNS server.
//!
//! A key design decision: records and DNS answers are hostile input, so
//! nothing here panics on them; anything malformed is a permerror (records)
//! or treated as absent (names in answers).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;

mod eval;
pub mod macros;
pub mod record;
#[cfg(test)]
mod suite;

/// §4.6.4: at least 20 seconds for a whole check, then temperror.
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// The result of an SPF check, RFC 7208 §2.6.
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

impl From<SpfResult> for mail_auth::SpfResult {
    fn from(r: SpfResult) -> Self {
        match r {
            SpfResult::Pass => mail_auth::SpfResult::Pass,
            SpfResult::Fail => mail_auth::SpfResult::Fail,
            SpfResult::SoftFail => mail_auth::SpfResult::SoftFail,
            SpfResult::Neutral => mail_auth::SpfResult::Neutral,
            SpfResult::None => mail_auth::SpfResult::None,
            SpfResult::TempError => mail_auth::SpfResult::TempError,
            SpfResult::PermError => mail_auth::SpfResult::PermError,
        }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfIdentity {
    Helo,
    MailFrom,
}

impl SpfIdentity {
    pub fn as_str(self) -> &'static str {
        match self {
            SpfIdentity::Helo => "helo",
            SpfIdentity::MailFrom => "mailfrom",
        }
    }
}

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfOutcome {
    pub result: SpfResult,
    /// The domain whose policy was evaluated.
    pub domain: String,
    /// The expanded `exp=` text of a `fail`, when the domain gives one.
    pub explanation: Option<String>,
}

impl SpfOutcome {
    /// The same outcome as mail-auth's type, for its DMARC evaluation.
    pub fn to_mail_auth(&self) -> mail_auth::SpfOutput {
        let out = mail_auth::SpfOutput::new(self.domain.clone()).with_result(self.result.into());
        match &self.explanation {
            Some(exp) => out.with_explanation(exp.clone()),
            None => out,
        }
    }
}

impl From<mail_auth::SpfOutput> for SpfOutcome {
    fn from(out: mail_auth::SpfOutput) -> Self {
        SpfOutcome { result: out.result().into(), domain: out.domain().to_string(), explanation: out.explanation().map(str::to_string) }
    }
}

/// An SPF checker sharing one resolver.
pub struct SpfChecker {
    resolver: TokioResolver,
    /// This host's name, the `%{r}` macro.
    host_domain: String,
    /// Parsed records (and their absence) by domain.
    records: eval::RecordCache,
}

/// Parsed records kept by default (`[dns] cache_size`).
const CACHE_SIZE: u64 = 10_000;

impl SpfChecker {
    /// Queries `nameservers` (with their ports) only; `None` means the
    /// system resolver, as everywhere in mailgate (`crate::dns`).
    pub fn new(nameservers: Option<&[SocketAddr]>, host_domain: &str) -> anyhow::Result<Self> {
        Ok(Self::from_resolver(crate::dns::resolver(nameservers)?, host_domain))
    }

    pub fn from_resolver(resolver: TokioResolver, host_domain: &str) -> Self {
        Self::with_cache_size(resolver, host_domain, CACHE_SIZE)
    }

    /// Keeping at most `cache_size` parsed records.
    pub fn with_cache_size(resolver: TokioResolver, host_domain: &str, cache_size: u64) -> Self {
        SpfChecker { resolver, host_domain: host_domain.to_string(), records: eval::RecordCache::new(cache_size) }
    }

    /// Checks the MAIL FROM identity. An empty reverse-path (`<>`) checks
    /// `postmaster@<helo>`; a sender without a local-part gets `postmaster`
    /// (RFC 7208 §2.4, §4.3).
    pub async fn check_mail_from(&self, ip: IpAddr, helo: &str, mail_from: &str) -> SpfOutcome {
        self.check(ip, helo, &mail_from_identity(helo, mail_from)).await
    }

    /// Checks the HELO identity (sender `postmaster@<helo>`). A HELO that
    /// is an address literal or not a multi-label name gives `none`.
    pub async fn check_helo(&self, ip: IpAddr, helo: &str) -> SpfOutcome {
        self.check(ip, helo, &format!("postmaster@{helo}")).await
    }

    async fn check(&self, ip: IpAddr, helo: &str, sender: &str) -> SpfOutcome {
        let domain = sender.rsplit_once('@').map_or(sender, |(_, d)| d);
        let outcome = |result, explanation| SpfOutcome { result, domain: domain.to_string(), explanation };
        // §4.3: a malformed domain has no SPF record to find.
        if !eval::is_valid_domain(domain) {
            return outcome(SpfResult::None, None);
        }
        // §5: an IPv4-mapped IPv6 client is the IPv4 client it maps.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        let client = eval::Client { ip, sender, helo, receiver: &self.host_domain };
        let mut evaluation = eval::Evaluation::new(&self.resolver, &self.records, &client);
        let domain_arg = domain.strip_suffix('.').unwrap_or(domain).to_string();
        match tokio::time::timeout(CHECK_TIMEOUT, evaluation.check_host(domain_arg, true)).await {
            Ok((result, explanation)) => outcome(result, explanation),
            Err(_) => outcome(SpfResult::TempError, None),
        }
    }
}

/// The `<sender>` of check_host() for a MAIL FROM reverse-path.
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
    format!(
        "Received-SPF: {} ({})\r\n\t{};\r\n",
        outcome.result,
        crate::checks::auth_results::comment_text(&comment),
        pairs.join(";\r\n\t")
    )
}

/// A key-value pair's value: a dot-atom as is, anything else quoted.
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
        let lookup = crate::dns::Lookup { attempts: 1, timeout, tcp: true };
        SpfChecker::from_resolver(crate::dns::resolver_with(Some(&[dns.addr()]), lookup).expect("resolver"), "mx.test.invalid")
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
    async fn ten_dns_terms_at_most() {
        // 10 DNS-querying terms are fine, the 11th is a permerror, across
        // include and redirect too (one global count, §4.6.4).
        let mut zone = Zone::new();
        let mut ten = String::from("v=spf1");
        for i in 0..10 {
            ten.push_str(&format!(" a:h{i}.example.com"));
            zone = zone.a(&format!("h{i}.example.com"), "192.0.2.200");
        }
        zone = zone
            .txt("ten.example.com", &format!("{ten} ip4:192.0.2.1 -all"))
            .txt("eleven.example.com", &format!("{ten} a:h0.example.com ip4:192.0.2.1 -all"))
            // Ten terms, the last a redirect: fine.
            .txt(
                "redir.example.com",
                "v=spf1 a:h0.example.com a:h1.example.com a:h2.example.com include:inc8.example.com redirect=ok.example.com",
            )
            .txt("inc8.example.com", "v=spf1 a:h3.example.com a:h4.example.com a:h5.example.com a:h6.example.com a:h7.example.com")
            .txt("ok.example.com", "v=spf1 ip4:192.0.2.1 -all")
            // A match before the limit is reached wins.
            .txt("early.example.com", &format!("v=spf1 ip4:192.0.2.1 {ten} a:h0.example.com -all"));
        for i in 1..=11 {
            let next = if i == 11 { "v=spf1 +all".to_string() } else { format!("v=spf1 include:i{}.example.com", i + 1) };
            zone = zone.txt(&format!("i{i}.example.com"), &next);
        }
        zone = zone.txt("incl.example.com", "v=spf1 include:i1.example.com -all");
        let dns = DnsServer::start(zone);
        let spf = checker(&dns, Duration::from_secs(2));
        let ip = ip("192.0.2.1");
        assert_eq!(spf.check_mail_from(ip, "h", "x@ten.example.com").await.result, SpfResult::Pass);
        assert_eq!(spf.check_mail_from(ip, "h", "x@eleven.example.com").await.result, SpfResult::PermError);
        assert_eq!(spf.check_mail_from(ip, "h", "x@redir.example.com").await.result, SpfResult::Pass);
        assert_eq!(spf.check_mail_from(ip, "h", "x@early.example.com").await.result, SpfResult::Pass);
        assert_eq!(spf.check_mail_from(ip, "h", "x@incl.example.com").await.result, SpfResult::PermError);
    }

    #[tokio::test]
    async fn two_void_lookups_at_most() {
        let zone = Zone::new()
            .txt("two.example.com", "v=spf1 a:n1.example.com mx:n2.example.com ip4:192.0.2.1 -all")
            .txt("three.example.com", "v=spf1 a:n1.example.com exists:n2.example.com a:nodata.example.com ip4:192.0.2.1 -all")
            // A name with records but none of the asked type is void too.
            .txt("nodata.example.com", "v=spf1 -all");
        let dns = DnsServer::start(zone);
        let spf = checker(&dns, Duration::from_secs(2));
        let ip = ip("192.0.2.1");
        assert_eq!(spf.check_mail_from(ip, "h", "x@two.example.com").await.result, SpfResult::Pass);
        assert_eq!(spf.check_mail_from(ip, "h", "x@three.example.com").await.result, SpfResult::PermError);
    }

    #[tokio::test]
    async fn mx_and_ptr_name_limits() {
        let mut zone = Zone::new()
            .txt("mx10.example.com", "v=spf1 mx:m10.example.com -all")
            .txt("mx11.example.com", "v=spf1 mx:m11.example.com -all")
            // The client's name is the 11th PTR name: ignored.
            .txt("ptr.example.com", "v=spf1 ptr:p10.example.com ptr:p11.example.com -all");
        for i in 0..11 {
            let host = format!("mxhost{i}.example.com");
            if i < 10 {
                zone = zone.mx("m10.example.com", 10, &host);
            }
            zone = zone.mx("m11.example.com", 10, &host).a(&host, "192.0.2.200");
        }
        for i in 1..=11 {
            let host = format!("p{i}.example.com");
            zone = zone.ptr("1.2.0.192.in-addr.arpa", &host).a(&host, "192.0.2.1");
        }
        let dns = DnsServer::start(zone);
        let spf = checker(&dns, Duration::from_secs(2));
        let ip = ip("192.0.2.1");
        assert_eq!(spf.check_mail_from(ip, "h", "x@mx10.example.com").await.result, SpfResult::Fail);
        assert_eq!(spf.check_mail_from(ip, "h", "x@mx11.example.com").await.result, SpfResult::PermError);
        // PTR answers come in no fixed order, so which 10 names count varies;
        // 11 names must never be a permerror.
        let r = spf.check_mail_from(ip, "h", "x@ptr.example.com").await.result;
        assert!(matches!(r, SpfResult::Pass | SpfResult::Fail), "{r}");
    }

    #[tokio::test]
    async fn helo_identity_must_be_a_domain() {
        let dns = DnsServer::start(Zone::new().txt("example.com", "v=spf1 +all"));
        let spf = checker(&dns, Duration::from_secs(2));
        let ip = ip("192.0.2.1");
        for helo in ["[192.0.2.1]", "192.0.2.1", "localhost", "a..example.com", ""] {
            let o = spf.check_helo(ip, helo).await;
            assert_eq!(o.result, SpfResult::None, "{helo}");
        }
        assert_eq!(spf.check_helo(ip, "example.com").await.result, SpfResult::Pass);
    }

    #[tokio::test]
    async fn hostile_explanation_is_cut_short() {
        let exp = "%{l}".repeat(300);
        let dns = DnsServer::start(Zone::new().txt("example.com", "v=spf1 -all exp=why.example.com").txt("why.example.com", &exp));
        let spf = checker(&dns, Duration::from_secs(2));
        // A UTF-8 local-part (SMTPUTF8) must not be cut inside a character.
        let o = spf.check_mail_from(ip("192.0.2.1"), "h", "jos\u{e9}@example.com").await;
        assert_eq!(o.result, SpfResult::Fail);
        let explanation = o.explanation.unwrap_or_default();
        assert!(explanation.starts_with("jos\u{e9}jos\u{e9}"), "{explanation}");
        assert!(explanation.len() <= 512 && explanation.len() > 500, "{}", explanation.len());
    }

    #[test]
    fn outcome_for_mail_auth() {
        let o = SpfOutcome { result: SpfResult::Fail, domain: "example.com".into(), explanation: Some("no".into()) };
        let m = o.to_mail_auth();
        assert_eq!((m.result(), m.domain(), m.explanation()), (mail_auth::SpfResult::Fail, "example.com", Some("no")));
        assert_eq!(SpfOutcome::from(m), o);
        let o = SpfOutcome { result: SpfResult::TempError, domain: "example.org".into(), explanation: None };
        assert_eq!(o.to_mail_auth().result(), mail_auth::SpfResult::TempError);
    }

    #[tokio::test]
    async fn unanswered_queries_are_temperror() {
        let dns = DnsServer::start(Zone::new().timeout("slow.example.com").txt("ok.example.com", "v=spf1 a:slow.example.com -all"));
        let spf = checker(&dns, Duration::from_millis(300));
        let ip = ip("192.0.2.1");
        assert_eq!(spf.check_mail_from(ip, "h", "x@slow.example.com").await.result, SpfResult::TempError);
        assert_eq!(spf.check_mail_from(ip, "h", "x@ok.example.com").await.result, SpfResult::TempError);
    }

    #[tokio::test]
    async fn parsed_records_outlive_the_resolver_cache_but_errors_are_not_kept() {
        let dns = DnsServer::start(Zone::new().txt("example.com", "v=spf1 ip4:192.0.2.1 -all").timeout("slow.example.com"));
        let spf = checker(&dns, Duration::from_millis(300));
        let ip = ip("192.0.2.1");
        assert_eq!(spf.check_mail_from(ip, "h", "x@example.com").await.result, SpfResult::Pass);
        assert_eq!(spf.check_mail_from(ip, "h", "x@slow.example.com").await.result, SpfResult::TempError);
        // The record now comes from the parsed cache alone: no server, and
        // hickory's answer cache emptied.
        drop(dns);
        spf.resolver.clear_cache();
        assert_eq!(spf.check_mail_from(ip, "h", "x@EXAMPLE.com").await.result, SpfResult::Pass);
        assert!(spf.records.get("example.com").is_some());
        assert!(spf.records.get("slow.example.com").is_none(), "a temperror is never kept");
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
