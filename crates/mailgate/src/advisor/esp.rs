//! A small table of well-known email service providers: their names, the
//! reverse-DNS (PTR) suffixes of their sending hosts, the domains they sign
//! (`d=`) or bounce (envelope) with, and the SPF include they publish.
//! The advisor uses it to tell a legitimate sender that fails DMARC (a
//! newsletter tool not yet set up to sign as the domain) from a spoofer,
//! and to propose an ESP's include instead of its addresses.
//!
//! Matching is by whole labels: `o1.sendgrid.net` is SendGrid,
//! `evilsendgrid.net` is not. The table is data, not a promise: a
//! provider can send from anywhere, and a spoofer's PTR can be anything
//! its own reverse zone says, so an ESP match is "legitimate, probably",
//! never a reason to trust mail.
//!
//! May import: nothing of mailgate.

/// One provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Esp {
    pub name: &'static str,
    /// PTR names of its sending hosts end in one of these.
    pub ptr_suffixes: &'static [&'static str],
    /// Domains it signs with or uses in the envelope (its own, not its
    /// customers').
    pub domains: &'static [&'static str],
    /// The include its customers add to their SPF record.
    pub include: Option<&'static str>,
}

pub const ESPS: &[Esp] = &[
    Esp {
        name: "Google Workspace",
        ptr_suffixes: &["google.com", "googlemail.com"],
        domains: &["google.com", "gappssmtp.com", "googlemail.com"],
        include: Some("_spf.google.com"),
    },
    Esp {
        name: "Microsoft 365",
        ptr_suffixes: &["outbound.protection.outlook.com", "protection.outlook.com"],
        domains: &["onmicrosoft.com", "outlook.com"],
        include: Some("spf.protection.outlook.com"),
    },
    Esp { name: "Amazon SES", ptr_suffixes: &["amazonses.com"], domains: &["amazonses.com"], include: Some("amazonses.com") },
    Esp { name: "SendGrid", ptr_suffixes: &["sendgrid.net"], domains: &["sendgrid.net", "sendgrid.info"], include: Some("sendgrid.net") },
    Esp {
        name: "Mailchimp / Mandrill",
        ptr_suffixes: &["mcsv.net", "rsgsv.net", "mandrillapp.com", "mcdlv.net"],
        domains: &["mcsv.net", "mcdlv.net", "mandrillapp.com", "rsgsv.net"],
        include: Some("servers.mcsv.net"),
    },
    Esp {
        name: "Mailgun",
        ptr_suffixes: &["mailgun.net", "mailgun.org"],
        domains: &["mailgun.org", "mailgun.net"],
        include: Some("mailgun.org"),
    },
    Esp { name: "Postmark", ptr_suffixes: &["mtasv.net"], domains: &["mtasv.net", "pm.mtasv.net"], include: Some("spf.mtasv.net") },
    Esp {
        name: "SparkPost",
        ptr_suffixes: &["sparkpostmail.com", "mxout.sparkpostmail.com"],
        domains: &["sparkpostmail.com"],
        include: Some("sparkpostmail.com"),
    },
    Esp {
        name: "Salesforce Marketing Cloud",
        ptr_suffixes: &["exacttarget.com", "mta.exacttarget.com"],
        domains: &["exacttarget.com", "s7.exacttarget.com"],
        include: Some("cust-spf.exacttarget.com"),
    },
    Esp {
        name: "Brevo (Sendinblue)",
        ptr_suffixes: &["sendinblue.com", "brevo.com"],
        domains: &["sendinblue.com", "brevo.com"],
        include: Some("spf.brevo.com"),
    },
    Esp { name: "Mailjet", ptr_suffixes: &["mailjet.com"], domains: &["mailjet.com"], include: Some("spf.mailjet.com") },
    Esp { name: "HubSpot", ptr_suffixes: &["hubspotemail.net"], domains: &["hubspotemail.net", "hubspot.com"], include: None },
    Esp { name: "Zendesk", ptr_suffixes: &["zendesk.com"], domains: &["zendesk.com"], include: Some("mail.zendesk.com") },
    Esp {
        name: "Zoho Mail",
        ptr_suffixes: &["zoho.com", "zohomail.com", "zoho.eu"],
        domains: &["zoho.com", "zohomail.com"],
        include: Some("zoho.com"),
    },
    Esp {
        name: "Fastmail",
        ptr_suffixes: &["messagingengine.com"],
        domains: &["messagingengine.com"],
        include: Some("spf.messagingengine.com"),
    },
];

/// `name` is `suffix` or ends in `.suffix`, ignoring case and a final dot.
fn under(name: &str, suffix: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == suffix || name.strip_suffix(suffix).is_some_and(|head| head.ends_with('.'))
}

/// The provider whose sending hosts have this reverse name.
pub fn by_ptr(ptr: &str) -> Option<&'static Esp> {
    ESPS.iter().find(|e| e.ptr_suffixes.iter().any(|s| under(ptr, s)))
}

/// The provider that signs or bounces with this domain.
pub fn by_domain(domain: &str) -> Option<&'static Esp> {
    ESPS.iter().find(|e| e.domains.iter().any(|s| under(domain, s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_whole_labels_only() {
        assert_eq!(by_ptr("o1.ptr1234.sendgrid.net.").map(|e| e.name), Some("SendGrid"));
        assert_eq!(by_ptr("mail-wr1-f54.google.com").map(|e| e.name), Some("Google Workspace"));
        assert!(by_ptr("evilsendgrid.net").is_none());
        assert!(by_ptr("sendgrid.net.attacker.test").is_none());
        assert_eq!(by_domain("MCSV.NET").map(|e| e.name), Some("Mailchimp / Mandrill"));
        assert!(by_domain("example.test").is_none());
    }
}
