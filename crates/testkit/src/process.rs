//! Runs the real `mailgate` binary on free loopback ports with a temporary
//! config and data dir, and stops, kills and restarts it on the same data.
//!
//! The binary is `MAILGATE_BIN` when set, otherwise the path the test passes
//! in (integration tests have `env!("CARGO_BIN_EXE_mailgate")`). Its stderr
//! and stdout go to `mailgate.log` in the work dir; every start appends a
//! marker line. When a test panics, the work dir is kept and the end of the
//! log is printed, so a failure can be read after the fact.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::net::{accepts, free_addr, wait_until};

/// How long a start may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long SIGTERM may take before the test fails.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Fresh ports tried when another process took ours between probe and bind.
const BIND_ATTEMPTS: usize = 5;

/// Another name for [`Server`], matching what the tests call it.
pub type MailgateProcess = Server;

/// Configures a [`Server`] before its first start.
pub struct ServerBuilder {
    bin: PathBuf,
    hostname: String,
    extra: String,
    data_dir: Option<PathBuf>,
    env: Vec<(String, String)>,
}

impl ServerBuilder {
    /// `bin` is used unless `MAILGATE_BIN` is set.
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        let bin = std::env::var_os("MAILGATE_BIN").map(PathBuf::from).unwrap_or_else(|| bin.into());
        ServerBuilder { bin, hostname: "mx.example.test".into(), extra: String::new(), data_dir: None, env: Vec::new() }
    }

    /// TOML appended after the generated `[server]`, `[[listener]]` and
    /// `[http]` tables. It must start with a table header (`[[domain]]`,
    /// `[limits]`, ...) and must not repeat those three.
    pub fn config(mut self, toml: &str) -> Self {
        self.extra.push('\n');
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// `[server].hostname`; default `mx.example.test`.
    pub fn hostname(mut self, hostname: &str) -> Self {
        self.hostname = hostname.into();
        self
    }

    /// Uses an existing data dir instead of one inside the work dir.
    pub fn data_dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(path.into());
        self
    }

    /// An environment variable for the server process (`MAILGATE_LOG`, ...).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Writes the config, starts the server and waits until it accepts SMTP
    /// and HTTP connections. Panics with the server's log if it does not.
    pub fn start(self) -> Server {
        let work = tempfile::Builder::new().prefix("mailgate-test-").tempdir().expect("create work dir");
        let data_dir = self.data_dir.unwrap_or_else(|| work.path().join("data"));
        // Without a `[dns]` of the test's own, an empty loopback DNS answers
        // (NXDOMAIN): the inbound checks never ask the system resolver.
        let mut extra = self.extra;
        let dns = (!extra.contains("[dns]")).then(|| {
            let dns = crate::dns::DnsServer::start(crate::dns::Zone::new());
            extra.push('\n');
            extra.push_str(&dns.config());
            dns
        });
        // Protocol tests send bare messages without a From: header, which
        // the default policy refuses; tests of the checks bring `[policy]`.
        if !extra.contains("[policy]") {
            extra.push_str("\n[policy]\ninvalid_from = \"tag\"\n");
        }
        let mut server = Server {
            bin: self.bin,
            config_path: work.path().join("mailgate.toml"),
            log_path: work.path().join("mailgate.log"),
            work: Some(work),
            data_dir,
            hostname: self.hostname,
            extra,
            _dns: dns,
            env: self.env,
            smtp: free_addr(),
            http: free_addr(),
            child: None,
            starts: 0,
        };
        server.spawn();
        server
    }
}

/// A running (or stopped) `mailgate serve` with its own config and data dir.
pub struct Server {
    bin: PathBuf,
    work: Option<TempDir>,
    config_path: PathBuf,
    log_path: PathBuf,
    data_dir: PathBuf,
    hostname: String,
    extra: String,
    env: Vec<(String, String)>,
    smtp: SocketAddr,
    http: SocketAddr,
    child: Option<Child>,
    starts: u32,
    /// The empty DNS server, when the test brought none.
    _dns: Option<crate::dns::DnsServer>,
}

impl Server {
    pub fn builder(bin: impl Into<PathBuf>) -> ServerBuilder {
        ServerBuilder::new(bin)
    }

    /// Starts a server with the base config plus `extra_toml`.
    pub fn start(bin: impl Into<PathBuf>, extra_toml: &str) -> Server {
        ServerBuilder::new(bin).config(extra_toml).start()
    }

    /// The `mx` listener.
    pub fn smtp_addr(&self) -> SocketAddr {
        self.smtp
    }

    /// The admin API, `/metrics` and `/healthz`.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `data_dir/spool`.
    pub fn spool_dir(&self) -> PathBuf {
        self.data_dir.join("spool")
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the server wrote to stderr and stdout, all starts together.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How many times the binary was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Whether the process is still alive (it may have exited on its own).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL: no shutdown code runs, as in a crash or power-off of the
    /// process (the kernel's page cache survives).
    pub fn kill9(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("kill9: the server is not running");
        // Child::kill sends SIGKILL on Unix; ignore "already exited".
        let _ = child.kill();
        child.wait().expect("wait for killed server")
    }

    /// SIGTERM, then waits for the process to exit. Panics with the log if it
    /// is still running after 30 s.
    pub fn sigterm_and_wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("sigterm_and_wait: the server is not running");
        // SAFETY: kill(2) with a pid we spawned and have not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mailgate did not exit within {STOP_TIMEOUT:?} of SIGTERM\n{}", self.log_tail(60));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the binary again on the same config and data dir (stopping it
    /// with SIGTERM first if it is still running). Keeps the ports unless
    /// another process took one meanwhile.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.sigterm_and_wait();
        }
        self.spawn();
    }

    /// The admin API's bearer token, from `data_dir/admin.token`.
    pub fn admin_token(&self) -> String {
        let path = self.data_dir.join("admin.token");
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}\n{}", path.display(), self.log_tail(40)));
        text.trim().to_string()
    }

    /// GET on the admin server with the token; the body parsed as JSON.
    pub fn api_get(&self, path: &str) -> Value {
        let url = format!("http://{}{path}", self.http);
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
        match agent.get(&url).set("Authorization", &format!("Bearer {}", self.admin_token())).call() {
            Ok(resp) => resp.into_json().unwrap_or_else(|e| panic!("GET {url}: invalid JSON: {e}")),
            Err(e) => panic!("GET {url}: {e}\n{}", self.log_tail(40)),
        }
    }

    /// A counter or gauge from `GET /metrics`, 0 when absent.
    pub fn metric(&self, name: &str) -> u64 {
        let url = format!("http://{}/metrics", self.http);
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
        let text = agent.get(&url).call().ok().and_then(|r| r.into_string().ok()).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    }

    /// Every queued message, `{"messages": [...]}`, gathered from as many
    /// `GET /api/v1/queue` pages as it takes.
    pub fn queue(&self) -> Value {
        let mut all = Vec::new();
        let mut path = "/api/v1/queue?limit=1000".to_string();
        loop {
            let mut page = self.api_get(&path);
            if let Some(messages) = page["messages"].as_array_mut() {
                all.append(messages);
            }
            match page["next"].as_str() {
                Some(next) => path = format!("/api/v1/queue?limit=1000&after={next}"),
                None => break,
            }
        }
        serde_json::json!({ "messages": all })
    }

    /// The ids of every queued message, as the admin API lists them.
    pub fn queue_ids(&self) -> Vec<String> {
        ids_of(&self.queue())
    }

    /// `GET /api/v1/spool`: message count, fsync stats and what recovery found
    /// at this start (`recovery.corrupt[]` with `moved_to`, `offset`, ...).
    pub fn spool_status(&self) -> Value {
        self.api_get("/api/v1/spool")
    }

    /// Runs `mailgate --config FILE ARGS...` and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()))
    }

    /// The queue ids printed by `mailgate queue list --json`.
    pub fn queue_ids_via_cli(&self) -> Vec<String> {
        let out = self.cli(&["queue", "list", "--json"]);
        assert!(out.status.success(), "mailgate queue list --json failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).expect("queue list --json prints JSON");
        ids_of(&v)
    }

    /// The last `lines` lines of the log, for panic messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        let from = all.len().saturating_sub(lines);
        format!("--- last {} lines of {} ---\n{}", all.len() - from, self.log_path.display(), all[from..].join("\n"))
    }

    fn write_config(&self) {
        let config = format!(
            "[server]\nhostname = {}\ndata_dir = {}\n\n[[listener]]\nrole = \"mx\"\nbind = \"{}\"\n\n[http]\nbind = \"{}\"\n{}",
            toml_string(&self.hostname),
            toml_string(&self.data_dir.display().to_string()),
            self.smtp,
            self.http,
            self.extra
        );
        fs::write(&self.config_path, config).expect("write config");
    }

    fn spawn(&mut self) {
        for attempt in 1..=BIND_ATTEMPTS {
            self.write_config();
            self.starts += 1;
            let mut log = OpenOptions::new().create(true).append(true).open(&self.log_path).expect("open log");
            let mut command = Command::new(&self.bin);
            command
                .arg("serve")
                .arg("--config")
                .arg(&self.config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log handle"))
                .stderr(log.try_clone().expect("clone log handle"))
                .env("RUST_BACKTRACE", "1");
            for (k, v) in &self.env {
                command.env(k, v);
            }
            let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
            let _ = writeln!(log, "--- testkit: start #{} pid {} smtp {} http {} ---", self.starts, child.id(), self.smtp, self.http);
            drop(log);
            self.child = Some(child);

            let (smtp, http) = (self.smtp, self.http);
            let ready = wait_until(START_TIMEOUT, || !self.is_running() || (accepts(smtp) && healthy(http)));
            if ready && self.is_running() {
                return;
            }
            let status = self.child.take().map(|mut c| {
                let _ = c.kill();
                c.wait().ok()
            });
            let log = self.log_tail(40);
            if !ready {
                panic!("mailgate did not start listening within {START_TIMEOUT:?}\n{log}");
            }
            let taken = log.lines().rev().take(5).any(|l| l.contains("cannot listen"));
            if !taken || attempt == BIND_ATTEMPTS {
                panic!("mailgate exited during start-up ({status:?})\n{log}");
            }
            // Someone else took a port: move both to fresh ones and try again.
            self.smtp = free_addr();
            self.http = free_addr();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking()
            && let Some(work) = self.work.take()
        {
            let kept = work.keep();
            eprintln!("{}\ntestkit: work dir kept at {}", self.log_tail(40), kept.display());
        }
    }
}

fn healthy(http: SocketAddr) -> bool {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_millis(500)).build();
    agent.get(&format!("http://{http}/healthz")).call().is_ok()
}

fn ids_of(v: &Value) -> Vec<String> {
    v["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no \"messages\" array in {v}"))
        .iter()
        .map(|m| m["id"].as_str().unwrap_or_else(|| panic!("message without an id: {m}")).to_string())
        .collect()
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether a process ended by SIGKILL.
pub fn was_killed(status: &ExitStatus) -> bool {
    status.signal() == Some(libc::SIGKILL)
}

/// The records of a spool segment: its bytes up to the last one that is
/// not zero (the writer keeps zeros written ahead of its records).
pub fn segment_records(path: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    bytes.truncate(end);
    bytes
}

/// Writes `bytes` right after the last record of a spool segment, where
/// the next record would go, for tests that damage spool files.
pub fn write_after_records(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let end = segment_records(path).len() as u64;
    let f: File = OpenOptions::new().write(true).open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all_at(bytes, end).expect("write");
    f.sync_all().expect("sync");
}
