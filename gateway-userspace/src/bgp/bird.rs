//! BIRD's control socket (what `birdc` speaks): one command, one reply.
//!
//! BIRD greets with `0001 BIRD <version> ready.`; every reply is lines of a 4-digit code and
//! text, `-` after the code on every line but the last (a line starting with a space
//! continues the one before). Codes from 8000 up are errors: 8xxx at run time, 9xxx in
//! parsing the command. A reply is read up to `MAX_REPLY` bytes and within the timeout.
use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

/// Longest reply read (a `configure` answer is a few lines).
const MAX_REPLY: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("connecting to BIRD's control socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to BIRD")]
    Io(#[source] std::io::Error),
    #[error("BIRD answered with something that is not a reply: {0:?}")]
    Garbled(String),
    #[error("BIRD refused `{command}`: {code} {message}")]
    Refused {
        command: String,
        code: u16,
        message: String,
    },
}

/// A reply: its last code, and its lines' text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

/// Reads one reply. `Ok(None)`: the stream ended before it did.
pub fn read_reply(r: &mut impl BufRead) -> Result<Option<Reply>, BirdError> {
    let mut lines = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(BirdError::Io)? == 0 {
            return Ok(None);
        }
        let text = line.trim_end_matches(['\n', '\r']);
        if let Some(cont) = text.strip_prefix(' ') {
            lines.push(cont.to_string());
            continue;
        }
        let b = text.as_bytes();
        let garbled = || BirdError::Garbled(text.chars().take(200).collect());
        // Four digits and '-' or ' ': all ASCII, so the slices below fall on characters.
        if b.len() < 5 || !b[..4].iter().all(u8::is_ascii_digit) || !matches!(b[4], b'-' | b' ') {
            return Err(garbled());
        }
        let code: u16 = text[..4].parse().map_err(|_| garbled())?;
        lines.push(text[5..].to_string());
        if b[4] == b' ' {
            return Ok(Some(Reply { code, lines }));
        }
    }
}

/// Sends `command` to the BIRD listening on `socket` and returns its reply; a reply with an
/// error code is `Err(Refused)`.
pub fn command(socket: &Path, command: &str, timeout: Duration) -> Result<Reply, BirdError> {
    let stream = UnixStream::connect(socket).map_err(|source| BirdError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(BirdError::Io)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(BirdError::Io)?;
    let mut w = stream.try_clone().map_err(BirdError::Io)?;
    let mut r = BufReader::new(stream.take(MAX_REPLY));
    let ended = || BirdError::Garbled("the connection closed mid-reply".into());
    // The greeting.
    read_reply(&mut r)?.ok_or_else(ended)?;
    w.write_all(format!("{command}\n").as_bytes())
        .map_err(BirdError::Io)?;
    let reply = read_reply(&mut r)?.ok_or_else(ended)?;
    if reply.code >= 8000 {
        return Err(BirdError::Refused {
            command: command.to_string(),
            code: reply.code,
            message: reply.lines.join(" / "),
        });
    }
    Ok(reply)
}
