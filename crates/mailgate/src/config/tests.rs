//! Unit tests of config parsing and validation.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/mailgate/test.toml"))
}

#[test]
fn defaults() {
    let c = Config::load(None).unwrap();
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.http_bind, Some("127.0.0.1:8025".parse().unwrap()));
    assert!(c.data_dir.ends_with("mailgate-data"));
    assert_eq!(c.limits.max_recipients, 1000);
}

#[test]
fn smtp_threads_are_half_the_cores_unless_set() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(parse("").unwrap().smtp_threads, (cores / 2).max(1));
    assert_eq!(parse("[server]\nsmtp_threads = 0\n").unwrap().smtp_threads, (cores / 2).max(1));
    assert_eq!(parse("[server]\nsmtp_threads = 3\n").unwrap().smtp_threads, 3);
    let e = parse("[server]\nsmtp_threads = 257\n").unwrap_err().to_string();
    assert!(e.contains("server.smtp_threads") && e.contains("at most 256"), "{e}");
}

#[test]
fn unknown_key_names_key_and_file() {
    let e = parse("[server]\nhostnme = \"x\"\n").unwrap_err().to_string();
    assert!(e.contains("/etc/mailgate/test.toml"), "{e}");
    assert!(e.contains("hostnme"), "{e}");
}

#[test]
fn parse_errors_are_one_line_with_the_key() {
    let e = parse("[limits]\nmax_errors = \"many\"\n").unwrap_err().to_string();
    assert!(!e.contains('\n'), "{e}");
    assert!(e.contains("line 2: limits.max_errors:"), "{e}");
    let e = parse("[[listener]]\nrole = \"mx\"\nbind = \"127.0.0.1:1\"\n[[listener]]\nrole = \"mx\"\nbind = \"nope\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("listener[1].bind"), "{e}");
    let e = parse("[limits]\ndata_timeout = 0\n").unwrap_err().to_string();
    assert!(e.contains("limits.data_timeout"), "{e}");
}

#[test]
fn bad_value_names_key() {
    let e = parse("[limits]\nmax_recipients = 5\n").unwrap_err().to_string();
    assert!(e.contains("limits.max_recipients"), "{e}");
    let e = parse("[[listener]]\nrole = \"mx\"\nbind = \"nope\"\n").unwrap_err().to_string();
    assert!(e.contains("bind"), "{e}");
    let e = parse("[[domain]]\nname = \"example.test\"\ndeliver = \"ftp://x\"\n").unwrap_err().to_string();
    assert!(e.contains("domain[0].deliver"), "{e}");
}

#[test]
fn every_problem_is_listed_in_file_order() {
    let text = "[server]\nhostnme = \"x\"\n[limits]\nmax_recipients = 5\ndata_timeout = 0\n\
                [[domain]]\nname = \"example.test\"\ndeliver = \"ftp://x\"\n[bogus]\nx = 1\n";
    let errors: Vec<String> = Config::parse_all(text, Path::new("/etc/m.toml")).unwrap_err().iter().map(|e| e.to_string()).collect();
    let keys = ["server.hostnme", "bogus", "domain[0].deliver", "limits.max_recipients", "limits.data_timeout"];
    assert_eq!(errors.len(), keys.len(), "{errors:#?}");
    for (e, key) in errors.iter().zip(keys) {
        assert!(e.starts_with("/etc/m.toml: ") && e.contains(key), "{e} should name {key}");
    }
    // `serve` reports the first one.
    assert_eq!(parse(text).unwrap_err().to_string(), errors[0].replace("/etc/m.toml", "/etc/mailgate/test.toml"));
}

#[test]
fn smarthost() {
    let c = parse("[delivery]\nsmarthost = \"smtp://us%40er:p%3Ass@relay.test:587\"\n").unwrap();
    let s = c.smarthost.unwrap();
    assert_eq!((s.host.as_str(), s.port), ("relay.test", 587));
    assert_eq!(s.credentials, Some(("us@er".into(), "p:ss".into())));
    assert!(parse("[delivery]\nsmarthost = \"relay.test\"\n").is_err());
}

#[test]
fn relative_paths_follow_the_file() {
    let c = parse("[server]\ndata_dir = \"spool\"\n[[domain]]\nname = \"Example.TEST\"\ndeliver = \"maildir:mail\"\n").unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/etc/mailgate/spool"));
    assert_eq!(c.domains[0].name.as_str(), "example.test");
    assert_eq!(c.domains[0].deliver, Some(NextHop::Maildir(PathBuf::from("/etc/mailgate/mail"))));
}
