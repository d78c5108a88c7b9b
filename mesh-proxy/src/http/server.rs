//! The downstream side: one hyper connection per accepted socket. HTTP/1.1 with
//! keep-alive, HTTP/2 by prior knowledge (h2c) or ALPN, automatic detection on
//! plaintext, upgrades; limits from the HCM (header size and count, HTTP/2 streams and
//! windows), the connection idle timeout, `max_requests_per_connection`, and a graceful
//! close when the listener drains.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::router::{ConnCtx, handle};
use crate::{
    config::http::{Codec, HttpConnectionManager},
    listener::{ConnInfo, TransportProtocol},
    runtime::Runtime,
};

/// Serves HTTP on an accepted connection until the client closes it, the idle timeout
/// fires, or the listener drains.
pub async fn serve<I>(io: I, conn: ConnInfo, hcm: Arc<HttpConnectionManager>, rt: Runtime)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tls = conn.transport_protocol == TransportProtocol::Tls;
    let alpn_h2 = conn.application_protocols.iter().any(|p| p == "h2");
    let cx = Arc::new(ConnCtx {
        hcm: hcm.clone(),
        peer: conn.peer,
        local: conn.destination(),
        original_dst: conn.original_dst,
        tls,
        sni: conn.server_name.clone(),
        rt: rt.clone(),
        rate_limits: Default::default(),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .half_close(false)
        .max_headers(hcm.max_headers_count as usize)
        .max_buf_size((hcm.max_request_headers_kb as usize * 1024).max(8192))
        .header_read_timeout(hcm.request_headers_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(hcm.max_request_headers_kb * 1024)
        .max_concurrent_streams(hcm.http2_max_concurrent_streams.or(Some(2_147_483_647)))
        .initial_stream_window_size(
            hcm.http2_initial_stream_window_size
                .or(Some(256 * 1024 * 1024)),
        )
        .initial_connection_window_size(
            hcm.http2_initial_connection_window_size
                .or(Some(256 * 1024 * 1024)),
        );
    let builder = match hcm.codec {
        Codec::Http1 => builder.http1_only(),
        Codec::Http2 => builder.http2_only(),
        // With TLS the protocol is what ALPN chose; on plaintext hyper detects the
        // HTTP/2 connection preface.
        Codec::Auto if tls && alpn_h2 => builder.http2_only(),
        Codec::Auto if tls => builder.http1_only(),
        Codec::Auto => builder,
    };

    let activity = Arc::new(Activity::default());
    let service = {
        let activity = activity.clone();
        service_fn(move |req| {
            let cx = cx.clone();
            let activity = activity.clone();
            async move {
                activity.active.fetch_add(1, Ordering::Relaxed);
                activity.total.fetch_add(1, Ordering::Relaxed);
                let resp = handle(req, cx).await;
                Ok::<_, Infallible>(resp.map(|b| b.hold(Box::new(Active(activity)))))
            }
        })
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);

    let idle = hcm.idle_timeout;
    let max_requests = hcm.max_requests_per_connection.map(u64::from);
    let max_duration = hcm
        .max_connection_duration
        .map(|d| tokio::time::Instant::now() + d);
    let mut drain = Box::pin(rt.drain.signaled());
    let mut check = tokio::time::interval(idle.map_or(Duration::from_secs(3600), |d| {
        (d / 2).max(Duration::from_millis(50))
    }));
    check.tick().await;
    let mut closing = false;
    let mut seen = 0u64;
    loop {
        tokio::select! {
            res = connection.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(peer = %conn.peer, error = %e, "downstream http connection ended with error");
                }
                return;
            }
            _ = &mut drain, if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            // Polled only when its timer fires, not on every wakeup of the connection.
            _ = crate::drain::woken_only(check.tick()), if !closing => {
                let total = activity.total.load(Ordering::Relaxed);
                let idle_now = activity.active.load(Ordering::Relaxed) == 0 && total == seen;
                let over_requests = max_requests.is_some_and(|m| total >= m);
                let over_duration = max_duration.is_some_and(|d| tokio::time::Instant::now() >= d);
                if (idle.is_some() && idle_now) || over_requests || over_duration {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                seen = total;
            }
        }
    }
}

/// Requests in flight and started on one connection (for the idle timeout).
#[derive(Default)]
struct Activity {
    active: AtomicUsize,
    total: AtomicU64,
}

/// One stream in flight; ends when hyper drops the response body.
struct Active(Arc<Activity>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}
