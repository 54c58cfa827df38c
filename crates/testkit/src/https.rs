//! A small HTTPS server for MTA-STS policy files and TLS-RPT reports:
//! thread-based, serving one fixed response for every request, and
//! recording the paths asked and what was posted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What the server answers.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl HttpResponse {
    /// A policy file with the right content type.
    pub fn policy(body: &str) -> Self {
        HttpResponse { status: 200, content_type: "text/plain".into(), body: body.into() }
    }
}

/// One request as received: its header block and its body (read by
/// `Content-Length`).
#[derive(Clone, Debug)]
pub struct Request {
    pub head: String,
    pub body: Vec<u8>,
}

type Log = Arc<Mutex<Vec<Request>>>;

pub struct HttpsServer {
    addr: SocketAddr,
    requests: Log,
    stop: Arc<AtomicBool>,
}

impl HttpsServer {
    pub fn start(bind: SocketAddr, tls: Arc<rustls::ServerConfig>, response: HttpResponse) -> HttpsServer {
        let listener = TcpListener::bind(bind).expect("bind HTTPS");
        let addr = listener.local_addr().expect("address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (reqs, stop2) = (requests.clone(), stop.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (tls, reqs, response) = (tls.clone(), reqs.clone(), response.clone());
                thread::spawn(move || {
                    let _ = serve(stream, tls, &reqs, &response);
                });
            }
        });
        HttpsServer { addr, requests, stop }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Request lines received so far ("GET /path HTTP/1.1").
    pub fn requests(&self) -> Vec<String> {
        self.received().iter().map(|r| r.head.lines().next().unwrap_or("").to_string()).collect()
    }

    /// Every request with its header block and body.
    pub fn received(&self) -> Vec<Request> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn serve(stream: TcpStream, tls: Arc<rustls::ServerConfig>, reqs: &Mutex<Vec<Request>>, r: &HttpResponse) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let conn = rustls::ServerConnection::new(tls).map_err(std::io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, stream);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16384 {
        if s.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let length = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(16 << 20);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body)?;
    reqs.lock().unwrap_or_else(|p| p.into_inner()).push(Request { head: text, body });
    let reason = if r.status == 200 { "OK" } else { "Other" };
    let out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        r.status,
        r.content_type,
        r.body.len(),
        r.body
    );
    s.write_all(out.as_bytes())?;
    s.flush()?;
    s.conn.send_close_notify();
    let _ = s.flush();
    Ok(())
}
