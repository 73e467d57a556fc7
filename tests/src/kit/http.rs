//! The one HTTP client of the tests, the lab and the bench: a `GET` as a user's browser
//! makes it (connect, within a timeout, from a chosen address if asked; send the request;
//! read the whole answer), timed from the first SYN.
//!
//! Its options are what the callers genuinely differ in:
//!
//! - the tests fetch the kit's [`Server`](super::traffic::Server) page: any `200` status
//!   line is a success, the connection must be made within the timeout, and an error
//!   carries the system's text ([`Get::new`]'s defaults);
//! - the lab's employees fetch nginx's page: the answer must be that page, the whole
//!   request must be done within the timeout (users give up), and an error names its kind
//!   only, so that the lab's table counts them together (`lab::page_request`);
//! - a metrics scrape wants the answer itself, whatever it is ([`Expect::Anything`]).

use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use super::netns::Netns;

/// What counts as a successful answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A `200` status line, HTTP/1.0 or HTTP/1.1.
    Ok,
    /// An `HTTP/1.1 200` status line and a body that ends with this page.
    Page(&'static str),
    /// Any answer: the caller reads it ([`Get::answer`]).
    Anything,
}

/// What the timeout bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deadline {
    /// The connection must be made within the timeout; reading the answer then gets
    /// what is left of it, at least 100 ms.
    Connect,
    /// The whole request must be done within the timeout, or it failed (`too slow`):
    /// users give up. Reading the answer gets what is left of it, at least 50 ms.
    Whole,
}

/// How a failure is described.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Errors {
    /// With the system's text (`connect: Connection refused (os error 111)`), and the
    /// status line of an answer that was not the one expected.
    Full,
    /// By the error's kind alone (`connect: connection refused`, `bad answer`), so that
    /// many failures can be counted together.
    Kind,
}

/// One `GET`: built with [`Get::new`] and the options below, then [`Get::send`] (the
/// connect time) or [`Get::answer`] (the answer too), here or in a namespace.
#[derive(Clone, Debug)]
pub struct Get {
    target: SocketAddr,
    local: Option<IpAddr>,
    timeout: Option<Duration>,
    path: &'static str,
    http11: bool,
    host: Option<&'static str>,
    expect: Expect,
    deadline: Deadline,
    errors: Errors,
}

/// What a [`Get`] got.
#[derive(Clone, Debug)]
pub struct Answer {
    /// How long connecting took.
    pub connected: Duration,
    /// The whole answer: status line, headers and body.
    pub raw: Vec<u8>,
}

impl Answer {
    /// The answer as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

impl Get {
    /// `GET / HTTP/1.0` with `Host: sales` to `target`, from the address routing picks,
    /// with no timeout; any `200` status line is a success ([`Expect::Ok`]); the timeout,
    /// once set, bounds the connection ([`Deadline::Connect`]); errors in full
    /// ([`Errors::Full`]).
    pub fn new(target: SocketAddr) -> Self {
        Self {
            target,
            local: None,
            timeout: None,
            path: "/",
            http11: false,
            host: Some("sales"),
            expect: Expect::Ok,
            deadline: Deadline::Connect,
            errors: Errors::Full,
        }
    }

    /// From this local address (one of several the namespace has), or from the one
    /// routing picks (`None`).
    pub fn bind(mut self, local: impl Into<Option<IpAddr>>) -> Self {
        self.local = local.into();
        self
    }

    /// Give up after this long (see [`Deadline`] for what it bounds).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub fn path(mut self, path: &'static str) -> Self {
        self.path = path;
        self
    }

    /// `HTTP/1.1` rather than `HTTP/1.0` (the connection is still read to its end).
    pub fn http11(mut self) -> Self {
        self.http11 = true;
        self
    }

    /// The `Host` header, or none.
    pub fn host(mut self, host: impl Into<Option<&'static str>>) -> Self {
        self.host = host.into();
        self
    }

    pub fn expecting(mut self, expect: Expect) -> Self {
        self.expect = expect;
        self
    }

    pub fn deadline(mut self, deadline: Deadline) -> Self {
        self.deadline = deadline;
        self
    }

    pub fn errors(mut self, errors: Errors) -> Self {
        self.errors = errors;
        self
    }

    /// The request's bytes.
    fn request(&self) -> String {
        let version = if self.http11 { "1.1" } else { "1.0" };
        let host = self
            .host
            .map_or_else(String::new, |h| format!("Host: {h}\r\n"));
        format!("GET {} HTTP/{version}\r\n{host}\r\n", self.path)
    }

    /// `what: error`, as [`Errors`] says.
    fn fail(&self, what: &str, e: &io::Error) -> String {
        match self.errors {
            Errors::Full => format!("{what}: {e}"),
            Errors::Kind => format!("{what}: {}", e.kind()),
        }
    }

    fn connect(&self) -> Result<TcpStream, String> {
        let Some(local) = self.local else {
            return match self.timeout {
                Some(t) => TcpStream::connect_timeout(&self.target, t),
                None => TcpStream::connect(self.target),
            }
            .map_err(|e| self.fail("connect", &e));
        };
        let full = self.errors == Errors::Full;
        let domain = socket2::Domain::for_address(self.target);
        let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None).map_err(|e| {
            if full {
                format!("socket: {e}")
            } else {
                e.to_string()
            }
        })?;
        sock.bind(&SocketAddr::new(local, 0).into()).map_err(|e| {
            if full {
                format!("bind {local}: {e}")
            } else {
                format!("bind: {e}")
            }
        })?;
        match self.timeout {
            Some(t) => sock.connect_timeout(&self.target.into(), t),
            None => sock.connect(&self.target.into()),
        }
        .map_err(|e| self.fail("connect", &e))?;
        Ok(TcpStream::from(sock))
    }

    /// Send the request; the connect time and the answer, if it is what was expected.
    pub fn answer(&self) -> Result<Answer, String> {
        let start = Instant::now();
        let mut s = self.connect()?;
        let connected = start.elapsed();
        if let Some(timeout) = self.timeout {
            let floor = match self.deadline {
                Deadline::Connect => Duration::from_millis(100),
                Deadline::Whole => Duration::from_millis(50),
            };
            let left = timeout.saturating_sub(connected).max(floor);
            s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        }
        s.write_all(self.request().as_bytes())
            .map_err(|e| self.fail("send", &e))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(|e| self.fail("read", &e))?;
        self.judge(&raw, start.elapsed())?;
        Ok(Answer { connected, raw })
    }

    /// Whether `raw`, answered `elapsed` after the start, is a success.
    fn judge(&self, raw: &[u8], elapsed: Duration) -> Result<(), String> {
        if self.deadline == Deadline::Whole
            && let Some(timeout) = self.timeout
            && elapsed > timeout
        {
            return Err("too slow".into());
        }
        let ok = match self.expect {
            Expect::Ok => raw.starts_with(b"HTTP/1.0 200") || raw.starts_with(b"HTTP/1.1 200"),
            Expect::Page(page) => {
                raw.starts_with(b"HTTP/1.1 200") && raw.ends_with(page.as_bytes())
            }
            Expect::Anything => true,
        };
        if ok {
            Ok(())
        } else {
            Err(match self.errors {
                Errors::Full => format!(
                    "bad answer: {:?}",
                    String::from_utf8_lossy(raw).lines().next()
                ),
                Errors::Kind => "bad answer".into(),
            })
        }
    }

    /// Send the request; how long connecting took, if the answer was what was expected.
    pub fn send(&self) -> Result<Duration, String> {
        self.answer().map(|a| a.connected)
    }

    /// [`Get::answer`] from inside `ns`.
    pub fn answer_in(&self, ns: &Netns) -> Result<Answer, String> {
        let get = self.clone();
        ns.spawn(move || get.answer())
            .join()
            .expect("HTTP client thread")
    }

    /// [`Get::send`] from inside `ns`.
    pub fn send_in(&self, ns: &Netns) -> Result<Duration, String> {
        self.answer_in(ns).map(|a| a.connected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> SocketAddr {
        "192.0.2.1:80".parse().unwrap()
    }

    #[test]
    fn the_request_is_what_each_caller_sent() {
        assert_eq!(
            Get::new(target()).request(),
            "GET / HTTP/1.0\r\nHost: sales\r\n\r\n"
        );
        assert_eq!(
            Get::new(target()).host("sales.example").request(),
            "GET / HTTP/1.0\r\nHost: sales.example\r\n\r\n"
        );
        assert_eq!(
            Get::new(target())
                .path("/metrics")
                .http11()
                .host("x")
                .request(),
            "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        assert_eq!(
            Get::new(target()).http11().host(None).request(),
            "GET / HTTP/1.1\r\n\r\n"
        );
    }

    #[test]
    fn what_counts_as_success() {
        let t = Duration::from_secs(3);
        let fast = Duration::from_millis(10);
        let test = Get::new(target()).timeout(t);
        assert_eq!(test.judge(b"HTTP/1.0 200 OK\r\n\r\nx", fast), Ok(()));
        assert_eq!(test.judge(b"HTTP/1.1 200 OK\r\n\r\nx", fast), Ok(()));
        // The connection was made in time: a slow answer is still an answer.
        assert_eq!(test.judge(b"HTTP/1.0 200 OK\r\n\r\nx", 2 * t), Ok(()));
        assert_eq!(
            test.judge(b"HTTP/1.1 404 Not Found\r\n\r\n", fast),
            Err("bad answer: Some(\"HTTP/1.1 404 Not Found\")".into())
        );
        assert_eq!(test.judge(b"", fast), Err("bad answer: None".into()));

        let page = "<p>page</p>";
        let lab = Get::new(target())
            .timeout(t)
            .expecting(Expect::Page(page))
            .deadline(Deadline::Whole)
            .errors(Errors::Kind);
        assert_eq!(
            lab.judge(b"HTTP/1.1 200 OK\r\n\r\n<p>page</p>", fast),
            Ok(())
        );
        assert_eq!(
            lab.judge(b"HTTP/1.1 200 OK\r\n\r\n<p>page</p>", t + fast),
            Err("too slow".into())
        );
        for wrong in [
            &b"HTTP/1.0 200 OK\r\n\r\n<p>page</p>"[..],
            b"HTTP/1.1 200 OK\r\n\r\nother",
            b"HTTP/1.1 502 Bad Gateway\r\n\r\n<p>page</p>",
        ] {
            assert_eq!(lab.judge(wrong, fast), Err("bad answer".into()));
        }

        let any = Get::new(target()).expecting(Expect::Anything);
        assert_eq!(any.judge(b"HTTP/1.1 404 Not Found\r\n\r\n", fast), Ok(()));
    }
}
