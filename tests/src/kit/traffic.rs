//! Real TCP traffic inside namespaces: a tiny HTTP server and a client loop that measures
//! what a user would feel (did the request complete, how long did connecting take), and
//! metrics scrapes; every request is made by the kit's one client, [`Get`].

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::kit::{
    http::{Expect, Get},
    netns::Netns,
};

/// An HTTP server answering every request with a small page; stopped on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

pub const PAGE: &str = "<html><body>Sunny Travel: book your trip</body></html>";

impl Server {
    pub fn start(ns: &Netns, addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = ns.spawn(move || {
            let listener = TcpListener::bind(addr).expect("bind test server");
            listener.set_nonblocking(true).expect("nonblocking");
            tx.send(()).expect("signal ready");
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 1024];
                        let _ = conn.read(&mut buf);
                        let _ = conn.write_all(
                            format!(
                                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{PAGE}",
                                PAGE.len()
                            )
                            .as_bytes(),
                        );
                    }
                    Err(_) => thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("test server started");
        Self {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What a client loop saw.
#[derive(Debug, Default, Clone)]
pub struct ClientStats {
    pub attempts: u64,
    pub ok: u64,
    /// Connect times of successful requests, in milliseconds.
    pub connect_ms: Vec<f64>,
    pub errors: Vec<String>,
}

impl ClientStats {
    pub fn success_rate(&self) -> f64 {
        if self.attempts == 0 {
            0.0
        } else {
            self.ok as f64 / self.attempts as f64
        }
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.connect_ms.is_empty() {
            return f64::NAN;
        }
        let mut v = self.connect_ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[idx.min(v.len() - 1)]
    }
}

/// Fetch the page `per_second` times a second for `duration`, from inside `ns`.
pub fn client_loop(
    ns: &Netns,
    target: SocketAddr,
    per_second: u32,
    duration: Duration,
    timeout: Duration,
) -> thread::JoinHandle<ClientStats> {
    ns.spawn(move || {
        let mut st = ClientStats::default();
        let gap = Duration::from_secs(1) / per_second.max(1);
        let start = Instant::now();
        let mut next = start;
        while start.elapsed() < duration {
            st.attempts += 1;
            match Get::new(target).timeout(timeout).send() {
                Ok(c) => {
                    st.ok += 1;
                    st.connect_ms.push(c.as_secs_f64() * 1000.0);
                }
                Err(e) => st.errors.push(e),
            }
            next += gap;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        st
    })
}

/// `GET /metrics` from `addr` (a `run --metrics` address) inside `ns`: the whole answer,
/// status line and headers included.
pub fn scrape(ns: &Netns, addr: &'static str) -> String {
    Get::new(addr.parse().expect("metrics address"))
        .path("/metrics")
        .http11()
        .host("x")
        .expecting(Expect::Anything)
        .answer_in(ns)
        .unwrap_or_else(|e| panic!("scraping {addr}: {e}"))
        .text()
}

/// `promtool check metrics` accepts `body` (panics with what it said otherwise).
#[track_caller]
pub fn promtool_check(body: &str) {
    use std::io::Write as _;
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write to promtool");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
