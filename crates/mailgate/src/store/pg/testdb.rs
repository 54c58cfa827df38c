//! A private PostgreSQL for the Rust tests: one server per test binary,
//! `initdb` into a temporary directory and `pg_ctl` on 127.0.0.1 at a free
//! port (as the `postgres` user when the tests run as root: PostgreSQL
//! refuses root), one database per test. A watcher process stops the
//! server when the test binary exits (its statics are never dropped).
//!
//! May import: std, `postgres`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

struct Server {
    port: u16,
    _dir: tempfile::TempDir,
}

fn bin(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin").join(name)).filter(|p| p.exists()).collect())
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| PathBuf::from(name))
}

fn as_postgres(root: bool, program: &Path) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn start() -> Server {
    let dir = tempfile::tempdir().expect("a temporary directory");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        let out = Command::new("id").args(["-u", "postgres"]).output().expect("id");
        let uid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("a postgres user (Debian's postgresql package)");
        std::os::unix::fs::chown(dir.path(), Some(uid), None).expect("chown the PostgreSQL directory");
    }
    let data = dir.path().join("data");
    let ok = as_postgres(root, &bin("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C"])
        .output()
        .expect("initdb runs");
    assert!(ok.status.success(), "initdb: {}", String::from_utf8_lossy(&ok.stderr));
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let conf = format!(
        "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nfsync = off\nmax_connections = 300\n",
        dir.path().display()
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, conf.as_bytes()))
        .expect("postgresql.conf");
    let ok = as_postgres(root, &bin("pg_ctl"))
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.path().join("log"))
        .args(["-w", "-t", "60", "start"])
        .output()
        .expect("pg_ctl runs");
    assert!(ok.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&ok.stderr));
    // Stop it when this process is gone.
    let stop = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {runas}{pg_ctl} -D {data} -m immediate stop; rm -rf {dir}",
        pid = std::process::id(),
        runas = if root { "runuser -u postgres -- " } else { "" },
        pg_ctl = bin("pg_ctl").display(),
        data = data.display(),
        dir = dir.path().display(),
    );
    // The watcher must outlive this process (it waits for it to exit), so
    // it is never waited on: init reaps it.
    #[allow(clippy::zombie_processes)]
    Command::new("setsid")
        .args(["sh", "-c", &stop])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the watcher");
    Server { port, _dir: dir }
}

static SERVER: OnceLock<Server> = OnceLock::new();
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A new empty database on the test server: its URL.
pub(crate) fn database() -> String {
    let s = SERVER.get_or_init(start);
    let name = format!("t{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", s.port);
    let mut c = postgres::Client::connect(&admin, postgres::NoTls).expect("the test PostgreSQL answers");
    c.batch_execute(&format!("CREATE DATABASE {name}")).expect("CREATE DATABASE");
    format!("postgres://postgres@127.0.0.1:{}/{name}", s.port)
}
