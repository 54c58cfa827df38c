//! Look-alike sender domains: SPF and DKIM prove who sent a message, not
//! that the domain is the one the reader thinks it is. A sender domain
//! resembles a protected domain when one of these rules holds, and the
//! finding names the rule:
//!
//! - `confusable`: the UTS #39 skeletons are equal, after IDNA decoding of
//!   `xn--` labels (`exаmple.test` with a Cyrillic а);
//! - `edit-distance`: the registrable names without their TLD are within a
//!   small Damerau-Levenshtein distance, or equal under another TLD;
//! - `embedded`: the protected name appears as labels, or hyphen-joined,
//!   inside a foreign domain (`example.test.evil.test`,
//!   `example-test.evil.test`);
//! - `display-name`: the `From:` display name names a protected domain or
//!   address while the address is foreign.
//!
//! The protected domain itself and its subdomains are never look-alikes.
//!
//! May import: `mailgate-core`. Pure: no I/O.

use std::fmt;

use unicode_security::skeleton;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    Confusable,
    EditDistance,
    Embedded,
    DisplayName,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::Confusable => "confusable",
            Rule::EditDistance => "edit-distance",
            Rule::Embedded => "embedded",
            Rule::DisplayName => "display-name",
        })
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
}

/// The domains to protect: our `[[domain]]`s plus partner and brand names.
pub struct Lookalikes {
    protected: Vec<Protected>,
}

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
                Protected { name, label, tld, skeleton }
            })
            .collect();
        Lookalikes { protected }
    }

    fn is_ours(&self, domain: &str) -> bool {
        self.protected.iter().any(|p| domain == p.name || domain.ends_with(&format!(".{}", p.name)))
    }

    /// Checks a sender domain (From:, MAIL FROM or DKIM `d=`).
    pub fn check_domain(&self, domain: &str) -> Option<Finding> {
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
        for p in &self.protected {
            let labels: Vec<&str> = candidate.split('.').collect();
            let p_labels: Vec<&str> = p.name.split('.').collect();
            let as_labels = labels.windows(p_labels.len()).any(|w| w == p_labels.as_slice());
            let hyphenated = p.name.replace('.', "-");
            let as_hyphens = labels
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

    /// A display name that names a protected domain or address, on a
    /// message whose address is foreign ("PayPal <x@evil.test>").
    pub fn check_display_name(&self, display: &str, address_domain: &str) -> Option<Finding> {
        let domain = unicode_form(address_domain);
        if self.is_ours(&domain) {
            return None;
        }
        let text = skel(&display.to_lowercase());
        for p in &self.protected {
            // The full domain anywhere in the name, or its registrable label
            // as a word ("Example Support" for example.test).
            let words: Vec<&str> = text.split(|c: char| !c.is_alphanumeric() && c != '-').filter(|w| !w.is_empty()).collect();
            if text.contains(&p.skeleton) || words.iter().any(|w| *w == skel(&p.label)) {
                return Some(Finding { domain: address_domain.to_lowercase(), resembles: p.name.clone(), rule: Rule::DisplayName });
            }
        }
        None
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
    fn distances() {
        assert_eq!(distance("example", "exmaple"), 1);
        assert_eq!(distance("example", "exampel"), 1);
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
