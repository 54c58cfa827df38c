//! The shape of an ARC chain, checked before any cryptography (RFC 8617
//! §4.1, §5.2 steps 1–3, and RFC 6376 §3.2 tag-list syntax): what
//! mail-auth 0.13 lets through or reads leniently (duplicate tags, tag
//! names in the wrong case, extra semicolons, a missing set, cv= out of
//! place, bad t= or d= values).

use std::collections::BTreeMap;

/// The most ARC sets a message may carry (RFC 8617 §4.2.1).
pub(super) const MAX_SETS: u32 = 50;

/// Which of the three ARC header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Field {
    Results,
    Signature,
    Seal,
}

impl Field {
    pub(super) fn of(name: &[u8]) -> Option<Field> {
        let name = std::str::from_utf8(name).ok()?.trim();
        if name.eq_ignore_ascii_case("ARC-Seal") {
            Some(Field::Seal)
        } else if name.eq_ignore_ascii_case("ARC-Message-Signature") {
            Some(Field::Signature)
        } else if name.eq_ignore_ascii_case("ARC-Authentication-Results") {
            Some(Field::Results)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Field::Seal => "ARC-Seal",
            Field::Signature => "ARC-Message-Signature",
            Field::Results => "ARC-Authentication-Results",
        }
    }
}

/// Checks every ARC header field of a message. `Ok(false)`: there is
/// none. `Err`: the chain is broken, with why (the result is "fail").
pub(super) fn check(headers: &[(&[u8], &[u8])]) -> Result<bool, String> {
    // instance → field → how many
    let mut seen: BTreeMap<u32, BTreeMap<Field, u32>> = BTreeMap::new();
    let mut cvs: BTreeMap<u32, String> = BTreeMap::new();
    let mut any = false;
    for (name, value) in headers {
        let Some(field) = Field::of(name) else { continue };
        any = true;
        let value = std::str::from_utf8(value).map_err(|_| format!("{} is not UTF-8", field.name()))?;
        let i = match field {
            Field::Results => results_instance(value)?,
            Field::Signature => signature(value)?,
            Field::Seal => {
                let (i, cv) = seal(value)?;
                cvs.insert(i, cv);
                i
            }
        };
        *seen.entry(i).or_default().entry(field).or_default() += 1;
    }
    if !any {
        return Ok(false);
    }
    let n = seen.keys().next_back().copied().unwrap_or(0);
    // Step 2: a chain that already failed stays failed.
    if cvs.get(&n).map(String::as_str) == Some("fail") {
        return Err(format!("ARC-Seal i={n} says cv=fail"));
    }
    // Step 3: exactly one field of each kind per instance, 1..=N.
    for i in 1..=n {
        let fields = seen.get(&i);
        for field in [Field::Seal, Field::Signature, Field::Results] {
            match fields.and_then(|f| f.get(&field)).copied().unwrap_or(0) {
                1 => {}
                0 => return Err(format!("set i={i} has no {}", field.name())),
                k => return Err(format!("set i={i} has {k} {} fields", field.name())),
            }
        }
        let cv = cvs.get(&i).map(String::as_str).unwrap_or("");
        let want = if i == 1 { "none" } else { "pass" };
        if cv != want {
            return Err(format!("ARC-Seal i={i} has cv={cv}, expected cv={want}"));
        }
    }
    Ok(true)
}

/// `d=` of each ARC-Seal that has a usable `i=`, lowest instance first,
/// lower case; for reporting, so it never fails.
pub(super) fn sealers(headers: &[(&[u8], &[u8])]) -> Vec<String> {
    let mut found: Vec<(u32, String)> = Vec::new();
    for (name, value) in headers {
        if Field::of(name) != Some(Field::Seal) {
            continue;
        }
        let Some(tags) = tags_of(value) else { continue };
        let i = tags.get("i").and_then(|v| instance(v).ok());
        if let (Some(i), Some(d)) = (i, tags.get("d")) {
            found.push((i, d.to_ascii_lowercase()));
        }
    }
    found.sort_by_key(|(i, _)| *i);
    found.into_iter().map(|(_, d)| d).collect()
}

/// Whether an ARC-Message-Signature value lacks `c=`.
pub(super) fn no_canonicalization(value: &[u8]) -> bool {
    tags_of(value).is_some_and(|tags| !tags.contains_key("c"))
}

/// Whether the highest-numbered readable ARC-Seal says cv=fail: the chain
/// failed at an earlier hop and stays failed (RFC 8617 §5.2 step 2).
pub(super) fn ends_failed(headers: &[(&[u8], &[u8])]) -> bool {
    let mut last: Option<(u32, bool)> = None;
    for (name, value) in headers {
        if Field::of(name) != Some(Field::Seal) {
            continue;
        }
        let Some(tags) = tags_of(value) else { continue };
        let Some(i) = tags.get("i").and_then(|v| instance(v).ok()) else { continue };
        let failed = tags.get("cv").is_some_and(|cv| cv.eq_ignore_ascii_case("fail"));
        if last.is_none_or(|(j, f)| i > j || (i == j && !f)) {
            last = Some((i, failed));
        }
    }
    last.is_some_and(|(_, failed)| failed)
}

/// The highest instance any ARC header field claims (0 if none does); a
/// new set takes the next one.
pub(super) fn highest_instance(headers: &[(&[u8], &[u8])]) -> u32 {
    let mut highest = 0;
    for (name, value) in headers {
        let Some(field) = Field::of(name) else { continue };
        let Ok(value) = std::str::from_utf8(value) else { continue };
        let i = match field {
            Field::Results => results_instance(value).ok(),
            _ => tag_list(value).ok().and_then(|t| t.get("i").and_then(|v| instance(v).ok())),
        };
        highest = highest.max(i.unwrap_or(0));
    }
    highest
}

/// An AMS: the tags RFC 8617 §4.1.2 requires, with valid values.
fn signature(value: &str) -> Result<u32, String> {
    let tags = tag_list(value).map_err(|e| format!("ARC-Message-Signature: {e}"))?;
    let bad = |what: &str| format!("ARC-Message-Signature: {what}");
    let i = instance(required(&tags, "i").map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    let bad = |what: &str| format!("ARC-Message-Signature i={i}: {what}");
    for tag in ["a", "b", "bh", "d", "s"] {
        required(&tags, tag).map_err(|e| bad(&e))?;
    }
    let h = tags.get("h").copied().ok_or_else(|| bad("no h="))?;
    algorithm(&tags).map_err(|e| bad(&e))?;
    base64_value(&tags, "b").map_err(|e| bad(&e))?;
    base64_value(&tags, "bh").map_err(|e| bad(&e))?;
    domain(&tags, "d").map_err(|e| bad(&e))?;
    domain(&tags, "s").map_err(|e| bad(&e))?;
    if let Some(c) = tags.get("c") {
        let mut parts = c.split('/');
        let ok = parts.next().is_some_and(canon) && parts.next().is_none_or(canon) && parts.next().is_none();
        if !ok {
            return Err(bad(&format!("bad c={c}")));
        }
    }
    for tag in ["t", "x", "l"] {
        number(&tags, tag).map_err(|e| bad(&e))?;
    }
    let signs = |field: &str| h.split(':').any(|n| n.trim_matches(fws).eq_ignore_ascii_case(field));
    if signs("arc-seal") {
        return Err(bad("h= signs ARC-Seal (RFC 8617 §4.1.2)"));
    }
    // The AMS is a DKIM-Signature by another name (RFC 8617 §4.1.2), and
    // one that does not sign From: is invalid (RFC 6376 §6.1.1): From:
    // could be changed under an intact chain.
    if !signs("from") {
        return Err(bad("h= does not sign From: (RFC 6376 §6.1.1)"));
    }
    Ok(i)
}

/// An AS: the tags RFC 8617 §4.1.3 requires; returns (i, cv).
fn seal(value: &str) -> Result<(u32, String), String> {
    let tags = tag_list(value).map_err(|e| format!("ARC-Seal: {e}"))?;
    let bad = |what: &str| format!("ARC-Seal: {what}");
    let i = instance(required(&tags, "i").map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    let bad = |what: &str| format!("ARC-Seal i={i}: {what}");
    for tag in ["a", "b", "cv", "d", "s"] {
        required(&tags, tag).map_err(|e| bad(&e))?;
    }
    if tags.contains_key("h") {
        return Err(bad("h= is not allowed (RFC 8617 §4.1.3)"));
    }
    algorithm(&tags).map_err(|e| bad(&e))?;
    base64_value(&tags, "b").map_err(|e| bad(&e))?;
    domain(&tags, "d").map_err(|e| bad(&e))?;
    domain(&tags, "s").map_err(|e| bad(&e))?;
    number(&tags, "t").map_err(|e| bad(&e))?;
    let cv = tags.get("cv").copied().unwrap_or("");
    if !matches!(cv, "none" | "pass" | "fail") {
        return Err(bad(&format!("bad cv={cv}")));
    }
    Ok((i, cv.to_string()))
}

/// An AAR starts with `i=<instance>;` (RFC 8617 §4.1.1).
fn results_instance(value: &str) -> Result<u32, String> {
    let bad = |what: &str| format!("ARC-Authentication-Results: {what}");
    let rest = value.trim_start_matches(fws).strip_prefix("i").ok_or_else(|| bad("does not start with i="))?;
    let rest = rest.trim_start_matches(fws).strip_prefix('=').ok_or_else(|| bad("does not start with i="))?;
    let (i, rest) = rest.split_once(';').ok_or_else(|| bad("no ';' after i="))?;
    if rest.trim_matches(fws).is_empty() {
        return Err(bad("no authserv-id"));
    }
    instance(i.trim_matches(fws)).map_err(|e| bad(&e))
}

/// The tags of a field value, if it is a well-formed tag-list.
fn tags_of(value: &[u8]) -> Option<BTreeMap<&str, &str>> {
    std::str::from_utf8(value).ok().and_then(|v| tag_list(v).ok())
}

/// RFC 6376 §3.2 tag-list: names and values, or why it is malformed.
fn tag_list(value: &str) -> Result<BTreeMap<&str, &str>, String> {
    let mut tags = BTreeMap::new();
    let specs: Vec<&str> = value.split(';').collect();
    let last = specs.len() - 1;
    for (k, spec) in specs.into_iter().enumerate() {
        let spec = spec.trim_matches(fws);
        if spec.is_empty() {
            if k == last {
                break; // a trailing ';' is allowed
            }
            return Err("empty tag (\";;\")".into());
        }
        let (name, val) = spec.split_once('=').ok_or_else(|| format!("tag without '=': {spec:?}"))?;
        let (name, val) = (name.trim_matches(fws), val.trim_matches(fws));
        let mut chars = name.chars();
        let name_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return Err(format!("invalid tag name {name:?}"));
        }
        if !val.chars().all(|c| matches!(c, '!'..='~') || fws(c)) {
            return Err(format!("invalid character in {name}="));
        }
        if tags.insert(name, val).is_some() {
            return Err(format!("duplicate tag {name}="));
        }
    }
    Ok(tags)
}

fn fws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn required<'a>(tags: &BTreeMap<&str, &'a str>, tag: &str) -> Result<&'a str, String> {
    match tags.get(tag) {
        Some(v) if !v.is_empty() => Ok(v),
        Some(_) => Err(format!("empty {tag}=")),
        None => Err(format!("no {tag}=")),
    }
}

fn instance(v: &str) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(i) if v.bytes().all(|b| b.is_ascii_digit()) && (1..=MAX_SETS).contains(&i) => Ok(i),
        _ => Err(format!("bad instance i={v}")),
    }
}

fn algorithm(tags: &BTreeMap<&str, &str>) -> Result<(), String> {
    match tags.get("a").copied() {
        Some("rsa-sha256" | "ed25519-sha256") => Ok(()),
        other => Err(format!("unsupported a={}", other.unwrap_or(""))),
    }
}

fn base64_value(tags: &BTreeMap<&str, &str>, tag: &str) -> Result<(), String> {
    use base64::Engine;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    // RFC 6376 §2.4 base64string: the padding is optional.
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let v: String = tags.get(tag).copied().unwrap_or("").chars().filter(|c| !fws(*c)).collect();
    match LENIENT.decode(&v) {
        Ok(bytes) if !bytes.is_empty() => Ok(()),
        _ => Err(format!("{tag}= is not base64")),
    }
}

/// d= and s=: dot-separated labels of letters, digits and hyphens.
fn domain(tags: &BTreeMap<&str, &str>, tag: &str) -> Result<(), String> {
    let v = tags.get(tag).copied().unwrap_or("");
    if is_domain(v) { Ok(()) } else { Err(format!("invalid {tag}={v}")) }
}

/// Dot-separated labels of letters, digits, hyphens (and underscores, seen
/// in selectors), none empty or longer than 63, at most 253 in all.
pub(super) fn is_domain(v: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    v.len() <= 253 && v.split('.').all(label_ok)
}

fn canon(c: &str) -> bool {
    matches!(c, "simple" | "relaxed")
}

/// An optional numeric tag (t=, x=, l=): digits only, at most 12 of them
/// (RFC 6376 §3.5).
fn number(tags: &BTreeMap<&str, &str>, tag: &str) -> Result<(), String> {
    match tags.get(tag) {
        None => Ok(()),
        Some(v) if !v.is_empty() && v.len() <= 12 && v.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        Some(v) => Err(format!("bad {tag}={v}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_list_syntax() {
        assert!(tag_list("a=1; b = 2 ;c=3;").is_ok());
        assert!(tag_list("a=1;; b=2").is_err());
        assert!(tag_list("a=1; a=2").is_err());
        assert!(tag_list("a=1; ==").is_err());
        assert!(tag_list("1a=1").is_err());
        assert!(tag_list("").is_ok());
    }

    #[test]
    fn results_prefix() {
        assert_eq!(results_instance(" i=3; mx.test; spf=pass"), Ok(3));
        assert!(results_instance("mx.test; i=1").is_err());
        assert!(results_instance("i=1 mx.test").is_err());
        assert!(results_instance("i=0; mx.test").is_err());
    }
}
