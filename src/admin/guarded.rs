//! The admin port's listener: a cap on open connections, and deadlines on each, so that slow
//! or idle clients cannot hold the port (or the process's file descriptors, which the gRPC port
//! needs) for ever.
//!
//! Unguarded, 2,000 slowloris connections (a header line now and then) were all still open
//! after 45 s, and 4,200 slow connections exhausted 4,096 file descriptors: a restarted Envoy
//! could not connect, and a reload failed with "Too many open files".

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{Receiver, Sender};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;

use crate::server::conn::MaybeTls;

/// Most admin connections open at once; one more is closed as soon as it is accepted. Probes
/// and scrapers need a handful.
pub const MAX_CONNECTIONS: usize = 512;
/// From a request's first byte, it must be read and answered within this: headers and body.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// A connection with no request in progress is closed after this.
pub const IDLE_DEADLINE: Duration = Duration::from_secs(60);

/// A listener that keeps at most [`MAX_CONNECTIONS`] open, each under [`Guarded`]'s deadlines;
/// with TLS, each connection's handshake runs on a task of its own (under the same deadlines),
/// so a slow client holds up no other.
pub struct GuardedListener {
    inner: TcpListener,
    open: Arc<AtomicUsize>,
    tls: Option<TlsAcceptor>,
    handshaken: (Sender<Handshaken>, Receiver<Handshaken>),
}

type Handshaken = (AdminIo, std::net::SocketAddr);

impl GuardedListener {
    pub fn new(inner: TcpListener, tls: Option<TlsAcceptor>) -> GuardedListener {
        GuardedListener {
            inner,
            open: Arc::new(AtomicUsize::new(0)),
            tls,
            handshaken: tokio::sync::mpsc::channel(64),
        }
    }
}

/// An admin connection, in plain HTTP or HTTPS.
pub type AdminIo = MaybeTls<Guarded>;

impl axum::serve::Listener for GuardedListener {
    type Io = AdminIo;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (AdminIo, std::net::SocketAddr) {
        loop {
            let (stream, addr) = tokio::select! {
                accepted = axum::serve::Listener::accept(&mut self.inner) => accepted,
                Some(done) = self.handshaken.1.recv() => return done,
            };
            if self.open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                tracing::debug!(%addr, "admin connection refused: {MAX_CONNECTIONS} open");
                drop(stream);
                continue;
            }
            self.open.fetch_add(1, Ordering::Relaxed);
            let guarded = Guarded::new(stream, Arc::clone(&self.open));
            let Some(tls) = &self.tls else {
                return (MaybeTls::Plain(guarded), addr);
            };
            let (tls, done) = (tls.clone(), self.handshaken.0.clone());
            tokio::spawn(async move {
                match tls.accept(guarded).await {
                    Ok(stream) => {
                        let _ = done.send((MaybeTls::Tls(Box::new(stream)), addr)).await;
                    }
                    Err(error) => tracing::debug!(%error, "admin TLS handshake failed"),
                }
            });
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

/// One admin connection: closed (reads and writes fail) when its deadline passes.
pub struct Guarded {
    stream: TcpStream,
    open: Arc<AtomicUsize>,
    /// Whether a request has started (bytes read) and not been answered (nothing written yet).
    in_request: bool,
    deadline: Pin<Box<Sleep>>,
}

impl Guarded {
    fn new(stream: TcpStream, open: Arc<AtomicUsize>) -> Guarded {
        Guarded {
            stream,
            open,
            in_request: false,
            deadline: Box::pin(tokio::time::sleep(IDLE_DEADLINE)),
        }
    }

    /// An error once the deadline has passed; otherwise the timer wakes this connection then.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "admin connection past its deadline",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before && !this.in_request {
            this.in_request = true;
            this.deadline
                .as_mut()
                .reset(Instant::now() + REQUEST_DEADLINE);
        }
        read
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write(cx, data);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            // Answering: the request is read; the connection is idle again once it is sent.
            this.in_request = false;
            this.deadline.as_mut().reset(Instant::now() + IDLE_DEADLINE);
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The peer of an admin connection, for handlers that answer loopback peers only.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, GuardedListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, GuardedListener>) -> Peer {
        Peer(*stream.remote_addr())
    }
}
