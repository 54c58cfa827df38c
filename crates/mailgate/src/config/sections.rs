//! Reading the TOML text into the raw configuration, section by section, so
//! that a mistake in one section does not hide those in the others
//! (`mailgate config check` lists them all). Imports only the parent
//! module's raw types.

use serde::Deserialize;

use super::{ConfigError, RawConfig};

/// Reads `text` (from `file`). A TOML syntax error is the one fatal error
/// (nothing after it can be trusted). Otherwise every section is read on
/// its own; a section with an error is replaced by its defaults and the
/// error is returned in the list, in the order of the file.
pub(super) fn read(text: &str, file: &str) -> (Result<RawConfig, ConfigError>, Vec<ConfigError>) {
    let whole = match toml::from_str::<RawConfig>(text) {
        Ok(raw) => return (Ok(raw), Vec::new()),
        Err(e) => e,
    };
    if text.parse::<toml::Table>().is_err() {
        return (Err(parse_error(text, file, &whole).1), Vec::new());
    }
    let mut errors: Vec<toml::de::Error> = Vec::new();
    // Each section is deserialized by a struct that knows only that one
    // (and ignores the others), so its errors keep their place in the text.
    macro_rules! each_section {
        ($($field:ident : $ty:ty),* $(,)?) => {
            (RawConfig {$(
                $field: {
                    #[derive(Deserialize)]
                    struct One {
                        #[serde(default)]
                        $field: $ty,
                    }
                    match toml::from_str::<One>(text) {
                        Ok(one) => one.$field,
                        Err(e) => {
                            errors.push(e);
                            <$ty>::default()
                        }
                    }
                },
            )*}, [$(stringify!($field)),*])
        };
    }
    let (raw, sections) = each_section!(
        server: super::RawServer,
        listener: Option<Vec<super::RawListener>>,
        tls: Option<super::RawTls>,
        dns: super::RawDns,
        relay: super::RawRelay,
        delivery: super::Delivery,
        domain: Vec<super::RawDomain>,
        user: Vec<super::RawUser>,
        http: super::RawHttp,
        limits: super::Limits,
        spool: super::RawSpool,
        log: super::RawLog,
        dkim: super::DkimGlobal,
        lookalike: super::RawLookalike,
        policy: super::policy::RawPolicy,
        arc: super::RawArc,
        reports: super::reports::RawReports,
        cluster: super::cluster::RawCluster,
        webhook: Vec<super::webhook::RawWebhook>,
        srs: super::srs::RawSrs,
        forward: Vec<super::srs::RawForward>,
        suppression: super::suppression::RawSuppression,
    );
    let mut found: Vec<(usize, ConfigError)> = errors.iter().map(|e| parse_error(text, file, e)).collect();
    // What no single section sees: unknown sections.
    if let Ok(table) = text.parse::<toml::Table>() {
        for name in table.keys().filter(|k| !sections.contains(&k.as_str())) {
            let at = section_offset(text, name);
            let line = text[..at.min(text.len())].matches('\n').count() + 1;
            let message = format!("line {line}: {name}: unknown section, expected one of {}", sections.join(", "));
            found.push((at, ConfigError::Parse { file: file.to_string(), message }));
        }
    }
    // Anything else wrong with the whole, in case nothing above caught it.
    if found.is_empty() {
        found.push(parse_error(text, file, &whole));
    }
    found.sort_by_key(|(at, _)| *at);
    (Ok(raw), found.into_iter().map(|(_, e)| e).collect())
}

/// Where the section (or top-level key) `name` starts, for ordering and the
/// line number; the end of the text when not found.
fn section_offset(text: &str, name: &str) -> usize {
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start().trim_start_matches('[').trim_start();
        if let Some(rest) = t.strip_prefix(name)
            && rest.trim_start().starts_with([']', '.', '='])
        {
            return start;
        }
        start += line.len();
    }
    text.len()
}

/// One line: where, which key, and what is wrong with it; with the offset
/// in the text for ordering.
fn parse_error(text: &str, file: &str, e: &toml::de::Error) -> (usize, ConfigError) {
    let message = e.message().replace('\n', " ");
    let (at, message) = match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            match key_at(text, span.start) {
                Some(key) => (span.start, format!("line {line}: {key}: {message}")),
                None => (span.start, format!("line {line}: {message}")),
            }
        }
        None => (usize::MAX, message),
    };
    (at, ConfigError::Parse { file: file.to_string(), message })
}

/// The dotted key (`listener[1].bind`) of the TOML line holding `offset`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let mut table = String::new();
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let end = start + line.len();
        let t = line.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = counts.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_string();
        }
        if offset < end || end == text.len() {
            if t.starts_with('[') {
                return Some(table);
            }
            let key = t.split('=').next()?.trim().trim_matches('"');
            if key.is_empty() {
                return None;
            }
            return Some(if table.is_empty() { key.to_string() } else { format!("{table}.{key}") });
        }
        start = end;
    }
    None
}
