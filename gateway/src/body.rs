//! Request bodies that must make progress.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::time::{Instant, Sleep};

/// The error a body stream ends with when it fell below the minimum rate.
#[derive(Debug, thiserror::Error)]
#[error("the request body sent fewer than {min} bytes in {secs} s; it was cut (408)")]
pub struct BodyTooSlow {
    pub min: u64,
    pub secs: u64,
}

/// Whether `e` (or anything it wraps) is a [`BodyTooSlow`]. Extractors wrap
/// body errors in their own types, so the chain is searched, and its text
/// as a last resort (multer keeps only the message).
pub fn is_too_slow(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyTooSlow>() || err.to_string().contains("it was cut (408)") {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A body stream that fails with [`BodyTooSlow`] when fewer than `min`
/// bytes arrive in a window of `interval`. Only time spent waiting for the
/// client counts: while the consumer is busy elsewhere (e.g. sending blocks
/// to the STEP server) the clock stops, so a slow backend is never blamed
/// on the client.
#[derive(Debug)]
pub struct MinRate<S> {
    inner: S,
    min: u64,
    interval: Duration,
    got: u64,
    deadline: Pin<Box<Sleep>>,
    /// Since when the consumer has not asked for more (it holds our last
    /// chunk); that time is added back to the deadline.
    away_since: Option<Instant>,
}

impl<S> MinRate<S> {
    pub fn new(inner: S, min: u64, interval: Duration) -> Self {
        Self {
            inner,
            min,
            interval,
            got: 0,
            deadline: Box::pin(tokio::time::sleep(interval)),
            away_since: None,
        }
    }
}

impl<S, E> Stream for MinRate<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<axum::BoxError>,
{
    type Item = Result<Bytes, axum::BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let now = Instant::now();
        if let Some(away) = this.away_since.take() {
            let until = this.deadline.deadline() + (now - away);
            this.deadline.as_mut().reset(until);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.got += chunk.len() as u64;
                if this.got >= this.min {
                    this.got = 0;
                    this.deadline.as_mut().reset(now + this.interval);
                }
                this.away_since = Some(now);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTooSlow {
                    min: this.min,
                    secs: this.interval.as_secs(),
                })))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}
