//! A TCP stream that tells HTTP/2 to batch small frames into one write.
//!
//! h2 copies a DATA frame into its write buffer only when the frame is small: up to 256 bytes
//! when the transport supports vectored writes, up to 1 KiB when it does not. A larger frame is
//! written on its own (one `writev` per answer) before anything else can be buffered. An
//! OVER_LIMIT answer with the seed's headers and JSON body is about 270 bytes, so with a plain
//! `TcpStream` each such answer cost its own system call: measured, that alone took 20–25 % of
//! the throughput. Reporting no vectored writes moves the threshold to 1 KiB, so answers from
//! many concurrent calls leave in one write.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A `TcpStream` that reports no vectored writes (see the module doc).
pub struct BatchedIo(pub TcpStream);

impl AsyncRead for BatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for BatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl Connected for BatchedIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.connect_info()
    }
}
