//! Listening sockets: bound here, or inherited from the process being upgraded.
//!
//! A zero-downtime upgrade follows Pingora's scheme: the new process waits on a Unix socket
//! (`--upgrade-sock`), the old one sends its listening sockets there when it gets SIGQUIT,
//! stops accepting and drains. Both processes accept on the same sockets meanwhile, so no
//! connection is refused. Sockets are matched by address, so the new process must listen
//! on the same `IP:port` as the old one.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{IntoRawFd, RawFd};
use std::path::Path;

use pingora::server::{Fds, ListenFds};

/// One listening socket for a service.
#[derive(Debug)]
pub enum Listen {
    /// Bound by this process.
    Bound(TcpListener),
    /// Received from the previous process.
    Inherited {
        /// Its address, the key both processes know it by.
        addr: SocketAddr,
        /// The descriptor, owned by this process since it was received.
        fd: RawFd,
    },
}

impl From<TcpListener> for Listen {
    fn from(l: TcpListener) -> Self {
        Listen::Bound(l)
    }
}

impl Listen {
    /// Adds the socket to `fds` under its address (Pingora's listeners take it from there)
    /// and returns the address.
    pub(crate) fn hand_over(
        self,
        fds: &ListenFds,
        keys: &mut Vec<String>,
    ) -> std::io::Result<SocketAddr> {
        let (addr, fd) = match self {
            Listen::Bound(l) => (l.local_addr()?, l.into_raw_fd()),
            Listen::Inherited { addr, fd } => (addr, fd),
        };
        let key = addr.to_string();
        fds.lock().add(key.clone(), fd);
        keys.push(key);
        Ok(addr)
    }
}

/// Binds a TCP listener (port 0 picks a free port), non-blocking, ready to hand over.
pub fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let l = TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// The sockets an old process handed over, until each is claimed by address.
pub struct Inherited {
    fds: Fds,
    claimed: HashSet<String>,
}

impl std::fmt::Debug for Inherited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inherited")
            .field("claimed", &self.claimed)
            .finish_non_exhaustive()
    }
}

impl Inherited {
    /// Waits (about five seconds at most) on `path` for the old process's sockets.
    pub fn receive(path: &Path) -> std::io::Result<Self> {
        let mut fds = Fds::new();
        let at = path.to_string_lossy().into_owned();
        fds.get_from_sock(at.as_str()).map_err(|e| {
            std::io::Error::other(format!(
                "no listening sockets arrived on {} ({e}); send SIGQUIT to the running sluice \
                 started with the same --upgrade-sock once this one is waiting",
                path.display()
            ))
        })?;
        Ok(Self {
            fds,
            claimed: HashSet::new(),
        })
    }

    /// The inherited socket for `addr` when there is one, else a newly bound socket.
    pub fn listen(&mut self, addr: &str) -> std::io::Result<Listen> {
        let resolved = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{addr} resolves to no address")))?;
        let key = resolved.to_string();
        match self.fds.get(&key) {
            Some(fd) => {
                self.claimed.insert(key);
                Ok(Listen::Inherited {
                    addr: resolved,
                    fd: *fd,
                })
            }
            None => bind(addr).map(Listen::Bound),
        }
    }

    /// Closes the sockets no listener claimed: left open, they would queue connections
    /// nobody accepts. Returns their addresses.
    pub fn close_unclaimed(mut self) -> Vec<String> {
        self.fds.close_unclaimed(&self.claimed)
    }
}

/// Binds `addr`, or takes it from `inherited` during an upgrade.
pub fn listen(addr: &str, inherited: Option<&mut Inherited>) -> std::io::Result<Listen> {
    match inherited {
        Some(i) => i.listen(addr),
        None => bind(addr).map(Listen::Bound),
    }
}

/// Sends this process's listening sockets to the process waiting on `path`.
pub fn send(fds: &ListenFds, path: &Path) -> std::io::Result<()> {
    let path = path.to_string_lossy().into_owned();
    fds.lock()
        .send_to_sock(path.as_str())
        .map(|_| ())
        .map_err(|e| std::io::Error::other(format!("sending listening sockets to {path}: {e}")))
}
