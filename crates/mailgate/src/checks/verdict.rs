//! The inbound verdict: SPF (MAIL FROM and HELO), DKIM, ARC, the author,
//! DMARC and look-alike domains evaluated together, mapped through
//! `[policy]` to one action, with the `Authentication-Results` header
//! that records it. The gateway and `mailgate verify` both call
//! [`Checker::check`], so the tool explains exactly what the gateway did.
//!
//! Only the header block is held in memory and parsed; the body is read
//! once, as a stream ([`body::digest`]), for every body hash the DKIM
//! signatures and ARC-Message-Signatures ask for (and ARC sealing needs).
//!
//! All of a message's checks share one deadline, `[dns] check_timeout`:
//! a method still waiting for DNS then is a `temperror` (and
//! `[policy] temperror` decides), so a slow or silent DNS server holds a
//! session no longer than that, whatever the per-query timeouts add up to.

use std::net::IpAddr;
use std::sync::Arc;

use mail_auth::{AuthenticatedMessage, MessageAuthenticator};
use serde::Serialize;

use super::auth_results::{self, ResInfo};
use super::body::{self, Body, BodyDigest};
use super::dkim::{DkimCheck, DkimVerdict};
use super::dmarc::Dmarc;
use super::lookalike::{Finding, Identity, Lookalikes};
use super::spf::{SpfChecker, SpfOutcome, SpfResult, mail_from_identity};
use super::{arc, author, dkim, dmarc};
use crate::config::{Action, Config, PolicyConfig, TempErrorAction};
use crate::store::{self, Recorder};

/// What the checks look at.
pub struct Input<'a> {
    pub ip: IpAddr,
    pub helo: &'a str,
    /// The reverse-path without brackets; empty for `<>`.
    pub mail_from: &'a str,
    /// The header block of the message as received: the header fields and
    /// the empty line after them (for a message without an empty line, the
    /// whole message, and an empty body). `None` checks SPF only.
    pub message: Option<&'a [u8]>,
    /// The body, read as a stream; `None` when `message` is `None` (or
    /// the body is empty). [`Body::split`] makes both of a whole message.
    pub body: Option<Body>,
    /// ARC-seal the message when `[arc] seal` is configured (the gateway
    /// does; `verify` does not).
    pub seal: bool,
    /// Keep the evaluation for DMARC aggregate reports: false for mail
    /// whose recipients are all our report addresses (no report about a
    /// report).
    pub record: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpfReport {
    pub result: &'static str,
    pub domain: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
}

impl From<&SpfOutcome> for SpfReport {
    fn from(o: &SpfOutcome) -> Self {
        SpfReport { result: o.result.as_str(), domain: o.domain.clone(), explanation: o.explanation.clone() }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DkimReport {
    pub result: &'static str,
    pub domain: String,
    pub selector: String,
    pub algorithm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArcReport {
    pub result: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sealers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LookalikeReport {
    pub domain: String,
    pub resembles: String,
    pub rule: String,
    /// Which identity carried the domain: `from`, `mail_from`, `helo`,
    /// `reply_to`, `sender` or `dkim` (a signature's `d=`).
    pub identity: &'static str,
}

/// Everything the checks found, and what to do about it. Serialized, this
/// is `mailgate verify --json`.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub spf: SpfReport,
    pub spf_helo: SpfReport,
    pub dkim: Vec<DkimReport>,
    pub arc: ArcReport,
    pub dmarc: Dmarc,
    pub lookalike: Vec<LookalikeReport>,
    pub action: Action,
    /// The action is a temporary refusal (451 4.7.1): DNS failed where the
    /// outcome depends on it.
    pub temporary: bool,
    /// Why the action is not `accept`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The `Authentication-Results` value (without the field name).
    pub authentication_results: String,
    /// ARC-Seal, ARC-Message-Signature and ARC-Authentication-Results to
    /// prepend, when sealing.
    #[serde(skip)]
    pub arc_seal: Option<String>,
}

impl Verdict {
    /// The full `Authentication-Results:` field, ending in CRLF.
    pub fn auth_results_header(&self) -> String {
        format!("Authentication-Results: {}\r\n", self.authentication_results)
    }
}

/// The checks, sharing one resolver (and its cache).
pub struct Checker {
    auth: MessageAuthenticator,
    spf: SpfChecker,
    authserv_id: String,
    lookalikes: Arc<Lookalikes>,
    policy: PolicyConfig,
    /// DMARC evaluations for aggregate reports; `None` for `verify`.
    recorder: Option<Arc<Recorder>>,
    sealing: Option<Sealing>,
    /// Parsed DKIM key records, by DNS name, for their TTL.
    dkim_keys: dkim::KeyCache,
    /// Parsed DMARC records, likewise.
    dmarc_records: dkim::KeyCache,
    /// `[reports] from` and `ingest`, lower-cased: mail only to them is
    /// not counted in reports.
    report_addresses: Vec<String>,
    /// `[dns] check_timeout`: one deadline for all of a message's checks.
    check_timeout: std::time::Duration,
}

/// The ARC sealing key: the `[arc] seal` domain's active RSA DKIM key,
/// re-read now and then so that a key rotation is followed.
struct Sealing {
    domain: String,
    data_dir: std::path::PathBuf,
    current: std::sync::Mutex<(Option<std::time::Instant>, Option<SelectorKey>)>,
}

/// A sealing key and its selector.
type SelectorKey = (String, Arc<arc::SealingKey>);

impl Sealing {
    const REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

    fn key(&self) -> Option<(String, Arc<arc::SealingKey>)> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if cur.0.is_none_or(|t| t.elapsed() > Self::REFRESH) {
            let loaded = self.load();
            if let Err(e) = &loaded {
                tracing::warn!(domain = %self.domain, error = %e, "no ARC sealing key; forwarding unsealed");
            }
            *cur = (Some(std::time::Instant::now()), loaded.ok());
        }
        cur.1.clone()
    }

    fn load(&self) -> anyhow::Result<(String, Arc<arc::SealingKey>)> {
        use crate::sign::store;
        let active = store::list(&self.data_dir, &self.domain)?
            .into_iter()
            .filter(|k| k.state == store::KeyState::Active && k.algorithm == "rsa2048")
            .max_by_key(|k| k.activated.unwrap_or(k.created))
            .ok_or_else(|| anyhow::anyhow!("the domain has no active rsa2048 key"))?;
        let path = store::domain_dir(&self.data_dir, &self.domain).join(format!("{}.pem", active.selector));
        Ok((active.selector, Arc::new(arc::SealingKey::load(&path)?)))
    }
}

impl Checker {
    /// `recorder` keeps every DMARC evaluation in the report store.
    pub fn new(config: &Config, lookalikes: Arc<Lookalikes>, recorder: Option<Arc<Recorder>>) -> anyhow::Result<Self> {
        let resolver = crate::dns::resolver_with(config.nameservers.as_deref(), crate::dns::Lookup::checks(config))?;
        let cache_size = usize::try_from(config.dns.cache_size).unwrap_or(usize::MAX);
        Ok(Checker {
            auth: MessageAuthenticator(resolver.clone()),
            spf: SpfChecker::with_cache_size(resolver, &config.hostname, config.dns.cache_size),
            authserv_id: config.hostname.clone(),
            lookalikes,
            policy: config.policy.clone(),
            recorder,
            sealing: config.arc_seal.as_ref().map(|d| Sealing {
                domain: d.to_string(),
                data_dir: config.data_dir.clone(),
                current: std::sync::Mutex::new((None, None)),
            }),
            dkim_keys: dkim::KeyCache::new(cache_size),
            dmarc_records: dkim::KeyCache::new(cache_size),
            report_addresses: std::iter::once(&config.reports.from)
                .chain(&config.reports.ingest)
                .map(|a| a.to_string().to_ascii_lowercase())
                .collect(),
            check_timeout: config.dns.check_timeout,
        })
    }

    /// `address` is one of our report addresses (`[reports] from`, `ingest`).
    pub fn is_report_address(&self, address: &str) -> bool {
        self.report_addresses.iter().any(|a| a.eq_ignore_ascii_case(address))
    }

    pub fn authserv_id(&self) -> &str {
        &self.authserv_id
    }

    pub async fn check(&self, input: &Input<'_>) -> Verdict {
        let deadline = tokio::time::Instant::now() + self.check_timeout;
        let helo_is_name = input.helo.contains('.') && input.helo.parse::<IpAddr>().is_err() && !input.helo.starts_with('[');
        let mail_from_domain = mail_from_identity(input.helo, input.mail_from).rsplit_once('@').map(|(_, d)| d.to_string());
        let (spf, spf_helo) = tokio::join!(
            until(deadline, self.spf.check_mail_from(input.ip, input.helo, input.mail_from), || late_spf(
                mail_from_domain.unwrap_or_default()
            )),
            async {
                if helo_is_name {
                    until(deadline, self.spf.check_helo(input.ip, input.helo), || late_spf(input.helo.to_string())).await
                } else {
                    SpfOutcome { result: SpfResult::None, domain: input.helo.to_string(), explanation: None }
                }
            }
        );
        let mut findings: Vec<(Identity, Finding)> = Vec::new();
        let mut add = |identity: Identity, f: Option<Finding>| {
            if let Some(f) = f.map(|f| (identity, f)).filter(|f| !findings.contains(f)) {
                findings.push(f);
            }
        };
        // Look-alikes in every identity a reader or a filter may take for
        // the sender, not only the author.
        if let Some((local, domain)) = input.mail_from.rsplit_once('@') {
            add(Identity::MailFrom, self.lookalikes.check_domain(domain));
            add(Identity::MailFrom, self.lookalikes.check_local_part(local, domain));
        }
        if helo_is_name {
            add(Identity::Helo, self.lookalikes.check_domain(input.helo));
        }
        let mut results = Vec::new();
        results.push(
            ResInfo::new("spf", spf.result.as_str())
                .comment(spf_comment(&spf, input.ip))
                .prop("smtp.mailfrom", &mail_from_identity(input.helo, input.mail_from)),
        );
        if helo_is_name {
            results.push(ResInfo::new("spf", spf_helo.result.as_str()).prop("smtp.helo", input.helo));
        }

        let mut verdict = Verdict {
            spf: SpfReport::from(&spf),
            spf_helo: SpfReport::from(&spf_helo),
            dkim: Vec::new(),
            arc: ArcReport { result: "none", sealers: Vec::new(), reason: None },
            dmarc: Dmarc {
                result: "none",
                from_domain: String::new(),
                policy: "",
                spf_aligned: false,
                dkim_aligned: false,
                override_reason: None,
                published: None,
            },
            lookalike: Vec::new(),
            action: Action::Accept,
            temporary: false,
            reason: None,
            authentication_results: String::new(),
            arc_seal: None,
        };
        let mut decision = Decision::default();
        match spf.result {
            SpfResult::Fail => decision.raise_spf(self.policy.spf_fail, format!("SPF of {} does not permit {}", spf.domain, input.ip)),
            SpfResult::SoftFail => {
                decision.raise_spf(self.policy.spf_softfail, format!("SPF of {} softfails for {}", spf.domain, input.ip))
            }
            _ => {}
        }

        let sealing = input.seal && self.sealing.is_some();
        let mut parsed = input.message.map(|header| (header, AuthenticatedMessage::parse(header)));
        // The author, found before DMARC runs: mail-auth is then handed its
        // canonical address, so that DMARC judges the domain the author's
        // spelling denotes (`BANK.example.`, U-labels) and not "no domain".
        let mut found_author = None;
        if let Some((header, Some(msg))) = parsed.as_mut() {
            let a = author::author(header, &msg.from);
            if let Ok(a) = &a {
                msg.from = vec![a.canonical()];
            }
            found_author = Some(a);
        }
        if let Some(header) = input.message {
            // The author's own findings come from `check_message`, on its
            // canonical domain; without a single author, every From:
            // mailbox is still checked for what it shows a reader.
            let author_found = matches!(found_author, Some(Ok(_)));
            for (identity, display, address) in author::identities(header) {
                if !(identity == Identity::From && author_found) {
                    self.address_lookalikes(identity, display.as_deref(), &address, &mut add);
                }
            }
        }
        // The body hashes, streamed; mail-auth saw an empty body.
        let mut digest: Option<std::io::Result<BodyDigest>> = None;
        if let Some((header, Some(msg))) = parsed.as_mut() {
            let extra = arc::body_lanes(msg, sealing);
            let lanes = body::lanes(msg, &extra);
            let prefix = header.get(msg.body_offset()..).unwrap_or_default().to_vec();
            let d = body::digest_async(prefix, input.body.clone().unwrap_or_else(Body::empty), lanes).await;
            if let Ok(d) = &d {
                d.apply(msg);
            }
            digest = Some(d);
        }
        let mut arc_outcome = None;
        if let Some((_, msg)) = &parsed {
            match (msg, &digest) {
                (Some(_), Some(Err(e))) => {
                    tracing::error!(error = %e, "cannot read the message body for the checks");
                    decision.defer("cannot read the message body".into());
                }
                (Some(msg), Some(Ok(d))) => {
                    let author = found_author.unwrap_or_else(|| Err("From: does not parse".into()));
                    arc_outcome = Some(
                        self.check_message(
                            author,
                            msg,
                            d,
                            input,
                            (&spf, &spf_helo),
                            deadline,
                            &mut verdict,
                            &mut decision,
                            &mut results,
                            &mut add,
                        )
                        .await,
                    );
                }
                (Some(_), None) => {}
                (None, _) => {
                    decision.raise(self.policy.invalid_from, "the message header does not parse".into());
                    verdict.dmarc.result = "fail";
                    results.push(ResInfo::new("dmarc", "fail").comment("unparsable header"));
                }
            }
        }

        for (identity, f) in &findings {
            decision
                .raise(self.policy.lookalike, format!("sender domain {} ({identity}) resembles {} ({})", f.domain, f.resembles, f.rule));
            results.push(
                ResInfo::new("x-lookalike", "fail")
                    .comment(format!("{} resembles {}", f.rule, ascii(&f.resembles)))
                    .prop(identity.property(), &ascii(&f.domain)),
            );
        }
        if findings.is_empty() && input.message.is_some() {
            results.push(ResInfo::new("x-lookalike", "none"));
        }
        verdict.lookalike = findings
            .iter()
            .map(|(identity, f)| LookalikeReport {
                domain: f.domain.clone(),
                resembles: f.resembles.clone(),
                rule: f.rule.to_string(),
                identity: identity.as_str(),
            })
            .collect();
        verdict.action = decision.action;
        verdict.reason = decision.reason;
        verdict.temporary = decision.temporary;
        verdict.authentication_results = auth_results::value(&self.authserv_id, &results);
        self.record(input, &verdict);
        if let (true, Some(sealing), Some((_, Some(msg))), Some(arc)) = (input.seal, &self.sealing, &parsed, &arc_outcome)
            && verdict.action != Action::Reject
            && let Some((selector, key)) = sealing.key()
        {
            match arc::seal(&key, &sealing.domain, &selector, msg, arc, &verdict.authentication_results) {
                Ok(fields) => verdict.arc_seal = Some(fields),
                Err(e) => tracing::info!(error = %e, "not ARC-sealing this message"),
            }
        }
        verdict
    }

    /// DKIM, ARC, the author and DMARC; returns the ARC outcome, which
    /// sealing needs. `raw` is the header block; `msg` was parsed from it
    /// and carries the body hashes `digest` streamed.
    #[allow(clippy::too_many_arguments)]
    async fn check_message<'x>(
        &self,
        author: Result<author::Author, String>,
        msg: &'x AuthenticatedMessage<'x>,
        digest: &BodyDigest,
        input: &Input<'_>,
        (spf, spf_helo): (&SpfOutcome, &SpfOutcome),
        deadline: tokio::time::Instant,
        verdict: &mut Verdict,
        decision: &mut Decision,
        results: &mut Vec<ResInfo>,
        add: &mut impl FnMut(Identity, Option<Finding>),
    ) -> arc::ArcOutcome<'x> {
        let (checks, arc) = tokio::join!(
            dkim::verify_streamed_until(&self.auth, msg, digest, self.policy.max_dkim_signatures, &self.dkim_keys, deadline),
            until(deadline, arc::verify(&self.auth, msg), late_arc)
        );
        for c in &checks {
            add(Identity::Dkim, self.lookalikes.check_domain(&c.domain));
        }
        verdict.dkim = checks.iter().map(dkim_report).collect();
        if checks.is_empty() {
            results.push(ResInfo::new("dkim", "none"));
        }
        for c in &checks {
            let mut r = ResInfo::new("dkim", c.result.as_str())
                .prop("header.d", &c.domain)
                .prop("header.s", &c.selector)
                .prop("header.a", &c.algorithm)
                .prop("header.b", &c.header_b);
            if let Some(why) = &c.reason {
                r = r.comment(why.clone());
            }
            results.push(r);
        }
        verdict.arc = ArcReport { result: arc.result.as_str(), sealers: arc.sealers.clone(), reason: arc.reason.clone() };
        let mut arc_info = ResInfo::new("arc", arc.result.as_str());
        if let Some(why) = &arc.reason {
            arc_info = arc_info.comment(why.clone());
        }
        if let Some(newest) = arc.sealers.last() {
            arc_info = arc_info.prop("header.d", newest);
        }

        let author = match author {
            Ok(a) => a,
            Err(why) => {
                decision.raise(self.policy.invalid_from, why.clone());
                verdict.dmarc.result = "fail";
                results.push(arc_info);
                results.push(ResInfo::new("dmarc", "fail").comment(why));
                return arc;
            }
        };
        add(Identity::From, self.lookalikes.check_domain(&author.domain));
        add(Identity::From, self.lookalikes.check_local_part(&author.local, &author.domain));
        if let Some(name) = &author.display_name {
            add(Identity::From, self.lookalikes.check_display_name(name, &author.domain));
        }

        // With a null reverse-path, SPF's identity is the HELO name.
        let (spf_domain, spf_out) = if input.mail_from.is_empty() {
            (input.helo.to_ascii_lowercase(), spf_helo.to_mail_auth())
        } else {
            (spf.domain.clone(), spf.to_mail_auth())
        };
        let outputs: Vec<_> = checks.iter().map(|c| c.output.clone()).collect();
        let mut d =
            until(deadline, dmarc::evaluate(&self.auth, msg, &outputs, &spf_domain, &spf_out, &author.domain, &self.dmarc_records), || {
                late_dmarc(&author.domain)
            })
            .await;
        let mut dmarc_info = ResInfo::new("dmarc", d.result);
        match d.result {
            "fail" => {
                let (action, asked) = match d.policy {
                    "reject" => (self.policy.dmarc_reject, "reject"),
                    "quarantine" => (self.policy.dmarc_quarantine, "quarantine"),
                    _ => (self.policy.dmarc_none, "none"),
                };
                let newest = arc.sealers.last();
                let trusted = arc.result == arc::ArcResult::Pass && newest.is_some_and(|s| self.policy.trusted_arc_sealers.contains(s));
                if trusted && action > Action::Accept {
                    d.override_reason = Some("trusted_forwarder");
                    dmarc_info = dmarc_info.comment(format!(
                        "p={asked}; overridden by the valid ARC chain of trusted sealer {}",
                        newest.map_or("", String::as_str)
                    ));
                } else {
                    if disposition(action) != asked {
                        d.override_reason = Some("local_policy");
                    }
                    dmarc_info = dmarc_info.comment(format!("p={asked} dis={}", disposition(action)));
                    decision.raise(
                        action,
                        format!("DMARC policy of {} is p={asked} and neither SPF nor DKIM passes aligned with From:", d.from_domain),
                    );
                }
            }
            "temperror" => {
                if self.policy.temperror == TempErrorAction::Defer {
                    decision.defer(format!("temporary DNS failure checking DMARC for {}", d.from_domain));
                }
            }
            _ => {
                if !d.policy.is_empty() {
                    dmarc_info = dmarc_info.comment(format!("p={}", d.policy));
                }
            }
        }
        // DMARC passes: an SPF failure of some other identity is no reason
        // to act on an authenticated message.
        if d.result == "pass" {
            decision.clear_spf();
        }
        results.push(arc_info);
        results.push(dmarc_info.prop("header.from", &author.domain));
        verdict.dmarc = d;
        arc
    }

    /// The look-alike rules for one address of `identity` (`local@domain`
    /// as a parser returned it) and its display name.
    fn address_lookalikes(
        &self,
        identity: Identity,
        display: Option<&str>,
        address: &str,
        add: &mut impl FnMut(Identity, Option<Finding>),
    ) {
        let Some((local, domain)) = address.rsplit_once('@') else { return };
        add(identity, self.lookalikes.check_domain(domain));
        add(identity, self.lookalikes.check_local_part(local, domain));
        // mail-parser reads `"ceo@bank.example"@evil.example` as the display
        // name `ceo@bank.example` and the address `@evil.example`: that
        // name is the local part a reader sees.
        if let (true, Some(name)) = (local.is_empty(), display) {
            add(identity, self.lookalikes.check_local_part(name, domain));
        }
        if let Some(name) = display {
            add(identity, self.lookalikes.check_display_name(name, domain));
        }
    }

    /// Keeps the DMARC evaluation for aggregate reports (RFC 7489 §7.2),
    /// the dashboard and the advisor.
    fn record(&self, input: &Input<'_>, v: &Verdict) {
        let Some(recorder) = &self.recorder else { return };
        if !input.record || v.dmarc.from_domain.is_empty() {
            return;
        }
        let helo_scope = input.mail_from.is_empty();
        let spf = if helo_scope { &v.spf_helo } else { &v.spf };
        let policy = v.dmarc.published.as_ref().map(|p| store::PolicyPublished {
            domain: v.dmarc.from_domain.clone(),
            p: p.p.into(),
            sp: p.sp.into(),
            np: p.np.into(),
            adkim: p.adkim.into(),
            aspf: p.aspf.into(),
            testing: p.testing,
            rua: p.rua.clone(),
        });
        recorder.record(store::Event::Evaluation(Box::new(store::Evaluation {
            time: store::unix_now(),
            source_ip: input.ip,
            helo: input.helo.to_string(),
            envelope_from: input.mail_from.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default(),
            header_from: v.dmarc.from_domain.clone(),
            spf: store::SpfAuth {
                domain: spf.domain.clone(),
                scope: if helo_scope { "helo" } else { "mfrom" }.into(),
                result: spf.result.into(),
            },
            dkim: v
                .dkim
                .iter()
                .map(|d| store::DkimAuth { domain: d.domain.clone(), selector: d.selector.clone(), result: d.result.into() })
                .collect(),
            arc: v.arc.result.into(),
            dmarc: v.dmarc.result.into(),
            spf_aligned: v.dmarc.spf_aligned,
            dkim_aligned: v.dmarc.dkim_aligned,
            disposition: disposition(v.action).into(),
            policy,
            override_reason: v.dmarc.override_reason.map(String::from),
            lookalike: v.lookalike.iter().map(|l| format!("{}:{}:{}", l.identity, l.rule, l.resembles)).collect(),
        })));
    }
}

/// `work`'s result, or `late()` if `deadline` comes first (the work is
/// dropped, and with it its DNS queries).
async fn until<T>(deadline: tokio::time::Instant, work: impl std::future::Future<Output = T>, late: impl FnOnce() -> T) -> T {
    match tokio::time::timeout_at(deadline, work).await {
        Ok(out) => out,
        Err(_) => {
            tracing::info!("inbound check unfinished at [dns] check_timeout: temperror");
            late()
        }
    }
}

fn late_spf(domain: String) -> SpfOutcome {
    SpfOutcome { result: SpfResult::TempError, domain, explanation: None }
}

const LATE: &str = "no DNS answer before the check deadline";

fn late_arc<'x>() -> arc::ArcOutcome<'x> {
    let late = mail_auth::DkimResult::TempError(mail_auth::Error::Dns(mail_auth::DnsError::Resolver(LATE.into())));
    arc::ArcOutcome {
        result: arc::ArcResult::TempError,
        output: mail_auth::ArcOutput::default().with_result(late),
        sealers: Vec::new(),
        reason: Some(LATE.into()),
    }
}

fn late_dmarc(from_domain: &str) -> Dmarc {
    Dmarc {
        result: "temperror",
        from_domain: from_domain.to_string(),
        policy: "",
        spf_aligned: false,
        dkim_aligned: false,
        override_reason: None,
        published: None,
    }
}

/// RFC 7489 disposition of an action.
fn disposition(a: Action) -> &'static str {
    match a {
        Action::Accept | Action::Tag => "none",
        Action::Quarantine => "quarantine",
        Action::Reject => "reject",
    }
}

fn dkim_report(c: &DkimCheck<'_>) -> DkimReport {
    DkimReport {
        result: c.result.as_str(),
        domain: c.domain.clone(),
        selector: c.selector.clone(),
        algorithm: c.algorithm.clone(),
        reason: c.reason.clone().or_else(|| (c.result != DkimVerdict::Pass).then(|| format!("{:?}", c.output.result()))),
    }
}

fn spf_comment(spf: &SpfOutcome, ip: IpAddr) -> String {
    match spf.result {
        SpfResult::Pass => format!("{} designates {ip} as permitted sender", spf.domain),
        SpfResult::Fail | SpfResult::SoftFail => format!("{} does not designate {ip} as permitted sender", spf.domain),
        SpfResult::Neutral => format!("{ip} is neither permitted nor denied by {}", spf.domain),
        SpfResult::None => format!("{} publishes no SPF record", spf.domain),
        SpfResult::TempError => format!("DNS error looking up SPF of {}", spf.domain),
        SpfResult::PermError => format!("the SPF record of {} is invalid", spf.domain),
    }
}

/// A domain from the message for a header: ASCII, nothing that could end
/// the line or the field.
fn ascii(d: &str) -> String {
    idna::domain_to_ascii(d).unwrap_or_else(|_| d.chars().filter(|c| c.is_ascii_graphic() && *c != ';').collect())
}

/// The strongest action any outcome asked for, and why.
#[derive(Default)]
struct Decision {
    action: Action,
    reason: Option<String>,
    temporary: bool,
    /// The action came from SPF alone (dropped if DMARC passes).
    from_spf: bool,
}

impl Decision {
    /// Takes `action` if it is stronger than the current one (a permanent
    /// reject also beats a temporary one).
    fn raise(&mut self, action: Action, why: String) -> bool {
        let stronger = action > self.action || (self.temporary && action == Action::Reject);
        if stronger {
            self.action = action;
            self.reason = Some(why);
            self.temporary = false;
            self.from_spf = false;
        }
        stronger
    }

    /// As `raise`, for an SPF result alone, which a DMARC pass undoes.
    fn raise_spf(&mut self, action: Action, why: String) {
        if self.raise(action, why) {
            self.from_spf = true;
        }
    }

    /// A temporary refusal unless something already refuses for good.
    fn defer(&mut self, why: String) {
        if self.action < Action::Reject {
            self.action = Action::Reject;
            self.reason = Some(why);
            self.temporary = true;
            self.from_spf = false;
        }
    }

    fn clear_spf(&mut self) {
        if self.from_spf {
            *self = Decision::default();
        }
    }
}

#[cfg(test)]
#[path = "verdict_tests.rs"]
mod tests;
