//! At most `--max-connections` gRPC connections at once. When one more is accepted, the
//! connection that has been idle longest (no byte read from its peer) is closed to make room:
//! refusing the new one instead would let whoever holds the connections keep a restarted Envoy
//! out, while an Envoy that is sending calls is never the idlest. Activity is what the peer
//! sends: every answer follows a call read, and the server's own keepalive pings say nothing of
//! the peer, so only reads are noted (one clock read each).
//!
//! Each accepted stream is wrapped in a [`Tracked`] stream that notes its last activity; closing
//! it marks it and wakes its reader, which then reads end-of-stream, so HTTP/2 closes the
//! connection as if the peer had hung up.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The open connections, and what has been closed to make room.
pub struct Connections {
    max: usize,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
    next_id: AtomicU64,
    closed_for_room: AtomicU64,
}

/// Open gRPC connections, and those closed to make room, read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionUsage {
    pub open: usize,
    pub closed_for_room: u64,
}

/// The default `--max-connections`: the open-file limit (as raised at start) less 1,024 kept for
/// the admin port's 512, Redis, the rule files and the listeners; at most 10,000, at least 64.
pub fn default_max_connections() -> usize {
    let files = rlimit::Resource::NOFILE
        .get()
        .map_or(1_024, |(soft, _)| soft);
    let files = usize::try_from(files).unwrap_or(usize::MAX);
    files.saturating_sub(1_024).clamp(64, 10_000)
}

/// One connection's last activity, and the signal that closes it.
struct Activity {
    /// Milliseconds since the process's first connection.
    last_ms: AtomicU64,
    closed: AtomicBool,
    reader: AtomicWaker,
}

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Connections {
    /// At most `max` (at least 1) connections.
    pub fn new(max: usize) -> Arc<Connections> {
        Arc::new(Connections {
            max: max.max(1),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            closed_for_room: AtomicU64::new(0),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().map_or(0, |open| open.len())
    }

    /// What it holds now, for the metrics.
    pub fn usage(&self) -> ConnectionUsage {
        ConnectionUsage {
            open: self.open(),
            closed_for_room: self.closed_for_room(),
        }
    }

    /// Connections closed so far to make room for new ones.
    pub fn closed_for_room(&self) -> u64 {
        self.closed_for_room.load(Ordering::Relaxed)
    }

    /// Takes `io` in, closing the idlest connection first if all places are taken.
    pub fn admit<T>(self: &Arc<Self>, io: T) -> Tracked<T> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity {
            last_ms: AtomicU64::new(now_ms()),
            closed: AtomicBool::new(false),
            reader: AtomicWaker::new(),
        });
        if let Ok(mut open) = self.open.lock() {
            while open.len() >= self.max {
                let idlest = open
                    .iter()
                    .min_by_key(|(_, a)| a.last_ms.load(Ordering::Relaxed))
                    .map(|(id, _)| *id);
                let Some(idlest) = idlest.and_then(|id| open.remove(&id)) else {
                    break;
                };
                idlest.closed.store(true, Ordering::Release);
                idlest.reader.wake();
                self.closed_for_room.fetch_add(1, Ordering::Relaxed);
            }
            open.insert(id, Arc::clone(&activity));
        }
        Tracked {
            io,
            id,
            activity,
            connections: Arc::clone(self),
        }
    }
}

/// An accepted stream, counted among the open connections until dropped.
pub struct Tracked<T> {
    io: T,
    id: u64,
    activity: Arc<Activity>,
    connections: Arc<Connections>,
}

impl<T> Tracked<T> {
    fn touch(&self) {
        self.activity.last_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn is_closed(&self) -> bool {
        self.activity.closed.load(Ordering::Acquire)
    }
}

impl<T> Drop for Tracked<T> {
    fn drop(&mut self) {
        if let Ok(mut open) = self.connections.open.lock() {
            open.remove(&self.id);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.activity.reader.register(cx.waker());
        if self.is_closed() {
            // End of stream: HTTP/2 closes the connection.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_closed() {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<T: Connected> Connected for Tracked<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_cap_closes_the_idlest_connection_for_a_new_one() {
        let connections = Connections::new(2);
        let (a, _a_peer) = tokio::io::duplex(64);
        let (b, mut b_peer) = tokio::io::duplex(64);
        let (c, _c_peer) = tokio::io::duplex(64);
        let mut a = connections.admit(a);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let mut b = connections.admit(b);
        // b is busy: it reads a byte, so a is the idlest.
        tokio::io::AsyncWriteExt::write_all(&mut b_peer, b"x")
            .await
            .expect("write");
        let mut byte = [0u8; 1];
        tokio::io::AsyncReadExt::read(&mut b, &mut byte)
            .await
            .expect("read");
        let _c = connections.admit(c);
        assert_eq!((connections.open(), connections.closed_for_room()), (2, 1));
        let read = tokio::io::AsyncReadExt::read(&mut a, &mut byte)
            .await
            .expect("read");
        assert_eq!(read, 0, "the idlest connection reads end-of-stream");
        drop(a);
        drop(b);
        assert_eq!(connections.open(), 1);
    }
}
