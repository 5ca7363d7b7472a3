//! The backend server of the namespace lab: answers every TCP line, HTTP request and UDP
//! datagram with its own name, so tests can tell which backend served them.
//!
//! `lab-server --name b1 [--port 80] [--port 8080] [--udp-addr 198.18.1.1]` binds each port
//! on `[::]` (dual stack) for TCP and UDP, prints `ready` once bound, and serves until killed.
//! UDP answers leave from the socket's address, so for direct server return each VIP gets a
//! socket of its own (`--udp-addr`): an answer from the backend's own address would not
//! match the client's flow.
//!
//! TCP: a connection that starts with an HTTP method gets one HTTP/1.1 response whose body is
//! `<name>\n` (path `/status/NNN` answers with that status); any other connection gets
//! `<name>\n` for every line it sends, until it closes, so it can stay open for a long time;
//! the line `peer` is answered with the address and port the connection comes from instead
//! (what a full-NAT backend sees).
use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    thread,
};

fn main() {
    let mut name = String::from("backend");
    let mut ports = Vec::new();
    let mut udp_addrs: Vec<std::net::IpAddr> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--name" => name = args.next().expect("--name needs a value"),
            "--udp-addr" => udp_addrs.push(
                args.next()
                    .and_then(|a| a.parse().ok())
                    .expect("--udp-addr needs an address"),
            ),
            "--port" => ports.push(
                args.next()
                    .and_then(|p| p.parse::<u16>().ok())
                    .expect("--port needs a number"),
            ),
            other => {
                eprintln!("lab-server: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    if ports.is_empty() {
        ports.push(80);
    }
    let mut handles = Vec::new();
    for port in ports {
        let tcp =
            TcpListener::bind(("::", port)).unwrap_or_else(|e| die(&format!("tcp {port}: {e}")));
        let udp = udp_socket((std::net::Ipv6Addr::UNSPECIFIED, port).into())
            .unwrap_or_else(|e| die(&format!("udp {port}: {e}")));
        let n = name.clone();
        handles.push(thread::spawn(move || serve_tcp(tcp, n)));
        let n = name.clone();
        handles.push(thread::spawn(move || serve_udp(udp, n)));
        for a in &udp_addrs {
            let sock = udp_socket((*a, port).into())
                .unwrap_or_else(|e| die(&format!("udp {a}:{port}: {e}")));
            let n = name.clone();
            handles.push(thread::spawn(move || serve_udp(sock, n)));
        }
    }
    println!("ready");
    for h in handles {
        let _ = h.join();
    }
}

/// A UDP socket that may share its port with sockets bound to other addresses (the
/// wildcard and the VIPs).
fn udp_socket(addr: std::net::SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn die(msg: &str) -> ! {
    eprintln!("lab-server: {msg}");
    std::process::exit(1)
}

fn serve_tcp(listener: TcpListener, name: String) {
    for conn in listener.incoming().flatten() {
        let n = name.clone();
        thread::spawn(move || {
            let _ = handle(conn, &n);
        });
    }
}

fn handle(conn: TcpStream, name: &str) -> std::io::Result<()> {
    // Each answer is one write of a whole line; no Nagle delay behind a delayed ACK.
    conn.set_nodelay(true)?;
    let mut out = conn.try_clone()?;
    let answer = format!("{name}\n");
    let peer = conn.peer_addr()?;
    let peer = format!(
        "{}\n",
        std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port())
    );
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(());
    }
    let http = ["GET ", "HEAD ", "POST "]
        .iter()
        .any(|m| line.starts_with(m));
    if http {
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        // Consume the headers.
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
                break;
            }
        }
        let status: u16 = path
            .strip_prefix("/status/")
            .and_then(|s| s.parse().ok())
            .unwrap_or(200);
        let response = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\
             Connection: close\r\n\r\n{answer}",
            answer.len()
        );
        out.write_all(response.as_bytes())?;
        return Ok(());
    }
    loop {
        if line.trim() == "peer" {
            out.write_all(peer.as_bytes())?;
        } else {
            out.write_all(answer.as_bytes())?;
        }
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
    }
}

fn serve_udp(sock: UdpSocket, name: String) {
    let mut buf = [0u8; 2048];
    let reply = format!("{name}\n");
    while let Ok((_, from)) = sock.recv_from(&mut buf) {
        let _ = sock.send_to(reply.as_bytes(), from);
    }
}
