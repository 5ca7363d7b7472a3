//! The HTTP check: a hand-written HTTP/1.1 GET over a fresh TCP connection.
//!
//! It sends `Connection: close` and reads one response: status line and headers (at most
//! [`MAX_HEAD`] bytes), then the body by `Content-Length`, by chunks, or to EOF, stopping at
//! [`MAX_BODY`] bytes. Anything malformed fails the probe; nothing the server sends panics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{HttpCheck, Probe, ProbeFuture, ProbeResult, io_reason, timeout_reason};

/// The most of a body read and searched; the rest is left unread.
pub const MAX_BODY: usize = 64 * 1024;

/// The most read while looking for the end of the headers.
const MAX_HEAD: usize = 16 * 1024;

/// The status codes accepted when [`HttpCheck::expect_status`] is empty.
const DEFAULT_STATUS: std::ops::RangeInclusive<u16> = 200..=399;

/// Probes with an HTTP/1.1 GET and judges the response by an [`HttpCheck`].
#[derive(Debug, Clone)]
pub struct HttpProbe {
    /// Shared with the config and every other probe of the same check.
    check: Arc<HttpCheck>,
}

impl HttpProbe {
    /// A probe for `check`.
    pub fn new(check: impl Into<Arc<HttpCheck>>) -> Self {
        Self {
            check: check.into(),
        }
    }
}

impl Probe for HttpProbe {
    fn probe(&self, target: SocketAddr, timeout: Duration) -> ProbeFuture<'_> {
        Box::pin(async move {
            let start = Instant::now();
            let outcome = tokio::time::timeout(timeout, exchange(&self.check, target)).await;
            let latency = start.elapsed();
            match outcome {
                Ok(Ok(response)) => judge(&self.check, &response, latency),
                Ok(Err(reason)) => ProbeResult::fail(latency, reason),
                Err(_) => ProbeResult::fail(timeout, timeout_reason(timeout)),
            }
        })
    }
}

/// What the judge needs from a response.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    /// The decoded body, at most [`MAX_BODY`] bytes.
    body: Vec<u8>,
}

/// Connects, sends the request and reads the response; `Err` is the failure reason.
async fn exchange(check: &HttpCheck, target: SocketAddr) -> Result<Response, String> {
    let request = request(check, target)?;
    let mut stream = TcpStream::connect(target)
        .await
        .map_err(|e| io_reason(&e))?;
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending request: {}", io_reason(&e)))?;
    read_response(&mut stream).await
}

/// The request bytes; refuses a path or host that would split the request.
fn request(check: &HttpCheck, target: SocketAddr) -> Result<String, String> {
    let path = if check.path.is_empty() {
        "/"
    } else {
        check.path.as_str()
    };
    let host = match &check.host {
        Some(host) => host.clone(),
        None => default_host(target),
    };
    if path.chars().any(char::is_control) {
        return Err("path contains a control character".into());
    }
    if host.chars().any(char::is_control) {
        return Err("host contains a control character".into());
    }
    Ok(format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: gateway-health\r\nConnection: close\r\n\r\n"
    ))
}

/// `ip` for port 80, else `ip:port` (IPv6 in brackets either way).
fn default_host(target: SocketAddr) -> String {
    match (target, target.port()) {
        (SocketAddr::V4(a), 80) => a.ip().to_string(),
        (SocketAddr::V6(a), 80) => format!("[{}]", a.ip()),
        _ => target.to_string(),
    }
}

/// Checks the status against the accepted ranges, then the body against the substring.
fn judge(check: &HttpCheck, response: &Response, latency: Duration) -> ProbeResult {
    let status = response.status;
    let accepted = if check.expect_status.is_empty() {
        DEFAULT_STATUS.contains(&status)
    } else {
        check.expect_status.iter().any(|r| r.contains(&status))
    };
    if !accepted {
        return ProbeResult::fail(latency, format!("status {status}"));
    }
    if let Some(needle) = &check.body_contains
        && !contains(&response.body, needle.as_bytes())
    {
        return ProbeResult::fail(latency, format!("body lacks \"{needle}\""));
    }
    ProbeResult::pass(latency, format!("HTTP {status}"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// How the body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (1xx, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the server closes.
    UntilClose,
}

/// The parts of the status line and headers the probe uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    status: u16,
    framing: Framing,
}

/// Reads one response: the head, then the body as its framing says, up to [`MAX_BODY`].
async fn read_response<R: AsyncRead + Unpin>(r: &mut R) -> Result<Response, String> {
    let mut buf = Vec::with_capacity(1024);
    let (head_end, body_start) = loop {
        if let Some(found) = find_head_end(&buf) {
            break found;
        }
        if buf.len() >= MAX_HEAD {
            return Err(format!("response headers exceed {MAX_HEAD} bytes"));
        }
        if read_more(r, &mut buf).await? == 0 {
            return Err(if buf.is_empty() {
                "connection closed without a response".into()
            } else {
                "connection closed inside the response headers".into()
            });
        }
    };
    let head = parse_head(&buf[..head_end])?;
    let mut body = buf.split_off(body_start);
    let body = match head.framing {
        Framing::Empty => Vec::new(),
        Framing::Length(len) => {
            let want = len.min(MAX_BODY);
            while body.len() < want {
                if read_more(r, &mut body).await? == 0 {
                    return Err(format!("body ended after {} of {len} bytes", body.len()));
                }
            }
            body.truncate(want);
            body
        }
        Framing::Chunked => loop {
            let (decoded, complete) = dechunk(&body)?;
            if complete || body.len() >= MAX_BODY {
                break decoded;
            }
            if read_more(r, &mut body).await? == 0 {
                return Err("connection closed inside the chunked body".into());
            }
        },
        Framing::UntilClose => {
            while body.len() < MAX_BODY {
                if read_more(r, &mut body).await? == 0 {
                    break;
                }
            }
            body.truncate(MAX_BODY);
            body
        }
    };
    Ok(Response {
        status: head.status,
        body,
    })
}

/// Appends what one read returns; `Ok(0)` at EOF.
async fn read_more<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> Result<usize, String> {
    buf.reserve(8 * 1024);
    r.read_buf(buf)
        .await
        .map_err(|e| format!("reading response: {}", io_reason(&e)))
}

/// Where the head ends and the body starts: at the first empty line, `\r\n\r\n` or a
/// lenient bare `\n\n`.
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    buf.iter().enumerate().find_map(|(i, &b)| {
        if b != b'\n' {
            return None;
        }
        match &buf[i + 1..] {
            [b'\n', ..] => Some((i, i + 2)),
            [b'\r', b'\n', ..] => Some((i, i + 3)),
            _ => None,
        }
    })
}

/// Parses the status line and the framing headers.
fn parse_head(head: &[u8]) -> Result<Head, String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    let status = parse_status_line(status_line)
        .ok_or_else(|| format!("malformed status line {:?}", snippet(status_line)))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            let len: usize = value
                .parse()
                .map_err(|_| format!("invalid Content-Length {:?}", snippet(value)))?;
            if content_length.is_some_and(|prev| prev != len) {
                return Err("conflicting Content-Length headers".into());
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked |= value
                .split(',')
                .any(|c| c.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    // RFC 9112 6.3: no body for 1xx/204/304; chunked overrides Content-Length.
    let framing = match (status, chunked, content_length) {
        (100..=199 | 204 | 304, _, _) => Framing::Empty,
        (_, true, _) => Framing::Chunked,
        (_, false, Some(len)) => Framing::Length(len),
        (_, false, None) => Framing::UntilClose,
    };
    Ok(Head { status, framing })
}

/// The code from `HTTP/1.x NNN reason`.
fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with("HTTP/") || code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    code.parse().ok().filter(|c| *c >= 100)
}

/// At most 40 characters of server input, for a reason string.
fn snippet(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Decodes a chunked body: the data so far and whether the last chunk was seen. Trailers
/// are ignored.
fn dechunk(raw: &[u8]) -> Result<(Vec<u8>, bool), String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut pos = 0;
    loop {
        let Some(eol) = raw[pos..].iter().position(|&b| b == b'\n') else {
            return Ok((out, false));
        };
        let line = String::from_utf8_lossy(&raw[pos..pos + eol]);
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("malformed chunk size {:?}", snippet(size_text)))?;
        pos += eol + 1;
        if size == 0 {
            return Ok((out, true));
        }
        let available = raw.len() - pos;
        if size > available {
            out.extend_from_slice(&raw[pos..]);
            return Ok((out, false));
        }
        out.extend_from_slice(&raw[pos..pos + size]);
        pos += size;
        // The CRLF that closes the chunk's data.
        match &raw[pos..] {
            [b'\r', b'\n', ..] => pos += 2,
            [b'\n', ..] => pos += 1,
            [] | [b'\r'] => return Ok((out, false)),
            _ => return Err("chunk data longer than its size".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(2);
    const SHORT: Duration = Duration::from_millis(200);

    fn check(path: &str) -> HttpCheck {
        HttpCheck {
            path: path.into(),
            host: None,
            expect_status: vec![200..=299],
            body_contains: None,
        }
    }

    fn with_body(needle: &str) -> HttpCheck {
        HttpCheck {
            body_contains: Some(needle.into()),
            ..check("/health")
        }
    }

    /// A loopback server that runs `handler` on every connection.
    async fn server<F, Fut>(handler: F) -> SocketAddr
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(handler(stream));
            }
        });
        addr
    }

    /// Reads the request head; returns it.
    async fn read_request(s: &mut TcpStream) -> Vec<u8> {
        let mut buf = Vec::new();
        while find_head_end(&buf).is_none() {
            if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                break;
            }
        }
        buf
    }

    /// A server that answers every request with `response` and closes.
    async fn respond(response: &'static [u8]) -> SocketAddr {
        server(move |mut s| async move {
            read_request(&mut s).await;
            let _ = s.write_all(response).await;
        })
        .await
    }

    async fn probe(check: HttpCheck, target: SocketAddr, timeout: Duration) -> ProbeResult {
        HttpProbe::new(check).probe(target, timeout).await
    }

    #[tokio::test]
    async fn sends_the_documented_request() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let target = server(move |mut s| {
            let tx = tx.clone();
            async move {
                tx.send(read_request(&mut s).await).unwrap();
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        })
        .await;
        let r = probe(check("/healthz"), target, TIMEOUT).await;
        assert_eq!(r.reason, "HTTP 200");
        assert!(r.ok);
        let want = format!(
            "GET /healthz HTTP/1.1\r\nHost: {target}\r\nUser-Agent: gateway-health\r\n\
             Connection: close\r\n\r\n"
        );
        assert_eq!(String::from_utf8(rx.recv().await.unwrap()).unwrap(), want);

        let custom = HttpCheck {
            host: Some("api.example".into()),
            ..check("")
        };
        probe(custom, target, TIMEOUT).await;
        let got = String::from_utf8(rx.recv().await.unwrap()).unwrap();
        assert!(
            got.starts_with("GET / HTTP/1.1\r\nHost: api.example\r\n"),
            "{got:?}"
        );
    }

    #[test]
    fn default_host_drops_port_80() {
        let cases = [
            ("198.18.0.11:80", "198.18.0.11"),
            ("198.18.0.11:8080", "198.18.0.11:8080"),
            ("[fd00::11]:80", "[fd00::11]"),
            ("[fd00::11]:8080", "[fd00::11]:8080"),
        ];
        for (addr, want) in cases {
            assert_eq!(default_host(addr.parse().unwrap()), want);
        }
    }

    #[test]
    fn refuses_request_splitting() {
        let target = "127.0.0.1:80".parse().unwrap();
        assert!(request(&check("/x\r\nEvil: 1"), target).is_err());
        let bad_host = HttpCheck {
            host: Some("a\nb".into()),
            ..check("/")
        };
        assert!(request(&bad_host, target).is_err());
    }

    #[tokio::test]
    async fn wrong_status_fails() {
        let target =
            respond(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n").await;
        let r = probe(check("/"), target, TIMEOUT).await;
        assert!(!r.ok);
        assert_eq!(r.reason, "status 503");
    }

    #[tokio::test]
    async fn status_ranges() {
        let target = respond(b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n").await;
        // (expect_status, ok)
        let cases = [
            (vec![], true), // default 200..=399
            (vec![200..=299], false),
            (vec![200..=200, 300..=302], true),
            (vec![302..=302], true),
        ];
        for (ranges, ok) in cases {
            let c = HttpCheck {
                expect_status: ranges.clone(),
                ..check("/")
            };
            let r = probe(c, target, TIMEOUT).await;
            assert_eq!(r.ok, ok, "{ranges:?}: {r:?}");
        }
    }

    #[tokio::test]
    async fn body_substring() {
        let target = respond(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nall ok!").await;
        let r = probe(with_body("ok"), target, TIMEOUT).await;
        assert!(r.ok, "{r:?}");
        let r = probe(with_body("healthy"), target, TIMEOUT).await;
        assert!(!r.ok);
        assert_eq!(r.reason, "body lacks \"healthy\"");
    }

    #[tokio::test]
    async fn body_is_read_to_eof_without_length() {
        let target = respond(b"HTTP/1.1 200 OK\r\n\r\nstatus: ok").await;
        let r = probe(with_body("ok"), target, TIMEOUT).await;
        assert!(r.ok, "{r:?}");
    }

    #[tokio::test]
    async fn content_length_ends_the_body_without_eof() {
        // The server keeps the connection open: the probe must stop at Content-Length.
        let target = server(|mut s| async move {
            read_request(&mut s).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        })
        .await;
        let r = probe(with_body("ok"), target, TIMEOUT).await;
        assert!(r.ok, "{r:?}");
        assert!(r.latency < TIMEOUT);
    }

    #[tokio::test]
    async fn bytes_past_content_length_are_not_body() {
        let target = respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nnoextra ok").await;
        let r = probe(with_body("ok"), target, TIMEOUT).await;
        assert_eq!(r.reason, "body lacks \"ok\"");
    }

    #[tokio::test]
    async fn short_body_fails() {
        let target = respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok").await;
        let r = probe(check("/"), target, TIMEOUT).await;
        assert!(!r.ok);
        assert_eq!(r.reason, "body ended after 2 of 10 bytes");
    }

    #[tokio::test]
    async fn chunked_body_is_decoded() {
        // "he" + "althy" across two chunks: only found once decoded.
        let target = respond(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n5;x=y\r\nalthy\r\n0\r\n\r\n",
        )
        .await;
        let r = probe(with_body("healthy"), target, TIMEOUT).await;
        assert!(r.ok, "{r:?}");
    }

    #[tokio::test]
    async fn endless_body_stops_at_the_cap() {
        let target = server(|mut s| async move {
            read_request(&mut s).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
            let block = [b'a'; 4096];
            while s.write_all(&block).await.is_ok() {}
        })
        .await;
        let r = probe(with_body("a"), target, TIMEOUT).await;
        assert!(r.ok, "{r:?}");
        let r = probe(with_body("b"), target, TIMEOUT).await;
        assert_eq!(r.reason, "body lacks \"b\"");
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let target = server(|mut s| async move {
            read_request(&mut s).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        })
        .await;
        let r = probe(check("/"), target, SHORT).await;
        assert!(!r.ok);
        assert_eq!(r.reason, "timeout after 200ms");
        assert_eq!(r.latency, SHORT);
    }

    #[tokio::test]
    async fn slow_body_times_out() {
        let target = server(|mut s| async move {
            read_request(&mut s).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
                .await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            let _ = s.write_all(b"ok").await;
        })
        .await;
        let r = probe(check("/"), target, SHORT).await;
        assert_eq!(r.reason, "timeout after 200ms");
    }

    #[tokio::test]
    async fn refused_fails() {
        let target = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        let r = probe(check("/"), target, TIMEOUT).await;
        assert!(!r.ok);
        assert_eq!(r.reason, "connection refused");
    }

    #[tokio::test]
    async fn bad_responses_fail_without_panicking() {
        // (server bytes, reason)
        let cases: &[(&'static [u8], &str)] = &[
            (b"", "connection closed without a response"),
            (
                b"HTTP/1.1 200 OK\r\nContent-",
                "connection closed inside the response headers",
            ),
            (b"hello\r\n\r\n", "malformed status line \"hello\""),
            (
                b"HTTP/1.1 2000 OK\r\n\r\n",
                "malformed status line \"HTTP/1.1 2000 OK\"",
            ),
            (
                b"HTTP/1.1 099 Hm\r\n\r\n",
                "malformed status line \"HTTP/1.1 099 Hm\"",
            ),
            (
                b"\xff\xfe\r\n\r\n",
                "malformed status line \"\u{fffd}\u{fffd}\"",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "invalid Content-Length \"-1\"",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok",
                "conflicting Content-Length headers",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "malformed chunk size \"zz\"",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n",
                "malformed chunk size \"ffffffffffffffffffff\"",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok",
                "connection closed inside the chunked body",
            ),
        ];
        for &(bytes, reason) in cases {
            let target = respond(bytes).await;
            let r = probe(check("/"), target, TIMEOUT).await;
            assert!(!r.ok, "{bytes:?}");
            assert_eq!(r.reason, reason, "{bytes:?}");
        }
    }

    #[tokio::test]
    async fn oversized_head_fails() {
        let mut bytes = b"HTTP/1.1 200 OK\r\n".to_vec();
        while bytes.len() < 2 * MAX_HEAD {
            bytes.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let err = read_response(&mut bytes.as_slice()).await.unwrap_err();
        assert_eq!(err, format!("response headers exceed {MAX_HEAD} bytes"));
    }

    #[tokio::test]
    async fn reads_responses() {
        // (wire bytes, status, body)
        let cases: &[(&[u8], u16, &[u8])] = &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, b"ok"),
            (b"HTTP/1.0 200 OK\r\n\r\nto eof", 200, b"to eof"),
            (b"HTTP/1.1 200\r\ncontent-length:  3 \r\n\r\nabcdef", 200, b"abc"),
            (b"HTTP/1.1 200 OK\n\nbare lf", 200, b"bare lf"),
            (b"HTTP/1.1 204 No Content\r\n\r\nignored", 204, b""),
            (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", 304, b""),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 1\r\n\r\n3\r\nabc\r\n0\r\nTrailer: x\r\n\r\n",
                200,
                b"abc",
            ),
        ];
        for &(wire, status, body) in cases {
            let got = read_response(&mut &wire[..]).await;
            assert_eq!(
                got,
                Ok(Response {
                    status,
                    body: body.to_vec()
                }),
                "{wire:?}"
            );
        }
    }

    #[tokio::test]
    async fn long_content_length_is_capped() {
        let mut wire = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            10 * MAX_BODY
        )
        .into_bytes();
        wire.resize(wire.len() + 2 * MAX_BODY, b'x');
        let got = read_response(&mut wire.as_slice()).await.unwrap();
        assert_eq!(got.body.len(), MAX_BODY);
    }

    #[test]
    fn dechunk_partial_input() {
        // (raw, decoded, complete)
        let cases: &[(&[u8], &[u8], bool)] = &[
            (b"", b"", false),
            (b"5\r\nhel", b"hel", false),
            (b"5\r\nhello", b"hello", false),
            (b"5\r\nhello\r", b"hello", false),
            (b"5\r\nhello\r\n", b"hello", false),
            (b"5\r\nhello\r\n0\r\n", b"hello", true),
            (b"0\r\n\r\n", b"", true),
        ];
        for &(raw, decoded, complete) in cases {
            assert_eq!(dechunk(raw), Ok((decoded.to_vec(), complete)), "{raw:?}");
        }
        assert!(dechunk(b"2\r\nabc\r\n").is_err());
    }
}
