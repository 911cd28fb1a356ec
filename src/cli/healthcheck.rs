//! `regcache healthcheck`: exit 0 when the daemon's `/healthz` answers
//! (for container HEALTHCHECKs, where no curl is installed).

use std::net::SocketAddr;
use std::time::Duration;

/// A wildcard listen address is reached through loopback.
pub fn reachable_addr(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    }
}

/// One plain HTTP/1.1 GET of `/healthz` on the admin listener.
pub fn healthcheck(admin: SocketAddr) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let target = reachable_addr(admin);
    let mut stream = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    if head.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(std::io::Error::other(
            String::from_utf8_lossy(&head).into_owned(),
        ))
    }
}
