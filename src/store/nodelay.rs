//! TCP_NODELAY on the PostgreSQL connections, which sqlx 0.9.0 no longer sets (sqlx issue
//! 4335; fixed upstream after 0.9.0, the newest release in the registry).
//!
//! Without it Nagle's algorithm holds back the tail of any query message longer than one TCP
//! segment until the server acknowledges the rest, and the server delays that ACK by up to
//! 40 ms. A writer batch of a few hundred rows is such a message: measured here, a 640-row
//! append spent ~60 ms per flush with PostgreSQL idle in `ClientRead` most of that time.
//!
//! sqlx gives no access to its socket, so right after each new connection this sets the
//! option on every TCP socket of the process connected to the database's port. Setting it on
//! a socket that already has it, or on some other socket that happens to match, is harmless.

use std::os::fd::{BorrowedFd, RawFd};

/// Set TCP_NODELAY on every TCP socket of this process whose peer port is `port`.
/// Returns how many sockets were switched.
pub fn apply(port: u16) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut switched = 0;
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .map(|t| t.to_string_lossy().starts_with("socket:"))
            .unwrap_or(false);
        if !is_socket {
            continue;
        }
        // SAFETY: only getpeername/getsockopt/setsockopt are called through this borrow, and
        // only for its duration. If another thread closes the fd meanwhile (and the number is
        // reused), those calls fail or touch an unrelated socket's Nagle setting: no memory is
        // involved and nothing is owned or closed here.
        #[allow(unsafe_code)]
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&fd);
        let peer_port = sock
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.port());
        if peer_port == Some(port)
            && sock.tcp_nodelay().ok() == Some(false)
            && sock.set_tcp_nodelay(true).is_ok()
        {
            switched += 1;
        }
    }
    switched
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_the_sockets_connected_to_the_port_and_only_those() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let to_db = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let elsewhere = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        assert!(!to_db.nodelay().unwrap());
        assert!(apply(port) >= 1);
        assert!(to_db.nodelay().unwrap());
        assert!(!elsewhere.nodelay().unwrap());
    }
}
