//! What the HTTP benches share: `mesh_proxy::http::serve` on a loopback listener.

use std::{net::SocketAddr, sync::Arc};

use mesh_proxy::{
    Runtime,
    config::{cluster::Cluster, http::HttpConnectionManager},
    listener::ConnInfo,
};
use tokio::net::TcpListener;

/// Serves `hcm` (routing to `cluster`) on a fresh 127.0.0.1 port, one task per
/// connection as the listener does; returns the address.
pub async fn serve_proxy(hcm: HttpConnectionManager, cluster: Cluster) -> SocketAddr {
    let rt = Runtime::for_tests();
    rt.clusters.add_or_update(cluster);
    let hcm = Arc::new(hcm);
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("local address");
    tokio::spawn(async move {
        loop {
            let (s, peer) = l.accept().await.expect("accept");
            let _ = s.set_nodelay(true);
            let conn = ConnInfo::new("bench", s.local_addr().expect("local address"), peer);
            tokio::spawn(mesh_proxy::http::serve(s, conn, hcm.clone(), rt.clone()));
        }
    });
    addr
}
