//! The frame every dashboard page shares: navigation, the log-out form
//! (with the session's CSRF token), the style sheet, and small formatting
//! helpers. All text goes through maud, which escapes it.
//!
//! May import: maud, `http::auth`.

use maud::{DOCTYPE, Markup, html};

use crate::http::auth::Access;

/// The style sheet, served at `/dashboard.css`.
pub const CSS: &str = include_str!("dash.css");

const NAV: [(&str, &str); 4] = [("/", "Overview"), ("/queue", "Queue"), ("/messages", "Messages"), ("/tls", "TLS")];

/// A whole page: `active` is the navigation entry to highlight.
pub fn page(title: &str, active: Option<&str>, access: &Access, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="same-origin";
                title { (title) " · mailgate" }
                link rel="stylesheet" href="/dashboard.css";
            }
            body {
                @if !matches!(access, Access::Anonymous) {
                    header.top {
                        a.brand href="/" { "mailgate" }
                        nav {
                            @for (href, name) in NAV {
                                a href=(href) class=[(active == Some(href)).then_some("on")] { (name) }
                            }
                        }
                        @if let Access::Session { csrf, .. } = access {
                            form method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// `2026-12-06 11:30:05` (UTC) for Unix seconds.
pub fn time(secs: u64) -> String {
    let (y, m, d) = crate::sign::store::civil_date(secs);
    let s = secs % 86_400;
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// `2026-12-06` (UTC).
pub fn date(secs: u64) -> String {
    let (y, m, d) = crate::sign::store::civil_date(secs);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `3d 4h`, `12m`, `40s`.
pub fn age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// `97.5 %`, or a dash when there is nothing to divide.
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 { "–".into() } else { format!("{:.1} %", part as f64 * 100.0 / whole as f64) }
}

/// The badge class of an outcome word.
pub fn tone(word: &str) -> &'static str {
    match word {
        "accepted" | "delivered" | "pass" | "success" | "active" | "accept" | "would-pass" | "ok" => "ok",
        "quarantined" | "deferred" | "quarantine" | "softfail" | "neutral" | "temperror" | "pending" | "retiring" | "tag" | "delay"
        | "warning" => "warn",
        "refused" | "bounced" | "fail" | "reject" | "permerror" | "would-fail" | "failure" | "error" => "bad",
        _ => "",
    }
}

pub fn badge(word: &str) -> Markup {
    html! { span class={ "badge " (tone(word)) } { (word) } }
}
