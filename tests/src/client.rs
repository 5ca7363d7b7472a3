//! Talking to a VIP from inside a namespace: one-shot TCP and UDP exchanges with the lab's
//! servers, long-lived connections, and running code inside a network namespace.
use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Runs `f` on a thread that has entered `netns`; setns(2) only affects that thread.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        use std::os::fd::AsRawFd;
        // SAFETY: a valid namespace fd; CLONE_NEWNET only switches this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// One TCP exchange from `local_port` (0: any): connect, send a line, read the backend's
/// name. The socket closes with RST so thousands of them leave no TIME_WAIT behind. An error
/// while connecting says `connect: ` first (the connection never opened); any other came
/// after it had.
pub fn tcp_name(vip: SocketAddr, local_port: u16, timeout: Duration) -> std::io::Result<String> {
    let any: IpAddr = if vip.is_ipv6() {
        "::".parse().unwrap()
    } else {
        "0.0.0.0".parse().unwrap()
    };
    tcp_name_from(vip, SocketAddr::new(any, local_port), timeout)
}

/// [`tcp_name`] from `local` (an address of the namespace, and a port or 0).
pub fn tcp_name_from(
    vip: SocketAddr,
    local: SocketAddr,
    timeout: Duration,
) -> std::io::Result<String> {
    let domain = if vip.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if local.port() != 0 || !local.ip().is_unspecified() {
        s.bind(&SockAddr::from(local))?;
    }
    s.connect_timeout(&SockAddr::from(vip), timeout)
        .map_err(|e| std::io::Error::new(e.kind(), format!("connect: {e}")))?;
    s.set_linger(Some(Duration::ZERO))?;
    let mut t: TcpStream = s.into();
    t.set_read_timeout(Some(timeout))?;
    t.write_all(b"hi\n")?;
    let mut line = String::new();
    BufReader::new(&t).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::other("connection closed without an answer"));
    }
    Ok(line.trim().to_string())
}

/// One UDP request/response from `local_port`.
pub fn udp_name(vip: SocketAddr, local_port: u16, timeout: Duration) -> std::io::Result<String> {
    let any: IpAddr = if vip.is_ipv6() {
        "::".parse().unwrap()
    } else {
        "0.0.0.0".parse().unwrap()
    };
    let s = UdpSocket::bind(SocketAddr::new(any, local_port))?;
    s.set_read_timeout(Some(timeout))?;
    s.connect(vip)?;
    s.send(b"hi")?;
    let mut buf = [0u8; 256];
    let n = s.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

/// A long-lived connection: ask again and again on the same socket.
pub struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(vip: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let reader = BufReader::new(stream.try_clone()?);
        let mut c = Conn { stream, reader };
        c.ask()?; // the server answers per line; the first answer opens the exchange
        Ok(c)
    }

    /// The connection's source port.
    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().map_or(0, |a| a.port())
    }

    pub fn ask(&mut self) -> std::io::Result<String> {
        self.say("again")
    }

    /// The address the connection is with, as the client's kernel sees it.
    pub fn peer(&self) -> std::io::Result<SocketAddr> {
        self.stream.peer_addr()
    }

    /// The connection's own address.
    pub fn local(&self) -> std::io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    /// Sends `line` and returns the answer (`peer`: the address the backend sees).
    pub fn say(&mut self, line: &str) -> std::io::Result<String> {
        self.stream.write_all(format!("{line}\n").as_bytes())?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        if line.is_empty() {
            return Err(std::io::Error::other("closed"));
        }
        Ok(line.trim().to_string())
    }
}

/// An AF_PACKET socket on an interface of the calling thread's namespace: frames go out
/// exactly as given (the tests' hand-made and spoofed frames). Closed when dropped.
pub struct RawSender {
    fd: libc::c_int,
    sll: libc::sockaddr_ll,
}

impl RawSender {
    /// On `ifname`, bypassing the qdisc.
    pub fn open(ifname: &str) -> std::io::Result<RawSender> {
        let name = std::ffi::CString::new(ifname).map_err(std::io::Error::other)?;
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new socket, owned by the returned value; sockaddr_ll is plain data.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                std::ptr::addr_of!(one).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = index as i32;
            sll.sll_halen = 6;
            Ok(RawSender { fd, sll })
        }
    }

    /// Sends one Ethernet frame; whether it went out whole.
    pub fn send(&mut self, frame: &[u8]) -> bool {
        if frame.len() < 6 {
            return false;
        }
        self.sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: our socket; the frame and address outlive the call.
        let n = unsafe {
            libc::sendto(
                self.fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::addr_of!(self.sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        n == frame.len() as isize
    }
}

impl Drop for RawSender {
    fn drop(&mut self) {
        // SAFETY: our socket, closed once.
        unsafe { libc::close(self.fd) };
    }
}
