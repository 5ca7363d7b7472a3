//! The one HTTP client of the admin API, used by the CLI (`gateway status`, `backend`,
//! `reload`) and the tests: a plain HTTP/1.1 request on a fresh connection.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use thiserror::Error;

/// How long a request may take, connecting included.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum ClientError {
    /// The connection was refused or timed out: the message says all there is to say.
    #[error("gateway is not running (nothing listens on {addr})")]
    NotRunning { addr: SocketAddr },
    #[error("talking to {addr}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} did not answer with HTTP")]
    NotHttp { addr: SocketAddr },
}

/// The status code and body of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub code: u16,
    pub body: String,
}

/// Sends `method path` to the API at `addr`, with an `Authorization` header value (such as
/// `Bearer <token>`) and a JSON body when given.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: Option<&str>,
) -> Result<Answer, ClientError> {
    request_within(addr, method, path, authorization, body, TIMEOUT)
}

/// [`request`] with its own limit on connecting, and on each read and write.
pub fn request_within(
    addr: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    let io = |source| ClientError::Io { addr, source };
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|_| ClientError::NotRunning { addr })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let content = body
        .map(|b| {
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            )
        })
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{content}Connection: close\r\n\r\n{}",
        body.unwrap_or("")
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(ClientError::NotHttp { addr })?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(ClientError::NotHttp { addr })?;
    Ok(Answer {
        code,
        body: body.to_string(),
    })
}
