//! Opening an upstream TCP socket with the cluster's socket options: the bind address
//! (`upstream_bind_config`; Istio's inbound clusters connect from 127.0.0.6 so the
//! capture rules let the proxy's own connection to the app through), freebind, TCP
//! keepalive, and `TCP_NODELAY` (latency over throughput on the proxy hop, as Envoy).

use std::{io, net::SocketAddr};

use socket2::SockRef;
use tokio::net::{TcpSocket, TcpStream};

use crate::config::cluster::{TcpKeepalive, UpstreamBind};

/// Connects to `addr`; the plain path (no bind, no keepalive) is tokio's own connect.
pub(crate) async fn open(
    addr: SocketAddr,
    bind: Option<&UpstreamBind>,
    keepalive: Option<&TcpKeepalive>,
) -> io::Result<TcpStream> {
    if bind.is_none() && keepalive.is_none() {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        return Ok(stream);
    }
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(b) = bind
        && let Some(source) = b.source_for(&addr)
    {
        if source.is_ipv4() != addr.is_ipv4() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "upstream_bind_config has no {} source address for {addr} (source {source})",
                    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
                ),
            ));
        }
        let sock = SockRef::from(&socket);
        if b.freebind {
            if source.is_ipv4() {
                sock.set_freebind_v4(true)?;
            } else {
                sock.set_freebind_v6(true)?;
            }
        }
        if source.port() == 0 {
            // Let connect() pick the port for the 4-tuple instead of reserving one per
            // source address at bind time: otherwise every bound connection takes a port
            // from one shared range and a busy inbound path runs out (Envoy does the same).
            bind_address_no_port(&socket);
        } else {
            socket.set_reuseaddr(true)?;
        }
        socket.bind(source)?;
    }
    if let Some(k) = keepalive {
        let mut params = socket2::TcpKeepalive::new();
        if let Some(t) = k.time {
            params = params.with_time(t);
        }
        if let Some(i) = k.interval {
            params = params.with_interval(i);
        }
        if let Some(p) = k.probes {
            params = params.with_retries(p);
        }
        SockRef::from(&socket).set_tcp_keepalive(&params)?;
    }
    let _ = socket.set_nodelay(true);
    socket.connect(addr).await
}

fn bind_address_no_port(socket: &TcpSocket) {
    use nix::sys::socket::{setsockopt, sockopt::IpBindAddressNoPort};
    if let Err(e) = setsockopt(socket, IpBindAddressNoPort, &true) {
        // Older kernels: binding still works, with a port reserved at bind time.
        tracing::debug!(error = %e, "IP_BIND_ADDRESS_NO_PORT not available");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_the_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bind = UpstreamBind {
            sources: vec!["127.0.0.6:0".parse().unwrap()],
            freebind: false,
        };
        let keepalive = TcpKeepalive {
            probes: Some(3),
            time: Some(std::time::Duration::from_secs(30)),
            interval: Some(std::time::Duration::from_secs(5)),
        };
        let (stream, accepted) =
            tokio::join!(open(addr, Some(&bind), Some(&keepalive)), listener.accept());
        let stream = stream.unwrap();
        let (_, peer) = accepted.unwrap();
        assert_eq!(peer.ip().to_string(), "127.0.0.6");
        assert_eq!(stream.local_addr().unwrap().ip().to_string(), "127.0.0.6");
        let sock = SockRef::from(&stream);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap().as_secs(), 30);
        assert_eq!(sock.tcp_keepalive_interval().unwrap().as_secs(), 5);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 3);
        assert!(stream.nodelay().unwrap());
    }

    #[tokio::test]
    async fn family_mismatch_is_an_error() {
        let bind = UpstreamBind {
            sources: vec!["127.0.0.6:0".parse().unwrap()],
            freebind: false,
        };
        let err = open("[::1]:9".parse().unwrap(), Some(&bind), None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no IPv6 source address"), "{err}");
    }

    #[test]
    fn source_follows_the_destination_family() {
        let bind = UpstreamBind {
            sources: vec!["127.0.0.6:0".parse().unwrap(), "[::6]:0".parse().unwrap()],
            freebind: false,
        };
        assert_eq!(
            bind.source_for(&"[::1]:80".parse().unwrap()),
            Some("[::6]:0".parse().unwrap())
        );
        assert_eq!(
            bind.source_for(&"10.0.0.1:80".parse().unwrap()),
            Some("127.0.0.6:0".parse().unwrap())
        );
    }
}
