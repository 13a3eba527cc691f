//! Idle upstream connections, kept per worker thread.
//!
//! Each pingora worker runs its own single-threaded runtime, so a thread-local pool needs no lock
//! and no task per idle connection: a connection is taken by the request that needs it and put
//! back when its exchange ended cleanly. Newest first (the one most likely still open); entries
//! idle longer than the upstream's idle timeout are dropped when met, and at most
//! [`MAX_IDLE_PER_PEER`] are kept per peer and thread. Before a connection is handed out, one
//! non-blocking peek checks that the upstream has neither closed it nor sent anything unasked
//! (either way it is dropped). A close racing that check is found by the exchange itself, which
//! the request loop then replays on another connection when that is safe (see `forward`).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::ErrorKind;
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use pingora_core::protocols::Stream;

/// Most idle connections kept per upstream peer and worker thread; the oldest goes first.
pub const MAX_IDLE_PER_PEER: usize = 256;

thread_local! {
    static IDLE: RefCell<HashMap<u64, VecDeque<(Stream, Instant)>>> = RefCell::new(HashMap::new());
}

/// The newest idle connection to `key` that has been idle less than `idle_timeout`.
pub fn take(key: u64, idle_timeout: Duration) -> Option<Stream> {
    IDLE.with_borrow_mut(|idle| {
        let connections = idle.get_mut(&key)?;
        while let Some((stream, since)) = connections.pop_back() {
            if since.elapsed() >= idle_timeout {
                // The newest is stale, so every older one is too.
                connections.clear();
                return None;
            }
            if is_quiet(&stream) {
                return Some(stream);
            }
        }
        None
    })
}

/// Open, and nothing unread: a peek finds no data and no end of stream.
fn is_quiet(stream: &Stream) -> bool {
    // SAFETY: `id()` is the stream's own socket descriptor, open for as long as `stream` lives,
    // which outlives this borrow.
    let socket = unsafe { BorrowedFd::borrow_raw(stream.id()) };
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    // Upstream sockets are non-blocking (tokio): no data means WouldBlock.
    matches!(
        socket2::SockRef::from(&socket).peek(&mut byte),
        Err(error) if error.kind() == ErrorKind::WouldBlock
    )
}

/// Keeps `stream` for the next request to `key`.
pub fn put(key: u64, stream: Stream) {
    IDLE.with_borrow_mut(|idle| {
        let connections = idle.entry(key).or_default();
        if connections.len() >= MAX_IDLE_PER_PEER {
            connections.pop_front();
        }
        connections.push_back((stream, Instant::now()));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_core::protocols::l4::stream::Stream as L4Stream;
    use tokio::io::AsyncWriteExt;

    /// A pooled-side stream and the upstream's end of the same connection.
    async fn pair() -> (Stream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(address), listener.accept());
        (Box::new(L4Stream::from(client.unwrap())), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn newest_quiet_connection_first_others_dropped() {
        let key = 7;
        let long = Duration::from_secs(60);
        assert!(take(key, long).is_none());
        let (first, _first_peer) = pair().await;
        let first_id = first.id();
        put(key, first);
        let (second, _second_peer) = pair().await;
        let second_id = second.id();
        put(key, second);
        assert_eq!(take(key, long).unwrap().id(), second_id);
        assert_eq!(take(key, long).unwrap().id(), first_id);
        assert!(take(key, long).is_none());

        // Closed by the upstream while idle: dropped, not handed out.
        let (closing, peer) = pair().await;
        put(key, closing);
        drop(peer);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(take(key, long).is_none());

        // Sent something nobody asked for: dropped too.
        let (chatty, mut peer) = pair().await;
        put(key, chatty);
        peer.write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(take(key, long).is_none());

        // Idle for longer than the timeout: dropped.
        let (idle, _idle_peer) = pair().await;
        put(key, idle);
        assert!(take(key, Duration::ZERO).is_none());
        assert!(take(key, long).is_none());
    }

    #[tokio::test]
    async fn keeps_at_most_the_bound_per_peer() {
        let key = 8;
        let mut peers = Vec::new();
        for _ in 0..MAX_IDLE_PER_PEER + 3 {
            let (stream, peer) = pair().await;
            put(key, stream);
            peers.push(peer);
        }
        assert_eq!(IDLE.with_borrow(|idle| idle[&key].len()), MAX_IDLE_PER_PEER);
    }
}
