//! Raw TCP echo: every byte comes back, except that a line `whoami` is answered with the
//! identity JSON (so a client can tell which pod a TCP connection reached). The server
//! never speaks first, so protocol sniffing in the proxy behaves as with real TCP apps.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::Identity;

pub async fn serve(listener: TcpListener, identity: Arc<Identity>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let identity = identity.clone();
        tokio::spawn(async move {
            let _ = echo(stream, &identity).await;
        });
    }
}

async fn echo(stream: TcpStream, identity: &Identity) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return w.shutdown().await;
        }
        if line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            == Some(b"whoami")
        {
            let mut json = serde_json::to_vec(identity).unwrap_or_default();
            json.push(b'\n');
            w.write_all(&json).await?;
        } else {
            w.write_all(&line).await?;
        }
    }
}
