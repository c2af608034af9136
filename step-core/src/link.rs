//! What a [`StepClient`](crate::StepClient)'s requests travel over: a
//! [`Link`], one sink of requests and one stream of answers in request
//! order. There are two, and the client treats them alike:
//!
//! * [`Wire`] — frames over a byte stream (TCP, TLS), through [`StepCodec`];
//! * [`Served`] — messages to a STEP service in this process
//!   ([`serve_in_process`]), each answered on a task of its own: no socket,
//!   no frames.
//!
//! Whatever the link, the client counts the answers it is owed and reads
//! those of an abandoned exchange before the next one, so the rules of a
//! pipelined, cancel-safe exchange are written once, in the client.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use futures::stream::FuturesOrdered;
use futures::{Sink, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::codec::StepCodec;
use crate::error::ClientError;
use crate::message::Message;

/// A sink of requests and a stream of their answers, in order. A stream
/// item `Err(ClientError::Protocol(_))` is an answer that could not be
/// read as a message (it still counts as the answer); any other error means
/// the link is out of step. The stream ends when the other side closed.
pub trait Link:
    Sink<Message, Error = ClientError>
    + Stream<Item = Result<Message, ClientError>>
    + Send
    + Unpin
    + std::fmt::Debug
{
    /// Whether part of an answer has been read and not yet yielded (which,
    /// with nothing owed, is data the server was not asked for).
    fn has_buffered(&self) -> bool {
        false
    }
}

/// Frames over a byte stream.
#[derive(Debug)]
pub struct Wire<T> {
    reader: FramedRead<ReadHalf<T>, StepCodec>,
    writer: FramedWrite<WriteHalf<T>, StepCodec>,
}

impl<T: AsyncRead + AsyncWrite> Wire<T> {
    pub fn new(io: T, codec: StepCodec) -> Self {
        let (r, w) = tokio::io::split(io);
        Self {
            reader: FramedRead::new(r, codec),
            writer: FramedWrite::new(w, codec),
        }
    }
}

impl<T: AsyncWrite> Sink<Message> for Wire<T> {
    type Error = ClientError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        Sink::<Message>::poll_ready(Pin::new(&mut self.get_mut().writer), cx).map_err(Into::into)
    }

    fn start_send(self: Pin<&mut Self>, msg: Message) -> Result<(), ClientError> {
        Pin::new(&mut self.get_mut().writer)
            .start_send(msg)
            .map_err(Into::into)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        Sink::<Message>::poll_flush(Pin::new(&mut self.get_mut().writer), cx).map_err(Into::into)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        Sink::<Message>::poll_close(Pin::new(&mut self.get_mut().writer), cx).map_err(Into::into)
    }
}

impl<T: AsyncRead> Stream for Wire<T> {
    type Item = Result<Message, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let frame = ready!(self.get_mut().reader.poll_next_unpin(cx));
        Poll::Ready(frame.map(|f| match f {
            Ok(frame) => {
                Message::from_frame(frame).map_err(|e| ClientError::Protocol(e.to_string()))
            }
            Err(e) => Err(e.into()),
        }))
    }
}

impl<T: AsyncRead + AsyncWrite + Send + std::fmt::Debug> Link for Wire<T> {
    fn has_buffered(&self) -> bool {
        !self.reader.read_buffer().is_empty()
    }
}

/// Requests a [`Served`] link has the service answer at once; more wait
/// (the client's window is usually far smaller).
const SERVED_AT_ONCE: usize = 64;

/// Requests handed to a STEP service in this process, each answered on a
/// task of its own; the answers are read back in request order.
pub struct Served<F> {
    serve: F,
    running: FuturesOrdered<JoinHandle<Message>>,
    /// Who waits for room (a full [`SERVED_AT_ONCE`]), woken by an answer.
    waiting: Option<Waker>,
}

impl<F> std::fmt::Debug for Served<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("running", &self.running.len())
            .finish_non_exhaustive()
    }
}

impl<F, Fut> Sink<Message> for Served<F>
where
    F: Fn(Message) -> Fut + Unpin,
    Fut: Future<Output = Message> + Send + 'static,
{
    type Error = ClientError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        let this = self.get_mut();
        if this.running.len() < SERVED_AT_ONCE {
            return Poll::Ready(Ok(()));
        }
        this.waiting = Some(cx.waker().clone());
        Poll::Pending
    }

    fn start_send(self: Pin<&mut Self>, msg: Message) -> Result<(), ClientError> {
        let this = self.get_mut();
        // A task of its own: like a request already sent over a wire, it
        // runs to its end even if the client stops waiting or goes, so the
        // service is never cut off midway through a request.
        this.running.push_back(tokio::spawn((this.serve)(msg)));
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        // A request sent is already being served: nothing is buffered.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        Poll::Ready(Ok(()))
    }
}

impl<F: Unpin> Stream for Served<F> {
    type Item = Result<Message, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match this.running.poll_next_unpin(cx) {
            Poll::Ready(Some(done)) => {
                if let Some(waker) = this.waiting.take() {
                    waker.wake();
                }
                Poll::Ready(Some(done.map_err(|e| {
                    ClientError::Protocol(format!("the in-process service failed: {e}"))
                })))
            }
            // Nothing asked, nothing owed: the link is idle, not closed (the
            // client polls again after its next request).
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

impl<F, Fut> Link for Served<F>
where
    F: Fn(Message) -> Fut + Send + Unpin,
    Fut: Future<Output = Message> + Send + 'static,
{
}

/// A link whose requests `serve` answers in this process: no socket, no
/// frames, the same client (pipelining, owed answers, cancel-safety) as
/// over TCP. Must be used inside a Tokio runtime.
pub fn serve_in_process<F, Fut>(serve: F) -> Served<F>
where
    F: Fn(Message) -> Fut + Send + Unpin + 'static,
    Fut: Future<Output = Message> + Send + 'static,
{
    Served {
        serve,
        running: FuturesOrdered::new(),
        waiting: None,
    }
}
