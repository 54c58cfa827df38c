//! Look-alike sender domains: SPF and DKIM prove who sent a message, not
//! that the domain is the one the reader thinks it is. A sender domain
//! resembles a protected domain when one of these rules holds, and the
//! finding names the rule:
//!
//! - `confusable`: the UTS #39 skeletons are equal, after IDNA decoding of
//!   `xn--` labels (`exаmple.test` with a Cyrillic а);
//! - `substitution`: equal once digits and letter pairs that pass for
//!   letters are folded (`0`→o, `1`/`i`→l, `3`→e, `4`→a, `5`→s, `rn`→m,
//!   `vv`→w ...), for names of any length: `b4nk.example` is one edit from
//!   `bank.example`, below the edit-distance floor of a 4-letter name,
//!   and still reads as it;
//! - `edit-distance`: the registrable names without their TLD are within a
//!   small Damerau-Levenshtein distance, or equal under another TLD;
//! - `embedded`: the protected name appears as labels, or hyphen-joined,
//!   inside a foreign domain (`example.test.evil.test`,
//!   `example-test.evil.test`);
//! - `display-name`: the `From:` display name names a protected domain or
//!   address while the address is foreign;
//! - `local-part`: the local part of a foreign address carries a protected
//!   domain (`"ceo@bank.example"@evil.test`, `ceo%bank.example@evil.test`,
//!   `bank.example!ceo@evil.test`), which a reader, or a next hop honouring
//!   `%` and `!` routing, takes for the address.
//!
//! The protected domain itself and its subdomains are never look-alikes.
//! Every finding says which identity of the message carried the domain
//! ([`Identity`]).
//!
//! May import: `mailgate-core`. Pure: no I/O.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use unicode_security::skeleton;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    Confusable,
    Substitution,
    EditDistance,
    Embedded,
    DisplayName,
    LocalPart,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::Confusable => "confusable",
            Rule::Substitution => "substitution",
            Rule::EditDistance => "edit-distance",
            Rule::Embedded => "embedded",
            Rule::DisplayName => "display-name",
            Rule::LocalPart => "local-part",
        })
    }
}

/// Where in the message a look-alike domain was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The `From:` address or display name (the author DMARC judges).
    From,
    /// The SMTP envelope sender (MAIL FROM).
    MailFrom,
    /// The HELO/EHLO name.
    Helo,
    /// A `Reply-To:` address or display name.
    ReplyTo,
    /// A `Sender:` address or display name.
    Sender,
    /// A DKIM signature's `d=` domain.
    Dkim,
}

impl Identity {
    /// The word in `verify --json` (`lookalike[].identity`) and in the
    /// `X-Mailgate-Lookalike` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Identity::From => "from",
            Identity::MailFrom => "mail_from",
            Identity::Helo => "helo",
            Identity::ReplyTo => "reply_to",
            Identity::Sender => "sender",
            Identity::Dkim => "dkim",
        }
    }

    /// The RFC 8601 `ptype.property` that names this identity in
    /// `Authentication-Results`.
    pub fn property(self) -> &'static str {
        match self {
            Identity::From => "header.from",
            Identity::MailFrom => "smtp.mailfrom",
            Identity::Helo => "smtp.helo",
            Identity::ReplyTo => "header.reply-to",
            Identity::Sender => "header.sender",
            Identity::Dkim => "header.d",
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub domain: String,
    pub resembles: String,
    pub rule: Rule,
}

struct Protected {
    name: String,
    /// The registrable name without its TLD (`example` for example.test).
    label: String,
    tld: String,
    skeleton: String,
    /// [`fold`] of `label` and of `name`.
    folded_label: String,
    folded_name: String,
}

/// The domains to protect: our `[[domain]]`s plus partner and brand names.
pub struct Lookalikes {
    protected: Vec<Protected>,
    /// [`Lookalikes::check_domain`]'s answers by domain as given: the same
    /// few sender domains and HELO names come back message after message,
    /// and working one out (IDNA, skeletons, edit distances) costs
    /// microseconds. Emptied when full, so random names cannot grow it.
    memo: Mutex<HashMap<String, Option<Finding>>>,
}

/// Most answers [`Lookalikes`] remembers.
const MEMO_MAX: usize = 4096;

/// Lower-cased Unicode form of a domain, `xn--` labels decoded.
fn unicode_form(domain: &str) -> String {
    let domain = domain.trim_end_matches('.').to_lowercase();
    let (decoded, result) = idna::domain_to_unicode(&domain);
    if result.is_ok() { decoded } else { domain }
}

/// (registrable label without TLD, TLD). Without a public suffix list, the
/// registrable domain is taken as the last two labels.
fn split(domain: &str) -> (String, String) {
    let labels: Vec<&str> = domain.split('.').collect();
    match labels.as_slice() {
        [.., sld, tld] => (sld.to_string(), tld.to_string()),
        [one] => (one.to_string(), String::new()),
        [] => (String::new(), String::new()),
    }
}

fn skel(s: &str) -> String {
    skeleton(s).collect()
}

/// Folds the digit, symbol and letter-pair substitutions readers take for
/// letters into one form, so that `b4nk` and `bank` compare equal: `rn`→m, `vv`→w, `cl`→d, then `0`→o, `1`/`i`/`|`
/// →l, `3`→e, `4`→a, `5`/`$`→s, `7`→t, `8`→b, `9`→g, `@`→a. `i` and `l`
/// fold together because `1` stands for both. UTS #39 skeletons do not
/// cover these: they map only characters drawn alike, not "leet" spellings.
pub fn fold(s: &str) -> String {
    let s = s.to_lowercase().replace("rn", "m").replace("vv", "w").replace("cl", "d");
    s.chars()
        .map(|c| match c {
            '0' => 'o',
            '1' | 'i' | '|' => 'l',
            '3' => 'e',
            '4' | '@' => 'a',
            '5' | '$' => 's',
            '7' => 't',
            '8' => 'b',
            '9' => 'g',
            c => c,
        })
        .collect()
}

/// Optimal string alignment distance (Damerau-Levenshtein with adjacent
/// transpositions), on characters.
pub fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// How far a name may be from a protected one and still be flagged: short
/// names differ by chance too often.
fn max_distance(len: usize) -> usize {
    match len {
        0..=4 => 0,
        5..=8 => 1,
        _ => 2,
    }
}

impl Lookalikes {
    pub fn new<'a>(domains: impl IntoIterator<Item = &'a str>) -> Self {
        let protected = domains
            .into_iter()
            .map(|d| {
                let name = unicode_form(d);
                let (label, tld) = split(&name);
                let skeleton = skel(&name);
                let (folded_label, folded_name) = (fold(&label), fold(&name));
                Protected { name, label, tld, skeleton, folded_label, folded_name }
            })
            .collect();
        Lookalikes { protected, memo: Mutex::default() }
    }

    fn is_ours(&self, domain: &str) -> bool {
        self.protected.iter().any(|p| domain == p.name || domain.ends_with(&format!(".{}", p.name)))
    }

    /// Checks a sender domain (From:, MAIL FROM or DKIM `d=`).
    pub fn check_domain(&self, domain: &str) -> Option<Finding> {
        if let Some(known) = self.memo.lock().ok().and_then(|m| m.get(domain).cloned()) {
            return known;
        }
        let found = self.work_out(domain);
        if let Ok(mut memo) = self.memo.lock() {
            if memo.len() >= MEMO_MAX {
                memo.clear();
            }
            memo.insert(domain.to_owned(), found.clone());
        }
        found
    }

    fn work_out(&self, domain: &str) -> Option<Finding> {
        let candidate = unicode_form(domain);
        if candidate.is_empty() || self.is_ours(&candidate) {
            return None;
        }
        let finding = |p: &Protected, rule| Some(Finding { domain: domain.to_lowercase(), resembles: p.name.clone(), rule });
        let (label, tld) = split(&candidate);
        let cand_skel = skel(&candidate);
        for p in &self.protected {
            if cand_skel == p.skeleton || skel(&label) == skel(&p.label) && tld == p.tld {
                return finding(p, Rule::Confusable);
            }
        }
        // Substitutions: under the same or another TLD, whatever the length.
        let (folded_label, folded_name) = (fold(&label), fold(&candidate));
        for p in &self.protected {
            let same_label = label != p.label && !folded_label.is_empty() && folded_label == p.folded_label;
            if folded_name == p.folded_name || same_label {
                return finding(p, Rule::Substitution);
            }
        }
        // Embedded, also in substituted spellings (`b4nk-example.evil.test`).
        let folded_labels: Vec<String> = candidate.split('.').map(fold).collect();
        for p in &self.protected {
            let p_labels: Vec<String> = p.name.split('.').map(fold).collect();
            let as_labels = folded_labels.windows(p_labels.len()).any(|w| w == p_labels.as_slice());
            let hyphenated = p_labels.join("-");
            let as_hyphens = folded_labels
                .iter()
                .any(|l| *l == hyphenated || l.starts_with(&format!("{hyphenated}-")) || l.ends_with(&format!("-{hyphenated}")));
            if as_labels || as_hyphens {
                return finding(p, Rule::Embedded);
            }
        }
        for p in &self.protected {
            if label == p.label && tld != p.tld {
                return finding(p, Rule::EditDistance);
            }
            let limit = max_distance(p.label.chars().count());
            let d = distance(&label, &p.label);
            if limit > 0 && d > 0 && d <= limit {
                return finding(p, Rule::EditDistance);
            }
        }
        None
    }

    /// A local part that carries a protected domain (or one that folds or
    /// skeletons to it): the pieces between `@`, `%` and `!` (quoted
    /// `@`, the percent hack and UUCP bang paths) and the whole local part
    /// (`bank.example@evil.test`). Only dotted pieces count, and only an
    /// exact (folded) match or a subdomain of one, so that
    /// `john.smith@...` stays clean. `address_domain` is the domain after
    /// the last `@`; when it is protected itself there is no finding.
    pub fn check_local_part(&self, local: &str, address_domain: &str) -> Option<Finding> {
        let domain = unicode_form(address_domain);
        if domain.is_empty() || self.is_ours(&domain) {
            return None;
        }
        let local = local.trim_matches('"');
        let pieces = local.split(['@', '%', '!']).chain(std::iter::once(local));
        for piece in pieces {
            let piece = unicode_form(piece.trim_matches(|c: char| c == '"' || c == '\\' || c.is_whitespace()));
            if !piece.contains('.') {
                continue;
            }
            let (folded, skeleton) = (fold(&piece), skel(&piece));
            for p in &self.protected {
                let under = |whole: &str, name: &str| whole == name || whole.ends_with(&format!(".{name}"));
                if under(&piece, &p.name) || under(&folded, &p.folded_name) || under(&skeleton, &p.skeleton) {
                    return Some(Finding { domain: address_domain.to_lowercase(), resembles: p.name.clone(), rule: Rule::LocalPart });
                }
            }
        }
        None
    }

    /// A display name that names a protected domain or address, on a
    /// message whose address is foreign ("PayPal <x@evil.test>").
    pub fn check_display_name(&self, display: &str, address_domain: &str) -> Option<Finding> {
        let domain = unicode_form(address_domain);
        if self.is_ours(&domain) {
            return None;
        }
        let text = skel(&display.to_lowercase());
        let finding =
            |p: &Protected| Some(Finding { domain: address_domain.to_lowercase(), resembles: p.name.clone(), rule: Rule::DisplayName });
        // The full domain anywhere in the name first, so that
        // "ceo@bank.example" names bank.example and not example.test.
        if let Some(p) = self.protected.iter().find(|p| text.contains(&p.skeleton)) {
            return finding(p);
        }
        // Then its registrable label as a word ("Example Support" for
        // example.test).
        let words: Vec<&str> = text.split(|c: char| !c.is_alphanumeric() && c != '-').filter(|w| !w.is_empty()).collect();
        self.protected.iter().find(|p| words.iter().any(|w| *w == skel(&p.label))).and_then(finding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l() -> Lookalikes {
        Lookalikes::new(["example.test", "paypal.com", "bigbank.example"])
    }

    fn rule(d: &str) -> Option<Rule> {
        l().check_domain(d).map(|f| f.rule)
    }

    #[test]
    fn remembered_answers_are_the_worked_out_ones_and_the_memo_stays_bounded() {
        let l = l();
        for d in ["PayPa1.com", "paypa1.com", "b1gbank.example", "unrelated.org", "EXAMPLE.TEST."] {
            let first = l.check_domain(d);
            assert_eq!(first, l.work_out(d), "{d}");
            assert_eq!(l.check_domain(d), first, "{d}: a remembered answer");
        }
        assert_eq!(l.check_domain("PayPa1.com").map(|f| f.domain), Some("paypa1.com".into()));
        for i in 0..MEMO_MAX + 10 {
            l.check_domain(&format!("n{i}.invalid"));
        }
        assert!(l.memo.lock().unwrap().len() <= MEMO_MAX);
        assert_eq!(l.check_domain("paypa1.com").map(|f| f.rule), Some(Rule::Confusable), "still right after emptying");
    }

    #[test]
    fn ours_and_subdomains_are_never_lookalikes() {
        assert_eq!(rule("example.test"), None);
        assert_eq!(rule("mail.example.test"), None);
        assert_eq!(rule("EXAMPLE.TEST."), None);
        assert_eq!(rule("unrelated.org"), None);
    }

    #[test]
    fn confusables_including_punycode() {
        // Cyrillic а (U+0430) in place of Latin a.
        assert_eq!(rule("exаmple.test"), Some(Rule::Confusable));
        assert_eq!(rule("xn--exmple-4nf.test"), Some(Rule::Confusable));
        assert_eq!(rule("paypa1.com"), Some(Rule::Confusable), "digit one for l is a UTS #39 confusable");
    }

    #[test]
    fn edit_distance_and_tld_swap() {
        assert_eq!(rule("exmaple.test"), Some(Rule::EditDistance), "swapped letters");
        assert_eq!(rule("examples.test"), Some(Rule::EditDistance), "inserted letter");
        assert_eq!(rule("example.com"), Some(Rule::EditDistance), "other TLD");
        assert_eq!(rule("bigbnk.example"), Some(Rule::EditDistance));
        assert_eq!(rule("sample.test"), None, "two edits away from a 7-letter name");
    }

    #[test]
    fn embedded_names() {
        assert_eq!(rule("example.test.evil.test"), Some(Rule::Embedded));
        assert_eq!(rule("example-test.evil.test"), Some(Rule::Embedded));
        assert_eq!(rule("login-paypal-com.evil.test"), Some(Rule::Embedded));
    }

    #[test]
    fn display_names() {
        let l = l();
        assert_eq!(l.check_display_name("PayPal Service", "evil.test").map(|f| f.rule), Some(Rule::DisplayName));
        assert_eq!(l.check_display_name("ceo@example.test", "gmail.test").map(|f| f.rule), Some(Rule::DisplayName));
        assert_eq!(l.check_display_name("PayPal Service", "paypal.com"), None);
        assert_eq!(l.check_display_name("Alice", "evil.test"), None);
    }

    #[test]
    fn substitutions_for_names_of_any_length() {
        let l = Lookalikes::new(["bank.example", "mail.example", "paypal.com", "warehouse.example"]);
        let rule = |d: &str| l.check_domain(d).map(|f| (f.rule, f.resembles));
        for d in [
            "b4nk.example",
            "B4NK.EXAMPLE.",
            "ba5k.example".replace('5', "n").as_str(),
            "m4il.example",
            "ma1l.example",
            "rnail.example",
            "p4ypal.com",
            "paypa1.net",
            "vvarehouse.example",
            "w4reh0u5e.example",
            "b4nk.com",
        ] {
            if d == "bank.example" {
                continue;
            }
            let got = rule(d);
            assert!(
                matches!(got, Some((Rule::Substitution | Rule::Confusable, _))),
                "{d} must be a substitution/confusable look-alike: {got:?}"
            );
        }
        assert_eq!(
            rule("b4nk.example"),
            Some((Rule::Substitution, "bank.example".into())),
            "a 4-letter name, below the edit-distance floor"
        );
        assert_eq!(rule("rnail.example").map(|f| f.1), Some("mail.example".into()));
        assert_eq!(rule("b4nk-example.evil.test").map(|f| f.0), Some(Rule::Embedded));
        assert_eq!(rule("bonk.example"), None, "a real other word is not a substitution");
        assert_eq!(rule("sank.example"), None);
        assert_eq!(rule("mail.example."), None, "ours, written absolutely");
        assert_eq!(fold("b4nk"), "bank");
        assert_eq!(fold("rn1vv"), "mlw");
    }

    #[test]
    fn protected_domain_in_the_local_part() {
        let l = Lookalikes::new(["bank.example"]);
        let rule = |local: &str, domain: &str| l.check_local_part(local, domain).map(|f| (f.rule, f.resembles, f.domain));
        for local in [
            "\"ceo@bank.example\"",
            "ceo@bank.example",
            "ceo%bank.example",
            "bank.example!ceo",
            "ceo%BANK.EXAMPLE",
            "ceo%mail.bank.example",
            "bank.example",
            "ceo%b4nk.example",
            "x!bank.example!ceo",
        ] {
            assert_eq!(
                rule(local, "evil.example"),
                Some((Rule::LocalPart, "bank.example".into(), "evil.example".into())),
                "{local}@evil.example"
            );
        }
        assert_eq!(rule("ceo%bank.example", "bank.example"), None, "the protected domain's own mail");
        assert_eq!(rule("john.smith", "evil.example"), None);
        assert_eq!(rule("bank", "evil.example"), None, "a bare word is not a domain");
        assert_eq!(rule("ceo%other.example", "evil.example"), None);
    }

    #[test]
    fn identities_have_names_and_header_properties() {
        let all = [Identity::From, Identity::MailFrom, Identity::Helo, Identity::ReplyTo, Identity::Sender, Identity::Dkim];
        let names: Vec<&str> = all.iter().map(|i| i.as_str()).collect();
        assert_eq!(names, ["from", "mail_from", "helo", "reply_to", "sender", "dkim"]);
        assert_eq!(Identity::MailFrom.property(), "smtp.mailfrom");
        assert_eq!(Identity::ReplyTo.property(), "header.reply-to");
    }

    #[test]
    fn distances() {
        assert_eq!(distance("example", "exmaple"), 1);
        assert_eq!(distance("example", "exampel"), 1);
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
