//! A PATCH body cut into an upload's blocks.

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

use crate::error::GatewayError;

/// A PATCH body cut into the upload's blocks, starting with the kept tail.
pub(super) struct Blocks<S> {
    pub(super) body: S,
    /// Bytes not yet sent, from the block boundary `index * block_size`.
    pub(super) buf: BytesMut,
    pub(super) block_size: usize,
    pub(super) index: u64,
    /// Absolute position of the end of `buf`.
    pub(super) pos: u64,
    pub(super) size: u64,
    pub(super) ended: bool,
    pub(super) failure: Option<GatewayError>,
}

impl<S> Blocks<S>
where
    S: Stream<Item = Result<Bytes, GatewayError>> + Unpin,
{
    pub(super) async fn next_block(&mut self) -> Option<(u64, Bytes)> {
        loop {
            if self.buf.len() >= self.block_size || (self.pos == self.size && !self.buf.is_empty())
            {
                // The block that completes the upload waits for the body's
                // end: a body that goes on past Upload-Length must not
                // complete it (and a failed one is not taken as whole).
                let completes = (self.index + 1) * self.block_size as u64 >= self.size;
                if !completes || (self.ended && self.failure.is_none()) {
                    let n = self.buf.len().min(self.block_size);
                    let block = self.buf.split_to(n).freeze();
                    let i = self.index;
                    self.index += 1;
                    return Some((i, block));
                }
            }
            if self.ended {
                return None;
            }
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    let len = chunk.len() as u64;
                    if self.pos + len > self.size {
                        // What fits is taken, so where the body's framing
                        // cut it does not change what is kept.
                        let fits = (self.size - self.pos) as usize;
                        self.buf.extend_from_slice(&chunk[..fits]);
                        self.pos = self.size;
                        self.ended = true;
                        self.failure = Some(GatewayError::BadRequest(format!(
                            "the body goes past Upload-Length {}: nothing past it is stored, \
                             and the upload continues at the offset HEAD reports",
                            self.size
                        )));
                        continue;
                    }
                    self.pos += len;
                    self.buf.extend_from_slice(&chunk);
                }
                Some(Err(e)) => {
                    // What arrived stays: whole blocks are sent, the rest is
                    // the tail.
                    self.ended = true;
                    self.failure = Some(e);
                }
                None => self.ended = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blocks_start_from_the_tail_and_keep_the_rest() {
        let body =
            futures::stream::iter([&b"cdefg"[..], b"hij"].map(|c| Ok(Bytes::from_static(c))));
        let mut b = Blocks {
            body,
            buf: BytesMut::from(&b"ab"[..]),
            block_size: 4,
            index: 3,
            pos: 14,
            size: 30,
            ended: false,
            failure: None,
        };
        assert_eq!(b.next_block().await, Some((3, Bytes::from_static(b"abcd"))));
        assert_eq!(b.next_block().await, Some((4, Bytes::from_static(b"efgh"))));
        assert_eq!(b.next_block().await, None);
        assert_eq!(&b.buf[..], b"ij");
        // The last block is short and sent as soon as the upload is whole.
        let body = futures::stream::iter([Ok(Bytes::from_static(b"xyz"))]);
        let mut b = Blocks {
            body,
            buf: BytesMut::new(),
            block_size: 4,
            index: 2,
            pos: 8,
            size: 11,
            ended: false,
            failure: None,
        };
        assert_eq!(b.next_block().await, Some((2, Bytes::from_static(b"xyz"))));
        assert_eq!(b.next_block().await, None);
        assert!(b.buf.is_empty() && b.failure.is_none());
    }

    #[tokio::test]
    async fn the_last_block_waits_for_the_end_and_a_longer_body_never_completes() {
        let blocks = |chunks: Vec<&'static [u8]>| Blocks {
            body: futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c)))),
            buf: BytesMut::new(),
            block_size: 4,
            index: 0,
            pos: 0,
            size: 6,
            ended: false,
            failure: None,
        };
        let mut b = blocks(vec![b"abcd", b"ef", b"", b"gh"]);
        assert_eq!(b.next_block().await, Some((0, Bytes::from_static(b"abcd"))));
        // "ef" completes the upload, but "gh" follows: refused, not sent.
        assert_eq!(b.next_block().await, None);
        assert!(matches!(b.failure, Some(GatewayError::BadRequest(_))));
        assert_eq!(&b.buf[..], b"ef");
        // The same bytes framed otherwise: the same outcome.
        let mut b = blocks(vec![b"abcd", b"efgh"]);
        assert_eq!(b.next_block().await, Some((0, Bytes::from_static(b"abcd"))));
        assert_eq!(b.next_block().await, None);
        assert!(b.failure.is_some());
        assert_eq!(&b.buf[..], b"ef");
        // Exactly the upload's length: the last block goes once the body ends.
        let mut b = blocks(vec![b"abcd", b"ef", b""]);
        assert_eq!(b.next_block().await, Some((0, Bytes::from_static(b"abcd"))));
        assert_eq!(b.next_block().await, Some((1, Bytes::from_static(b"ef"))));
        assert_eq!(b.next_block().await, None);
        assert!(b.failure.is_none());
    }
}
