//! One link's exchanges, kept in step: the answers owed, the timeout, and
//! whether an earlier failure made the link unusable.
//!
//! The count of owed answers ([`Exchange::in_flight`]) is exact whatever
//! future was dropped where — a request counts from the moment its message
//! is queued in the link, an answer from the moment it is read — so an
//! exchange abandoned anywhere leaves the link usable: the next one first
//! reads what is still owed ([`Exchange::settle`]). Only an I/O or framing
//! failure, or owed answers that never come, break it.

use std::task::{Context, Poll};
use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};

use crate::error::ClientError;
use crate::link::Link;
use crate::message::Message;

/// A link and what is known of its state.
#[derive(Debug)]
pub struct Exchange {
    pub(crate) link: Box<dyn Link>,
    timeout: Option<Duration>,
    /// Answers owed: messages queued for sending minus answers read.
    owed: u64,
    /// Why the link cannot be used any more, once it cannot.
    broken: Option<String>,
}

/// Run `fut` under an optional deadline.
pub(crate) async fn bounded<F: std::future::Future>(
    timeout: Option<Duration>,
    fut: F,
) -> Result<F::Output, ClientError> {
    match timeout {
        Some(t) => tokio::time::timeout(t, fut)
            .await
            .map_err(|_| ClientError::TimedOut(t)),
        None => Ok(fut.await),
    }
}

impl Exchange {
    pub fn new(link: Box<dyn Link>) -> Self {
        Self {
            link,
            timeout: None,
            owed: 0,
            broken: None,
        }
    }

    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    pub fn in_flight(&self) -> u64 {
        self.owed
    }

    pub(crate) fn owe(&mut self) {
        self.owed += 1;
    }

    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    pub(crate) fn mark_broken(&mut self, why: &ClientError) {
        if self.broken.is_none() {
            self.broken = Some(why.to_string());
        }
    }

    pub(crate) fn check_usable(&self) -> Result<(), ClientError> {
        match &self.broken {
            Some(why) => Err(ClientError::Broken(why.clone())),
            None => Ok(()),
        }
    }

    /// Whether the link is ready for a new request without waiting: usable,
    /// no answer owed, nothing unread, not closed by the other side. Never
    /// blocks; an unsolicited answer found here breaks the link.
    pub fn is_idle(&mut self) -> bool {
        if self.broken.is_some() || self.owed > 0 || self.link.has_buffered() {
            return false;
        }
        match self.link.next().now_or_never() {
            None => true,
            Some(_) => {
                self.broken = Some("unsolicited data or a close from the server".into());
                false
            }
        }
    }

    /// Poll for the next answer, counting it as received. An answer that is
    /// not a message still counts; any other failure breaks the link.
    pub(crate) fn poll_answer(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Message, ClientError>> {
        match self.link.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(msg))) => {
                self.owed = self.owed.saturating_sub(1);
                Poll::Ready(Ok(msg))
            }
            Poll::Ready(Some(Err(e @ ClientError::Protocol(_)))) => {
                self.owed = self.owed.saturating_sub(1);
                Poll::Ready(Err(e))
            }
            Poll::Ready(Some(Err(e))) => {
                self.mark_broken(&e);
                Poll::Ready(Err(e))
            }
            Poll::Ready(None) => {
                self.mark_broken(&ClientError::Closed);
                Poll::Ready(Err(ClientError::Closed))
            }
        }
    }

    /// Read and drop every answer still owed (after an abandoned exchange),
    /// each under the timeout. A failure or a timeout here breaks the link:
    /// its answers can no longer be told apart.
    pub async fn settle(&mut self) -> Result<(), ClientError> {
        self.check_usable()?;
        let timeout = self.timeout;
        let flushed = bounded(timeout, self.link.flush()).await.and_then(|r| r);
        if let Err(e) = flushed {
            self.mark_broken(&e);
            return Err(e);
        }
        while self.owed > 0 {
            let answer = bounded(timeout, std::future::poll_fn(|cx| self.poll_answer(cx))).await;
            match answer {
                Ok(Ok(_)) | Ok(Err(ClientError::Protocol(_))) => {}
                Ok(Err(e)) | Err(e) => {
                    self.mark_broken(&e);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Send one message (flushed), without settling first.
    pub async fn send(&mut self, msg: Message) -> Result<(), ClientError> {
        self.check_usable()?;
        let timeout = self.timeout;
        // `feed` queues the message within the poll that completes it, so
        // the count cannot miss a queued message however this is dropped.
        let queued = bounded(timeout, self.link.feed(msg)).await.and_then(|r| r);
        if let Err(e) = queued {
            if !matches!(e, ClientError::TimedOut(_)) {
                self.mark_broken(&e);
            }
            return Err(e);
        }
        self.owed += 1;
        let flushed = bounded(timeout, self.link.flush()).await.and_then(|r| r);
        if let Err(e) = &flushed
            && !matches!(e, ClientError::TimedOut(_))
        {
            self.mark_broken(e);
        }
        flushed
    }

    /// Read one answer. A timeout leaves it owed (read by the next
    /// exchange); a failure to read breaks the link.
    pub async fn recv(&mut self) -> Result<Message, ClientError> {
        self.check_usable()?;
        let timeout = self.timeout;
        bounded(timeout, std::future::poll_fn(|cx| self.poll_answer(cx))).await?
    }

    /// One round trip, after settling what earlier exchanges left owed.
    pub async fn call(&mut self, msg: Message) -> Result<Message, ClientError> {
        self.settle().await?;
        self.send(msg).await?;
        self.recv().await
    }
}
