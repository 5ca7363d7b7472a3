//! Headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`,
//! which `cargo xtask setup` installs), inside a lab namespace so that the page reaches
//! the agent's admin API on that namespace's loopback.
use std::{
    net::SocketAddr,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const PORT: u16 = 9515;

/// Whether the browser and its driver are installed.
pub fn available() -> bool {
    std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists()
}

/// A browser session; the driver is killed by PID when dropped (the browser with the
/// session, and the lab's teardown kills anything left in its namespace).
pub struct Browser {
    netns: String,
    driver: Child,
    session: String,
}

impl Browser {
    /// Starts the driver in `netns` and opens a headless browser (as root it needs
    /// `--no-sandbox`).
    pub fn start(netns: &str) -> Browser {
        let driver = std::process::Command::new("ip")
            .args(["netns", "exec", netns, CHROMEDRIVER])
            .arg(format!("--port={PORT}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut b = Browser {
            netns: netns.to_string(),
            driver,
            session: String::new(),
        };
        lab::wait_for("chromedriver", Duration::from_secs(10), || {
            b.call("GET", "/status", None)
                .is_ok_and(|v| v["value"]["ready"] == json!(true))
        })
        .expect("chromedriver ready");
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,1000"]
        }}}});
        let v = b.call("POST", "/session", Some(caps)).expect("new session");
        b.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        b
    }

    /// One WebDriver command, from a thread inside the namespace.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let (method, path) = (method.to_string(), path.to_string());
        let body = body.map(|b| b.to_string());
        lab::client::in_netns(&self.netns, move || {
            let (code, text) = http(&method, &path, body.as_deref()).map_err(|e| e.to_string())?;
            let v: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
            if code != 200 {
                return Err(format!("{method} {path}: {code} {v}"));
            }
            Ok(v)
        })
        .join()
        .expect("webdriver thread")
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let p = format!("/session/{}{path}", self.session);
        self.call(method, &p, body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body) in the page; its return value.
    pub fn eval(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )["value"]
            .clone()
    }

    /// Evaluates `script` until it returns `true`, for up to `timeout`.
    pub fn wait_true(&self, what: &str, script: &str, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.eval(script) == json!(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{what}: not within {timeout:?}");
    }

    /// A PNG of the window.
    pub fn screenshot(&self) -> Vec<u8> {
        let v = self.session_call("GET", "/screenshot", None);
        base64(v["value"].as_str().expect("base64 PNG"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One HTTP/1.1 exchange with the driver on this namespace's loopback. The driver keeps
/// connections open, so the body is read by its Content-Length, not to the end.
fn http(method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, String)> {
    use std::io::{BufRead, BufReader, Read, Write};
    let addr: SocketAddr = ([127, 0, 0, 1], PORT).into();
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let code = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {line:?}")))?;
    let mut length = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut buf = vec![0u8; length];
    r.read_exact(&mut buf)?;
    Ok((code, String::from_utf8_lossy(&buf).into_owned()))
}

/// Standard base64 (with padding) to bytes.
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let clean: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for chunk in clean.chunks(4) {
        let n = chunk.iter().take_while(|c| **c != b'=').count();
        let mut acc = 0u32;
        for (i, c) in chunk.iter().take(n).enumerate() {
            acc |= u32::from(value(*c)) << (18 - 6 * i);
        }
        out.extend(&acc.to_be_bytes()[1..n.max(1)]);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(super::base64("aGk="), b"hi");
        assert_eq!(super::base64("aGV5"), b"hey");
        assert_eq!(super::base64("aA=="), b"h");
    }
}
