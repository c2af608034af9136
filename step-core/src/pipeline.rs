//! A stream of responses to a stream of requests, with bounded credits.
//!
//! [`Responses`] borrows a [`StepClient`] and keeps at most `window` of its
//! own requests unanswered. It is a plain state machine polled by its
//! consumer, so it is cancel-safe by construction: whatever point it is
//! dropped at, the client's count of owed answers
//! ([`StepClient::in_flight`]) is exact — a request counts from the moment
//! its frame is queued in the writer, an answer from the moment its frame is
//! decoded — and the next exchange on the client first reads (and discards)
//! what is still owed. Only an I/O or framing failure, or owed answers that
//! do not come within the timeout, make the connection unusable.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{Sink, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use crate::client::{ClientError, Link, StepClient};
use crate::message::Message;

/// Responses in request order (STEP answers in order, so matching is
/// positional). A refusal is an `Ok` item like any answer — the pipeline goes
/// on, and the consumer decides (see [`crate::client::expect_ok`]). The
/// stream ends after the last answer, or after its first `Err` item.
#[must_use = "streams do nothing unless polled"]
pub struct Responses<'c, T, S> {
    client: &'c mut StepClient<T>,
    /// `None` once it has ended.
    requests: Option<Pin<Box<S>>>,
    window: usize,
    /// Answers owed to earlier exchanges when this one began: read and
    /// dropped before any of ours.
    stale: u64,
    /// Our requests sent and not yet answered.
    pending: usize,
    /// Frames queued in the writer since its last completed flush.
    unflushed: bool,
    /// Deadline for the server's next sign of progress, armed only while we
    /// wait on it (the requests' source is the caller's to bound).
    deadline: Option<Pin<Box<Sleep>>>,
    /// An in-process client's requests being answered, in order.
    local: FuturesOrdered<BoxFuture<'static, Result<Message, ClientError>>>,
    done: bool,
}

impl<T, S> std::fmt::Debug for Responses<'_, T, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responses")
            .field("window", &self.window)
            .field("stale", &self.stale)
            .field("pending", &self.pending)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<'c, T, S> Responses<'c, T, S>
where
    T: AsyncRead + AsyncWrite,
    S: Stream<Item = Result<Message, ClientError>>,
{
    pub(crate) fn new(client: &'c mut StepClient<T>, requests: S, window: usize) -> Self {
        let stale = client.in_flight();
        Self {
            client,
            requests: Some(Box::pin(requests)),
            window: window.max(1),
            stale,
            pending: 0,
            // An abandoned exchange may have left frames in the writer: the
            // answers owed to them come only once they are out.
            unflushed: true,
            deadline: None,
            local: FuturesOrdered::new(),
            done: false,
        }
    }

    fn finish(&mut self, e: ClientError) -> Poll<Option<Result<Message, ClientError>>> {
        self.done = true;
        Poll::Ready(Some(Err(e)))
    }

    /// An I/O or framing failure: nothing more can be read in step.
    fn fail(&mut self, e: ClientError) -> Poll<Option<Result<Message, ClientError>>> {
        self.client.mark_broken(&e);
        self.finish(e)
    }

    fn progress(&mut self) {
        if let (Some(deadline), Some(t)) = (self.deadline.as_mut(), self.client.timeout()) {
            deadline.as_mut().reset(Instant::now() + t);
        }
    }

    /// An in-process client: up to `window` requests answered at once (the
    /// service bounds its own waits), yielded in order. Each runs on a task
    /// of its own, so dropping the stream abandons answers, never a request
    /// half-served.
    fn poll_local(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, ClientError>>> {
        let Link::Local(serve) = &self.client.link else {
            return Poll::Ready(None);
        };
        while self.local.len() < self.window
            && let Some(requests) = self.requests.as_mut()
        {
            match requests.as_mut().poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(None) => self.requests = None,
                Poll::Ready(Some(Err(e))) => {
                    self.requests = None;
                    return self.finish(e);
                }
                Poll::Ready(Some(Ok(msg))) => {
                    self.local
                        .push_back(Box::pin(crate::client::spawn_local(serve, msg)));
                }
            }
        }
        match self.local.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(msg))) => Poll::Ready(Some(Ok(msg))),
            Poll::Ready(Some(Err(e))) => self.finish(e),
            Poll::Ready(None) if self.requests.is_none() => {
                self.done = true;
                Poll::Ready(None)
            }
            _ => Poll::Pending,
        }
    }

    /// Ready when the server has made no progress for the timeout.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<Duration> {
        let Some(t) = self.client.timeout() else {
            return Poll::Pending;
        };
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(t)));
        ready!(deadline.as_mut().poll(cx));
        Poll::Ready(t)
    }
}

impl<T, S> Stream for Responses<'_, T, S>
where
    T: AsyncRead + AsyncWrite,
    S: Stream<Item = Result<Message, ClientError>>,
{
    type Item = Result<Message, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Err(e) = this.client.check_usable() {
            return this.finish(e);
        }
        if let Link::Local(_) = this.client.link {
            return this.poll_local(cx);
        }
        loop {
            let mut moved = false;
            // Send while credits last and the source has requests ready.
            while this.pending < this.window
                && let Some(requests) = this.requests.as_mut()
            {
                let Link::Wire { writer, .. } = &mut this.client.link else {
                    break;
                };
                match Sink::<Message>::poll_ready(Pin::new(writer), cx) {
                    Poll::Pending => break,
                    Poll::Ready(Err(e)) => return this.fail(e.into()),
                    Poll::Ready(Ok(())) => {}
                }
                let msg = match requests.as_mut().poll_next(cx) {
                    Poll::Pending => break,
                    Poll::Ready(None) => {
                        this.requests = None;
                        break;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        this.requests = None;
                        return this.finish(e);
                    }
                    Poll::Ready(Some(Ok(msg))) => msg,
                };
                let Link::Wire { writer, .. } = &mut this.client.link else {
                    break;
                };
                if let Err(e) = Pin::new(writer).start_send(msg) {
                    return this.fail(e.into());
                }
                // Owed from here on: the frame is in the writer's buffer and
                // goes out with the next flush, whoever makes it.
                this.client.owe();
                this.pending += 1;
                this.unflushed = true;
                moved = true;
            }
            if this.unflushed
                && let Link::Wire { writer, .. } = &mut this.client.link
            {
                match Sink::<Message>::poll_flush(Pin::new(writer), cx) {
                    Poll::Ready(Ok(())) => this.unflushed = false,
                    Poll::Ready(Err(e)) => return this.fail(e.into()),
                    Poll::Pending => {}
                }
            }
            if this.stale + this.pending as u64 > 0 {
                match this.client.poll_frame(cx) {
                    Poll::Ready(Ok(frame)) => {
                        this.progress();
                        if this.stale > 0 {
                            this.stale -= 1;
                            continue;
                        }
                        this.pending -= 1;
                        let msg = Message::from_frame(frame)
                            .map_err(|e| ClientError::Protocol(e.to_string()));
                        if msg.is_err() {
                            this.done = true;
                        }
                        return Poll::Ready(Some(msg));
                    }
                    Poll::Ready(Err(e)) => return this.fail(e),
                    Poll::Pending => {}
                }
            } else if this.requests.is_none() && !this.unflushed {
                this.done = true;
                return Poll::Ready(None);
            }
            if moved {
                this.progress();
                continue;
            }
            let waiting_on_server = this.unflushed || this.stale + this.pending as u64 > 0;
            if !waiting_on_server {
                // Only the source is awaited; the clock restarts with the
                // next request sent.
                this.deadline = None;
                return Poll::Pending;
            }
            let t = ready!(this.poll_deadline(cx));
            if this.stale > 0 {
                // Answers to an abandoned exchange never came: the
                // connection cannot be trusted to be in step again.
                return this.fail(ClientError::TimedOut(t));
            }
            // Our own answers are late: this exchange gives up, and the next
            // one waits for them first.
            return this.finish(ClientError::TimedOut(t));
        }
    }
}
