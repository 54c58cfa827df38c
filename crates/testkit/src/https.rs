//! A small HTTPS server for MTA-STS policy files: thread-based, serving
//! one fixed response for every request, and recording the paths asked.

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

pub struct HttpsServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
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
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn serve(stream: TcpStream, tls: Arc<rustls::ServerConfig>, reqs: &Mutex<Vec<String>>, r: &HttpResponse) -> std::io::Result<()> {
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
    let text = String::from_utf8_lossy(&head);
    reqs.lock().unwrap_or_else(|p| p.into_inner()).push(text.lines().next().unwrap_or("").to_string());
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
