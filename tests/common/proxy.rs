//! A fault-injecting HTTP proxy for adapter tests: forwards each request to the real backend,
//! or answers the next N requests with a 503 (a backend's "try again later"), optionally
//! holding every request for a while first (a throttled backend).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct FaultProxy {
    pub url: String,
    fail: Arc<AtomicU64>,
    pub requests: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    delay_ms: Arc<AtomicU64>,
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (`host:port`).
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (fail, requests, failed) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (f, r, d, up, w) = (fail.clone(), requests.clone(), failed.clone(), upstream.to_owned(), delay_ms.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (f, r, d, up, w) = (f.clone(), r.clone(), d.clone(), up.clone(), w.clone());
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(w.load(Ordering::SeqCst)));
                    let _ = serve(conn, &up, &f, &r, &d);
                });
            }
        });
        FaultProxy { url, fail, requests, failed, delay_ms }
    }

    /// Every request from now on waits this long before it is served.
    pub fn delay_each(&self, d: std::time::Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// The next `n` requests get a 503.
    pub fn fail_next(&self, n: u64) {
        self.fail.store(n, Ordering::SeqCst);
    }
}

/// Reads one HTTP/1.1 request: head and Content-Length body.
fn read_request(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        let end = line == "\r\n";
        head.extend_from_slice(line.as_bytes());
        if end {
            break;
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    head.extend_from_slice(&body);
    Ok(Some(head))
}

/// One request per connection: answered with a 503, or relayed to the backend (which closes
/// the connection after answering, as moto does).
fn serve(
    conn: TcpStream,
    upstream: &str,
    fail: &AtomicU64,
    requests: &AtomicU64,
    failed: &AtomicU64,
) -> std::io::Result<()> {
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let Some(request) = read_request(&mut reader)? else { return Ok(()) };
    requests.fetch_add(1, Ordering::SeqCst);
    if fail.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
        failed.fetch_add(1, Ordering::SeqCst);
        let body = r#"{"__type":"ServiceUnavailable","message":"injected by the test proxy"}"#;
        return write!(
            writer,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/x-amz-json-1.0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    let mut up = TcpStream::connect(upstream)?;
    let request = String::from_utf8_lossy(&request).replace("Connection: keep-alive", "Connection: close").into_bytes();
    up.write_all(&request)?;
    let mut response = Vec::new();
    up.read_to_end(&mut response)?;
    writer.write_all(&response)
}
