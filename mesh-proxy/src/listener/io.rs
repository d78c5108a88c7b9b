//! The downstream connection handed to network filters: the TCP stream plus the bytes
//! the listener filters already read while sniffing (TLS ClientHello, HTTP preface),
//! which are replayed before anything else is read from the socket.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// A downstream connection: `AsyncRead + AsyncWrite`, replaying sniffed bytes first.
#[derive(Debug)]
pub struct Io {
    prefix: Bytes,
    stream: TcpStream,
}

impl Io {
    pub fn new(stream: TcpStream) -> Self {
        Io {
            prefix: Bytes::new(),
            stream,
        }
    }

    /// A stream whose first reads return `prefix`.
    pub fn with_prefix(stream: TcpStream, prefix: Bytes) -> Self {
        Io { prefix, stream }
    }

    /// The socket (for addresses and socket options).
    pub fn tcp(&self) -> &TcpStream {
        &self.stream
    }

    /// The bytes not yet replayed, and the stream.
    pub fn into_parts(self) -> (Bytes, TcpStream) {
        (self.prefix, self.stream)
    }
}

impl AsyncRead for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    /// Half-close: sends FIN, the read side stays open.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn replays_prefix_then_reads_socket() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b" world").await.unwrap();
            c.shutdown().await.unwrap();
        });
        let (s, _) = l.accept().await.unwrap();
        let mut io = Io::with_prefix(s, Bytes::from_static(b"hello"));
        let mut out = String::new();
        io.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
        client.await.unwrap();
    }
}
