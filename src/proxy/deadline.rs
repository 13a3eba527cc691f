//! A connection's one timer for the waits it makes again and again (the next request, the next
//! response bytes), moved lazily, as nginx defers its timer updates.
//!
//! A timer made per wait costs a registration (a lock, a clock read, an allocation) on every
//! request of a keep-alive connection. A [`Deadline`] keeps one armed timer instead: each wait only
//! notes when it should end, and the armed timer is moved when it would end the wait too late (a
//! shorter limit) or when it fires before the wait's end (the connection was busy, so the wanted
//! end moved on). A connection that waits a few milliseconds between requests thus touches the
//! timer wheel about once per limit rather than twice per request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pingora_timeout::Elapsed;
use tokio::time::Sleep;

/// The timer of one connection; see the module documentation.
#[derive(Default)]
pub struct Deadline {
    /// Made at the first wait that did not complete at once.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    /// `future`, bounded by `limit` from its first wait (a future ready on its first poll reads
    /// no clock).
    pub fn bound<F: Future>(&mut self, limit: Duration, future: F) -> Bound<'_, F> {
        Bound {
            deadline: self,
            future,
            limit,
            end: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// See [`Deadline::bound`].
    pub struct Bound<'a, F> {
        deadline: &'a mut Deadline,
        #[pin]
        future: F,
        limit: Duration,
        end: Option<Instant>,
    }
}

impl<F: Future> Future for Bound<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(context) {
            return Poll::Ready(Ok(output));
        }
        let end = *this.end.get_or_insert_with(|| Instant::now() + *this.limit);
        let wanted = tokio::time::Instant::from_std(end);
        let timer = match &mut this.deadline.timer {
            Some(timer) => {
                if timer.deadline() > wanted {
                    timer.as_mut().reset(wanted);
                }
                timer
            }
            timer @ None => timer.insert(Box::pin(tokio::time::sleep_until(wanted))),
        };
        // At most two turns: a timer moved to a later end is pending until then.
        loop {
            if timer.as_mut().poll(context).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= end {
                return Poll::Ready(Err(Elapsed));
            }
            // An earlier wait's end: this one's is later.
            timer.as_mut().reset(wanted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_ends_at_its_own_limit_even_after_a_longer_one_armed_the_timer() {
        let mut deadline = Deadline::default();
        let long = deadline.bound(Duration::from_secs(60), std::future::pending::<()>());
        // Polled once so the timer is armed 60 s out, then given up.
        assert!(futures_poll_once(long).await.is_none());
        let started = Instant::now();
        let short = deadline
            .bound(Duration::from_millis(30), std::future::pending::<()>())
            .await;
        assert!(short.is_err());
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(30) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn a_timer_armed_by_an_earlier_wait_does_not_end_a_later_wait_early() {
        let mut deadline = Deadline::default();
        let first = deadline.bound(Duration::from_millis(20), std::future::pending::<()>());
        assert!(futures_poll_once(first).await.is_none());
        // The armed timer fires 20 ms from the start; this wait must last its own 80 ms.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let started = Instant::now();
        let second = deadline
            .bound(Duration::from_millis(80), std::future::pending::<()>())
            .await;
        assert!(second.is_err());
        assert!(
            started.elapsed() >= Duration::from_millis(80),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_ready_future_wins_and_a_later_one_is_not_cut_short() {
        let mut deadline = Deadline::default();
        assert!(matches!(
            deadline.bound(Duration::from_millis(1), async { 7 }).await,
            Ok(7)
        ));
        let late = deadline.bound(Duration::from_secs(5), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            8
        });
        assert!(matches!(late.await, Ok(8)));
    }

    /// Polls `future` once: its output, or `None` if it waits.
    async fn futures_poll_once<F: Future>(future: F) -> Option<F::Output> {
        let mut future = std::pin::pin!(future);
        std::future::poll_fn(|context| {
            Poll::Ready(match future.as_mut().poll(context) {
                Poll::Ready(output) => Some(output),
                Poll::Pending => None,
            })
        })
        .await
    }
}
