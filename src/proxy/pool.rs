//! Idle upstream connections, kept per worker thread.
//!
//! Each pingora worker runs its own single-threaded runtime, so a thread-local pool needs no lock
//! and no task per idle connection: a connection is taken by the request that needs it and put
//! back when its exchange ended cleanly. Newest first (the one most likely still open); entries
//! idle longer than their expiry (the upstream's idle timeout, or less if the upstream announced
//! less) are dropped when met, and every [`SWEEP_INTERVAL`] the expired ones of every peer are
//! dropped, by a `put` or, while the pool keeps any, by one sweeper task per thread (peers no
//! request asks for any more, such as targets a reload removed, and threads that serve no more
//! requests do not keep their sockets); at most `upstream.max_idle_connections` are kept per peer
//! and thread (the oldest goes first). Before a connection is handed out, it is checked that the
//! upstream has neither closed it nor sent anything unasked (either way it is dropped): for a plain
//! TCP connection idle less than [`TRUSTED_IDLE`], by the event loop's readiness (nothing arrived
//! since its last read: no system call, as nginx learns of closes from its events), otherwise by
//! one non-blocking peek. A close racing that check is found by the exchange itself, which the
//! request loop then replays on another connection when that is safe (see `forward`).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::ErrorKind;
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;
use std::pin::Pin;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use pingora_core::protocols::Stream;
use tokio::io::{AsyncRead, ReadBuf};

/// A plain TCP connection idle for less than this is handed out on the event loop's word that
/// nothing arrived on it; one idle longer is peeked at too (upstreams close idle connections
/// after a while, seldom within a second of a response).
pub const TRUSTED_IDLE: Duration = Duration::from_secs(1);

/// How often expired connections of every peer are dropped (by the sweeper task, and by a `put`
/// when that task runs elsewhere: see [`sweep_while_kept`]).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Idle connections by peer key, each with the instant it expires.
#[derive(Default)]
struct Idle {
    /// Each with when it was put back and when it expires.
    peers: HashMap<u64, VecDeque<(Stream, Instant, Instant)>>,
    next_sweep: Option<Instant>,
    /// The sweeper task started for this thread's pool (see [`sweep_while_kept`]).
    sweeper: Option<tokio::task::JoinHandle<()>>,
}

impl Idle {
    /// Drops every expired connection, and the queues left empty.
    fn sweep(&mut self, now: Instant) {
        self.peers.retain(|_, connections| {
            connections.retain(|(_, _, expires)| *expires > now);
            !connections.is_empty()
        });
        self.next_sweep = Some(now + SWEEP_INTERVAL);
    }
}

thread_local! {
    static IDLE: RefCell<Idle> = RefCell::new(Idle::default());
}

/// The newest idle connection to `key` that has not expired.
pub fn take(key: u64) -> Option<Stream> {
    IDLE.with_borrow_mut(|idle| {
        let connections = idle.peers.get_mut(&key)?;
        let now = Instant::now();
        while let Some((mut stream, since, expires)) = connections.pop_back() {
            // Expiries differ (an upstream may announce a shorter idle timeout for one
            // connection), so a stale entry says nothing about the older ones.
            if now < expires && is_quiet(&mut stream, now.saturating_duration_since(since)) {
                return Some(stream);
            }
        }
        None
    })
}

/// Open, and nothing unread. Plain TCP idle less than [`TRUSTED_IDLE`]: the runtime saw no
/// readiness since the last read, which ended short (tokio then clears it); so nothing, not
/// even an end of stream, arrived. Otherwise, or if it did see some: a peek finds no data and
/// no end of stream.
fn is_quiet(stream: &mut Stream, idle: Duration) -> bool {
    if idle < TRUSTED_IDLE && stream.get_ssl_digest().is_none() {
        // An empty read asks for readiness only: pending means none, without a system call.
        // The no-op waker is replaced by the task's own at the first real read.
        let mut context = Context::from_waker(Waker::noop());
        let mut nothing = ReadBuf::new(&mut []);
        if Pin::new(&mut *stream)
            .poll_read(&mut context, &mut nothing)
            .is_pending()
        {
            return true;
        }
    }
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

/// Keeps `stream` for the next request to `key`, for at most `idle_timeout`, dropping the oldest
/// idle connection to `key` when `most` are kept already.
pub fn put(key: u64, stream: Stream, idle_timeout: Duration, most: usize) {
    IDLE.with_borrow_mut(|idle| {
        let now = Instant::now();
        if idle.next_sweep.is_none_or(|next| now >= next) {
            idle.sweep(now);
        }
        if idle.sweeper.as_ref().is_none_or(tokio::task::JoinHandle::is_finished) {
            idle.sweeper = Some(tokio::spawn(sweep_while_kept()));
        }
        let connections = idle.peers.entry(key).or_default();
        while connections.len() >= most.max(1) {
            connections.pop_front();
        }
        connections.push_back((stream, now, now + idle_timeout));
    });
}

/// Sweeps the pool of the thread it runs on every [`SWEEP_INTERVAL`] for as long as it keeps
/// connections, so a thread that stops serving requests still closes its expired ones; started by
/// the `put` that finds none running. (Under the work-stealing runtime the task may move to
/// another thread and sweep that thread's pool; once it ends, the next `put` on the first thread
/// starts another.)
async fn sweep_while_kept() {
    loop {
        tokio::time::sleep(SWEEP_INTERVAL).await;
        let empty = IDLE.with_borrow_mut(|idle| {
            idle.sweep(Instant::now());
            idle.peers.is_empty()
        });
        if empty {
            return;
        }
    }
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
        assert!(take(key).is_none());
        let (first, _first_peer) = pair().await;
        let first_id = first.id();
        put(key, first, long, 8);
        let (second, _second_peer) = pair().await;
        let second_id = second.id();
        put(key, second, long, 8);
        assert_eq!(take(key).unwrap().id(), second_id);
        assert_eq!(take(key).unwrap().id(), first_id);
        assert!(take(key).is_none());

        // Closed by the upstream while idle: dropped, not handed out.
        let (closing, peer) = pair().await;
        put(key, closing, long, 8);
        drop(peer);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(take(key).is_none());

        // Sent something nobody asked for: dropped too.
        let (chatty, mut peer) = pair().await;
        put(key, chatty, long, 8);
        peer.write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(take(key).is_none());

        // Idle for longer than the timeout: dropped.
        let (idle, _idle_peer) = pair().await;
        put(key, idle, Duration::ZERO, 8);
        assert!(take(key).is_none());

        // A newer entry that expired sooner (a shorter announced timeout) takes no older one
        // with it.
        let (lasting, _lasting_peer) = pair().await;
        let lasting_id = lasting.id();
        put(key, lasting, long, 8);
        let (brief, _brief_peer) = pair().await;
        put(key, brief, Duration::ZERO, 8);
        assert_eq!(take(key).map(|stream| stream.id()), Some(lasting_id));
    }

    #[tokio::test]
    async fn a_connection_idle_long_is_peeked_at_not_trusted() {
        let key = 41;
        let (stream, peer) = pair().await;
        put(key, stream, Duration::from_secs(60), 8);
        IDLE.with_borrow_mut(|idle| idle.peers.get_mut(&key).unwrap()[0].1 -= TRUSTED_IDLE * 2);
        drop(peer);
        // The runtime gets no turn to see the close: only a peek finds it.
        std::thread::sleep(Duration::from_millis(20));
        assert!(take(key).is_none());

        // Idle briefly and nothing arrived: handed out.
        let (stream, _peer) = pair().await;
        let id = stream.id();
        put(key, stream, Duration::from_secs(60), 8);
        assert_eq!(take(key).map(|stream| stream.id()), Some(id));
    }

    #[tokio::test]
    async fn keeps_at_most_the_bound_per_peer() {
        let key = 8;
        let mut peers = Vec::new();
        for _ in 0..7 {
            let (stream, peer) = pair().await;
            put(key, stream, Duration::from_secs(60), 4);
            peers.push(peer);
        }
        assert_eq!(IDLE.with_borrow(|idle| idle.peers[&key].len()), 4);
        // The oldest three went first: their peers see the close, the others see nothing yet.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let closed: Vec<bool> = peers
            .iter()
            .map(|peer| matches!(peer.try_read(&mut [0u8; 1]), Ok(0)))
            .collect();
        assert_eq!(closed, [true, true, true, false, false, false, false]);
        // A lowered bound (a reload) trims the queue on the next put.
        let (stream, _peer) = pair().await;
        put(key, stream, Duration::from_secs(60), 2);
        assert_eq!(IDLE.with_borrow(|idle| idle.peers[&key].len()), 2);
    }

    #[tokio::test]
    async fn a_sweep_drops_expired_connections_of_peers_nobody_asks_for() {
        let (forgotten, _forgotten_peer) = pair().await;
        put(21, forgotten, Duration::ZERO, 8);
        // Force the next put to sweep.
        IDLE.with_borrow_mut(|idle| idle.next_sweep = None);
        let (fresh, _fresh_peer) = pair().await;
        put(22, fresh, Duration::from_secs(60), 8);
        IDLE.with_borrow(|idle| {
            assert!(!idle.peers.contains_key(&21), "expired peer swept, queue and all");
            assert_eq!(idle.peers[&22].len(), 1);
        });
    }

    #[tokio::test]
    async fn expired_connections_close_without_further_requests() {
        let (stale, mut peer) = pair().await;
        put(31, stale, Duration::from_millis(10), 8);
        assert!(IDLE.with_borrow(|idle| idle.sweeper.is_some()));
        // No more puts or takes: the sweeper closes the connection, and stops once the pool is
        // empty.
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(
            SWEEP_INTERVAL + Duration::from_secs(2),
            tokio::io::AsyncReadExt::read(&mut peer, &mut byte),
        )
        .await;
        assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
        tokio::task::yield_now().await;
        assert!(
            IDLE.with_borrow(
                |idle| idle.sweeper.as_ref().is_some_and(|task| task.is_finished()) && idle.peers.is_empty()
            )
        );
    }
}
