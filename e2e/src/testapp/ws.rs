//! WebSocket echo on `/ws` (HTTP/1.1 upgrade): text and binary messages come back as
//! sent; the text message `whoami` is answered with the identity JSON.

use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::Identity;

/// Whether a request asks for a WebSocket upgrade.
pub fn is_upgrade(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The `Sec-WebSocket-Accept` value for the client's key.
pub fn accept_key(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()))
}

/// Runs the echo once hyper has switched protocols.
pub async fn echo(on_upgrade: OnUpgrade, identity: Arc<Identity>) {
    let Ok(upgraded) = on_upgrade.await else {
        return;
    };
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
    while let Some(Ok(msg)) = ws.next().await {
        let reply = match msg {
            Message::Text(t) if t.as_str() == "whoami" => {
                Message::text(serde_json::to_string(&*identity).unwrap_or_default())
            }
            Message::Text(_) | Message::Binary(_) => msg,
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        if ws.send(reply).await.is_err() {
            break;
        }
    }
}
