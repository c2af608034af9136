//! What a [`StepClient`](crate::StepClient)'s requests travel over: a
//! [`Link`], one sink of requests and one stream of answers in request
//! order. There are two, and the client treats them alike:
//!
//! * [`Wire`] — frames over a byte stream (TCP, TLS), through [`StepCodec`];
//! * [`Channel`] — messages to a STEP service in this process, through a
//!   pair of bounded channels to a task that calls the service
//!   ([`serve_in_process`]): no socket, no frames.
//!
//! Whatever the link, the client counts the answers it is owed and reads
//! those of an abandoned exchange before the next one, so the rules of a
//! pipelined, cancel-safe exchange are written once, in the client.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::stream::FuturesOrdered;
use futures::{Sink, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::PollSender;

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

/// Requests a channel's serving task reads ahead, and answers it queues:
/// enough for a pipelining window, few enough that a stalled reader holds
/// little.
const CHANNEL_DEPTH: usize = 32;

/// Requests a serving task has the service answer at once.
const SERVED_AT_ONCE: usize = 64;

/// Messages to and from a task serving them in this process.
#[derive(Debug)]
pub struct Channel {
    requests: PollSender<Message>,
    answers: mpsc::Receiver<Result<Message, ClientError>>,
}

impl Sink<Message> for Channel {
    type Error = ClientError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        self.get_mut()
            .requests
            .poll_reserve(cx)
            .map_err(|_| ClientError::Closed)
    }

    fn start_send(self: Pin<&mut Self>, msg: Message) -> Result<(), ClientError> {
        self.get_mut()
            .requests
            .send_item(msg)
            .map_err(|_| ClientError::Closed)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        // A message sent is in the serving task's hands: nothing is buffered.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        self.get_mut().requests.close();
        Poll::Ready(Ok(()))
    }
}

impl Stream for Channel {
    type Item = Result<Message, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().answers.poll_recv(cx)
    }
}

impl Link for Channel {}

/// A [`Channel`] whose requests `serve` answers, on a task started here
/// (so this must run inside a Tokio runtime). Each request is answered on
/// a task of its own, up to [`SERVED_AT_ONCE`] at once, and the answers
/// come back in request order. Like a request already sent over a wire, a
/// request runs to its end even when the client stops waiting or goes: the
/// service is never cut off midway.
pub fn serve_in_process<F, Fut>(serve: F) -> Channel
where
    F: Fn(Message) -> Fut + Send + 'static,
    Fut: Future<Output = Message> + Send + 'static,
{
    let (requests, mut incoming) = mpsc::channel::<Message>(CHANNEL_DEPTH);
    let (outgoing, answers) = mpsc::channel(CHANNEL_DEPTH);
    tokio::spawn(async move {
        let mut running = FuturesOrdered::new();
        let mut open = true;
        loop {
            tokio::select! {
                msg = incoming.recv(), if open && running.len() < SERVED_AT_ONCE => match msg {
                    Some(msg) => running.push_back(tokio::spawn(serve(msg))),
                    None => open = false,
                },
                Some(done) = running.next(), if !running.is_empty() => {
                    let answer = done.map_err(|e| {
                        ClientError::Protocol(format!("the in-process service failed: {e}"))
                    });
                    // The client went: the requests under way finish on
                    // their own tasks, and nobody wants their answers.
                    if outgoing.send(answer).await.is_err() {
                        return;
                    }
                }
                else => return,
            }
        }
    });
    Channel {
        requests: PollSender::new(requests),
        answers,
    }
}
