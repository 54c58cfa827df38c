//! SPF (RFC 7208) as published: one record, its syntax (our strict parser,
//! `checks::spf::record`), the tree of includes and redirects with the
//! §4.6.4 counts (DNS-querying terms against 10, void lookups against 2,
//! MX names per `mx` against 10), the `all` qualifier, `ptr`, includes
//! that do not resolve, and the record's length. Every include is named
//! in the tree, past the limit too; recursion stops at a loop or at
//! [`MAX_DEPTH`]. May import: `checks::spf`, `advisor::lookup`.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;

use hickory_resolver::TokioResolver;
use serde::Serialize;

use super::Finding;
use super::lookup::{self, Answer};
use crate::checks::spf::macros::{MacroString, Vars};
use crate::checks::spf::record::{self, Mechanism, Qualifier, Record};

const CHECK: &str = "spf";
/// §4.6.4: DNS-querying terms per check_host().
pub const MAX_LOOKUPS: u32 = 10;
/// §4.6.4: void lookups before permerror.
pub const MAX_VOID: u32 = 2;
/// §4.6.4: MX names looked at per `mx` term.
const MAX_MX_NAMES: usize = 10;
/// Nesting followed; real trees are 3 or 4 deep.
const MAX_DEPTH: usize = 12;
/// Records fetched at most, whatever the fan-out.
const MAX_NODES: usize = 200;
/// Beyond this a record's DNS answer risks exceeding 512 octets over UDP
/// (§3.4).
const LONG_RECORD: usize = 450;

/// One record in the tree.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub domain: String,
    /// `record` (the domain checked), `include` or `redirect`.
    pub via: &'static str,
    pub record: Option<String>,
    /// This record's own DNS-querying terms.
    pub lookups: u32,
    /// This record's and everything below it.
    pub total_lookups: u32,
    pub void_lookups: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub children: Vec<Node>,
}

impl Node {
    fn new(domain: &str, via: &'static str) -> Node {
        Node {
            domain: domain.to_string(),
            via,
            record: None,
            lookups: 0,
            total_lookups: 0,
            void_lookups: 0,
            error: None,
            children: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SpfReport {
    pub records: Vec<String>,
    pub lookups: u32,
    pub void_lookups: u32,
    pub tree: Node,
    #[serde(skip)]
    pub findings: Vec<Finding>,
}

struct Walk<'a> {
    resolver: &'a TokioResolver,
    findings: Vec<Finding>,
    lookups: u32,
    voids: u32,
    void_names: Vec<String>,
    nodes: usize,
}

/// Whether a term's domain-spec depends on the sender or client: its
/// expansion differs between two made-up checks, so it cannot be looked
/// up here.
fn expand(spec: &MacroString, domain: &str) -> Option<String> {
    let one = Vars {
        sender: "postmaster@a.invalid",
        local_part: "postmaster",
        sender_domain: "a.invalid",
        domain,
        ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        helo: "a.invalid",
        receiver: "check.invalid",
        validated_name: None,
        now: 1,
    };
    let two = Vars {
        sender: "abuse@b.invalid",
        local_part: "abuse",
        sender_domain: "b.invalid",
        ip: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
        helo: "b.invalid",
        now: 2,
        ..one.clone()
    };
    let (a, b) = (spec.expand(&one), spec.expand(&two));
    (a == b).then(|| a.trim_end_matches('.').to_ascii_lowercase())
}

pub async fn check(resolver: &TokioResolver, domain: &str) -> SpfReport {
    let mut walk = Walk { resolver, findings: Vec::new(), lookups: 0, voids: 0, void_names: Vec::new(), nodes: 0 };
    let root_records = match lookup::txt(resolver, domain).await {
        Answer::Found(all) => all.into_iter().filter(|t| record::is_spf(t.as_bytes())).collect(),
        _ => Vec::new(),
    };
    let tree = walk.record(domain.to_string(), "record", 0, Vec::new()).await;
    let mut findings = std::mem::take(&mut walk.findings);
    if tree.record.is_some() {
        if walk.lookups > MAX_LOOKUPS {
            findings.push(Finding::error(
                CHECK,
                "spf-too-many-lookups",
                format!("{} DNS-querying terms (limit {MAX_LOOKUPS}): receivers return permerror (RFC 7208 §4.6.4)", walk.lookups),
                "replace includes you do not need, or flatten some into ip4:/ip6: terms, to stay within 10",
            ));
        } else {
            findings.push(Finding::ok(CHECK, "spf-lookups", format!("{} of {MAX_LOOKUPS} DNS-querying terms", walk.lookups)));
        }
        let names = walk.void_names.join(", ");
        if walk.voids > MAX_VOID {
            findings.push(Finding::error(
                CHECK,
                "spf-too-many-void-lookups",
                format!("{} void lookups (limit {MAX_VOID}): {names}; receivers return permerror (RFC 7208 §4.6.4)", walk.voids),
                "remove the terms naming domains that do not exist or have no records",
            ));
        } else if walk.voids > 0 {
            findings.push(Finding::warning(
                CHECK,
                "spf-void-lookup",
                format!("{} void lookup(s) (limit {MAX_VOID}): {names}", walk.voids),
                "remove the terms naming domains that do not exist or have no records",
            ));
        } else {
            findings.push(Finding::ok(CHECK, "spf-void-lookups", "no void lookups"));
        }
    }
    SpfReport { records: root_records, lookups: walk.lookups, void_lookups: walk.voids, tree, findings }
}

impl Walk<'_> {
    fn void(&mut self, node: &mut Node, name: &str) {
        self.voids += 1;
        node.void_lookups += 1;
        self.void_names.push(name.to_string());
    }

    /// Fetches and judges `domain`'s record, then walks its includes.
    /// `path` holds the domains above, to catch loops.
    fn record<'s>(
        &'s mut self,
        domain: String,
        via: &'static str,
        depth: usize,
        path: Vec<String>,
    ) -> Pin<Box<dyn Future<Output = Node> + Send + 's>> {
        Box::pin(async move {
            let mut node = Node::new(&domain, via);
            self.nodes += 1;
            let top = via == "record";
            let answer = lookup::txt(self.resolver, &domain).await;
            let records: Vec<String> = answer.records().iter().filter(|t| record::is_spf(t.as_bytes())).cloned().collect();
            if let Answer::Failed(e) = &answer {
                node.error = Some(e.clone());
                self.findings.push(Finding::error(
                    CHECK,
                    "spf-lookup-failed",
                    e.clone(),
                    format!("make the name servers of {domain} answer TXT queries"),
                ));
                return node;
            }
            if records.is_empty() {
                if top {
                    node.error = Some("no SPF record".into());
                    self.findings.push(Finding::error(
                        CHECK,
                        "spf-missing",
                        format!("{domain} publishes no SPF record: anyone can use it in MAIL FROM"),
                        format!("publish \"{domain}. IN TXT \\\"v=spf1 mx -all\\\"\" listing the hosts that send its mail (or \"v=spf1 -all\" if none)"),
                    ));
                } else {
                    node.error = Some("no SPF record".into());
                    if answer.is_void() {
                        self.void(&mut node, &domain);
                    }
                    self.findings.push(Finding::error(
                        CHECK,
                        "spf-include-not-found",
                        format!("{via}:{domain} has no SPF record: receivers return permerror (RFC 7208 §5.2)"),
                        format!("remove {via}:{domain} or correct the name"),
                    ));
                }
                return node;
            }
            if records.len() > 1 {
                node.error = Some(format!("{} SPF records", records.len()));
                self.findings.push(Finding::error(
                    CHECK,
                    "spf-multiple-records",
                    format!("{domain} publishes {} SPF records: receivers return permerror (RFC 7208 §4.5)", records.len()),
                    format!("merge them into one \"v=spf1 ...\" record at {domain}"),
                ));
                return node;
            }
            let text = records[0].clone();
            node.record = Some(text.clone());
            let parsed = match Record::parse(text.as_bytes()) {
                Ok(r) => r,
                Err(e) => {
                    node.error = Some(e.to_string());
                    self.findings.push(Finding::error(
                        CHECK,
                        "spf-syntax",
                        format!("{domain}: {e}, in \"{text}\""),
                        "correct the record: terms are separated by single spaces, mechanisms are all, include, a, mx, ptr, ip4, ip6, exists",
                    ));
                    return node;
                }
            };
            if top {
                self.findings.push(Finding::ok(CHECK, "spf-record", format!("v=spf1 record: \"{text}\"")));
                if text.len() > LONG_RECORD {
                    self.findings.push(Finding::warning(
                        CHECK,
                        "spf-record-too-long",
                        format!("the record is {} octets long: its DNS answer may not fit 512 octets (RFC 7208 §3.4)", text.len()),
                        "shorten it, for instance by moving addresses into an include",
                    ));
                }
            }
            self.terms(&mut node, &domain, &parsed, top || via == "redirect", depth, &path).await;
            node
        })
    }

    async fn terms(&mut self, node: &mut Node, domain: &str, parsed: &Record, policy: bool, depth: usize, path: &[String]) {
        let mut path = path.to_vec();
        path.push(domain.to_string());
        let mut ptr_seen = false;
        let mut has_all = false;
        for d in &parsed.directives {
            if d.mechanism.queries_dns() {
                node.lookups += 1;
                self.lookups += 1;
            }
            match &d.mechanism {
                Mechanism::All => {
                    has_all = true;
                    self.judge_all(domain, d.qualifier, policy);
                }
                Mechanism::Include(spec) => match expand(spec, domain) {
                    Some(target) => {
                        let child = self.follow(target, "include", depth, &path).await;
                        node.children.push(child);
                    }
                    None => node.children.push(Node {
                        error: Some("depends on the sender (macro); not followed".into()),
                        ..Node::new("(macro)", "include")
                    }),
                },
                Mechanism::A(spec, _) => {
                    let target = spec.as_ref().map_or(Some(domain.to_string()), |s| expand(s, domain));
                    if let Some(t) = target {
                        if lookup::addresses(self.resolver, &t).await.is_void() {
                            self.void(node, &t);
                        }
                    }
                }
                Mechanism::Exists(spec) => {
                    if let Some(t) = expand(spec, domain) {
                        if lookup::addresses(self.resolver, &t).await.is_void() {
                            self.void(node, &t);
                        }
                    }
                }
                Mechanism::Mx(spec, _) => {
                    let target = spec.as_ref().map_or(Some(domain.to_string()), |s| expand(s, domain));
                    if let Some(t) = target {
                        let answer = lookup::mx(self.resolver, &t).await;
                        if answer.is_void() {
                            self.void(node, &t);
                        } else if answer.records().len() > MAX_MX_NAMES {
                            self.findings.push(Finding::error(
                                CHECK,
                                "spf-mx-too-many-names",
                                format!("mx:{t} has {} MX names (limit {MAX_MX_NAMES}, RFC 7208 §4.6.4)", answer.records().len()),
                                format!("replace mx:{t} by ip4:/ip6: terms for its mail hosts"),
                            ));
                        }
                    }
                }
                Mechanism::Ptr(_) => {
                    if !ptr_seen {
                        ptr_seen = true;
                        self.findings.push(Finding::warning(
                            CHECK,
                            "spf-ptr",
                            format!("{domain} uses the ptr mechanism: slow, unreliable, and \"SHOULD NOT be used\" (RFC 7208 §5.5)"),
                            "replace ptr by ip4:/ip6: terms for the hosts it stands for",
                        ));
                    }
                }
                Mechanism::Ip4(..) | Mechanism::Ip6(..) => {}
            }
        }
        // §6.1: redirect is ignored when the record has an `all`.
        match (&parsed.redirect, has_all) {
            (Some(spec), false) => {
                node.lookups += 1;
                self.lookups += 1;
                match expand(spec, domain) {
                    Some(target) => {
                        let child = self.follow(target, "redirect", depth, &path).await;
                        node.children.push(child);
                    }
                    None => node.children.push(Node {
                        error: Some("depends on the sender (macro); not followed".into()),
                        ..Node::new("(macro)", "redirect")
                    }),
                }
            }
            (None, false) if policy => self.findings.push(Finding::warning(
                CHECK,
                "spf-no-all",
                format!("{domain}'s record ends without \"all\" or redirect: unlisted senders get neutral"),
                "end the record with -all",
            )),
            _ => {}
        }
        node.total_lookups = node.lookups + node.children.iter().map(|c| c.total_lookups).sum::<u32>();
        node.void_lookups += node.children.iter().map(|c| c.void_lookups).sum::<u32>();
    }

    async fn follow(&mut self, target: String, via: &'static str, depth: usize, path: &[String]) -> Node {
        if path.iter().any(|p| *p == target) {
            self.findings.push(Finding::error(
                CHECK,
                "spf-include-loop",
                format!("{via}:{target} loops back to a record above it"),
                format!("remove {via}:{target} from the record that names it"),
            ));
            return Node { error: Some("loop: not followed".into()), ..Node::new(&target, via) };
        }
        if depth + 1 >= MAX_DEPTH || self.nodes >= MAX_NODES {
            return Node { error: Some("too deep: not followed".into()), ..Node::new(&target, via) };
        }
        self.record(target, via, depth + 1, path.to_vec()).await
    }

    fn judge_all(&mut self, domain: &str, q: Qualifier, policy: bool) {
        match (q, policy) {
            (Qualifier::Pass, _) => self.findings.push(Finding::error(
                CHECK,
                "spf-pass-all",
                format!("{domain} ends in +all: every host on the Internet passes SPF for it"),
                "end the record with -all (or ~all while you collect reports)",
            )),
            (Qualifier::Neutral, true) => self.findings.push(Finding::warning(
                CHECK,
                "spf-neutral-all",
                format!("{domain} ends in ?all: unlisted senders get neutral, as if there were no record"),
                "end the record with -all once every sender is listed",
            )),
            (Qualifier::SoftFail, true) => self.findings.push(Finding::warning(
                CHECK,
                "spf-softfail-all",
                format!("{domain} ends in ~all: unlisted senders only softfail"),
                "end the record with -all once DMARC reports show every legitimate sender is listed",
            )),
            (Qualifier::Fail, true) => self.findings.push(Finding::ok(CHECK, "spf-all", format!("{domain} ends in -all"))),
            _ => {}
        }
    }
}
