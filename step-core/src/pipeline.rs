//! A stream of responses to a stream of requests, with bounded credits.
//!
//! [`Responses`] borrows a client's [`Exchange`] and keeps at most `window`
//! of its own requests unanswered, over whichever [`Link`](crate::link::Link)
//! the client has. It is a plain state machine polled by its consumer, so it
//! is cancel-safe by construction: whatever point it is dropped at, the
//! count of owed answers ([`Exchange::in_flight`]) is exact — a request
//! counts from the moment it is queued in the link, an answer from the
//! moment it is read — and the next exchange first reads (and discards)
//! what is still owed. Only an I/O or framing failure, or owed answers that
//! do not come within the timeout, make the connection unusable.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::Stream;
use tokio::time::{Instant, Sleep};

use crate::error::ClientError;
use crate::exchange::Exchange;
use crate::message::Message;

/// Responses in request order (STEP answers in order, so matching is
/// positional). A refusal is an `Ok` item like any answer — the pipeline goes
/// on, and the consumer decides (see [`crate::client::expect_ok`]). The
/// stream ends after the last answer, or after its first `Err` item.
#[must_use = "streams do nothing unless polled"]
pub struct Responses<'c, S> {
    client: &'c mut Exchange,
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
    done: bool,
}

impl<S> std::fmt::Debug for Responses<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responses")
            .field("window", &self.window)
            .field("stale", &self.stale)
            .field("pending", &self.pending)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<'c, S> Responses<'c, S>
where
    S: Stream<Item = Result<Message, ClientError>>,
{
    pub(crate) fn new(client: &'c mut Exchange, requests: S, window: usize) -> Self {
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

    /// Send while credits last and the source has requests ready; whether
    /// any went, or the end of the stream (an error) when one must.
    #[allow(clippy::type_complexity)]
    fn send_ready(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Result<bool, Poll<Option<Result<Message, ClientError>>>> {
        let mut moved = false;
        while self.pending < self.window
            && let Some(requests) = self.requests.as_mut()
        {
            match Pin::new(&mut *self.client.link).poll_ready(cx) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => return Err(self.fail(e)),
                Poll::Ready(Ok(())) => {}
            }
            let msg = match requests.as_mut().poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(None) => {
                    self.requests = None;
                    break;
                }
                Poll::Ready(Some(Err(e))) => {
                    self.requests = None;
                    return Err(self.finish(e));
                }
                Poll::Ready(Some(Ok(msg))) => msg,
            };
            if let Err(e) = Pin::new(&mut *self.client.link).start_send(msg) {
                return Err(self.fail(e));
            }
            // Owed from here on: the request is in the link (a frame in the
            // writer's buffer goes out with the next flush, whoever makes it).
            self.client.owe();
            self.pending += 1;
            self.unflushed = true;
            moved = true;
        }
        Ok(moved)
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

impl<S> Stream for Responses<'_, S>
where
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
        loop {
            let moved = match this.send_ready(cx) {
                Ok(moved) => moved,
                Err(end) => return end,
            };
            if this.unflushed {
                match Pin::new(&mut *this.client.link).poll_flush(cx) {
                    Poll::Ready(Ok(())) => this.unflushed = false,
                    Poll::Ready(Err(e)) => return this.fail(e),
                    Poll::Pending => {}
                }
            }
            if this.stale + this.pending as u64 > 0 {
                match this.client.poll_answer(cx) {
                    Poll::Ready(answer @ (Ok(_) | Err(ClientError::Protocol(_)))) => {
                        this.progress();
                        if this.stale > 0 {
                            this.stale -= 1;
                            continue;
                        }
                        this.pending -= 1;
                        if answer.is_err() {
                            this.done = true;
                        }
                        return Poll::Ready(Some(answer));
                    }
                    // The exchange marked the link broken already.
                    Poll::Ready(Err(e)) => return this.finish(e),
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
