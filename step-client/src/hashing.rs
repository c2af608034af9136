//! The md5 of a file being transferred, computed once, in order, on a
//! thread of its own while the transfer goes on (md5 cannot be split, and at
//! well under 1 GB/s a core it would otherwise set the pace of the
//! transfer).
//!
//! Blocks are handed over as they pass, in any order. Those that arrive
//! ahead of the next one to hash wait in memory, up to a bound; past it, a
//! block is dropped and read back from the file it was already written to
//! when its turn comes (downloads only). Blocks that were on disk before
//! this run (a resumed download) are read back once, likewise.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;

use bytes::Bytes;
use md5::Digest;
use step_core::digest::{Md5Hasher, finish_hex};
use step_core::plan::block_len;

/// Blocks handed over but not yet taken by the hashing thread.
const QUEUE: usize = 8;

/// The blocks of one file: size, block size, which are on disk already.
#[derive(Debug)]
pub struct Layout {
    pub size: u64,
    pub block_size: u64,
    /// Where blocks not handed over are read from; `None` when every block
    /// will be handed over in order (an upload reads its file front to back).
    pub file: Option<File>,
    /// Blocks in `file` already (a resumed download's), by index.
    pub on_disk: Vec<bool>,
    /// Bytes of early blocks held in memory at most.
    pub hold: usize,
}

/// The hashing thread's end for the transfer: hand blocks over, then finish.
#[derive(Debug)]
pub struct InOrderMd5 {
    tx: Option<SyncSender<(u64, Bytes)>>,
    thread: Option<JoinHandle<io::Result<Option<String>>>>,
}

impl InOrderMd5 {
    pub fn start(layout: Layout) -> io::Result<InOrderMd5> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("step-client-md5".into())
            .spawn(move || hash(layout, &rx))?;
        Ok(InOrderMd5 {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Hand block `index` over, once its bytes are in the file (if any).
    /// Waits while the hashing thread is behind: a transfer must not run
    /// further ahead of its md5 than the queue.
    pub fn give(&self, index: u64, data: Bytes) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send((index, data)) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(item)) => crate::session::block_here(|| {
                let _ = tx.send(item);
            }),
        }
    }

    /// The md5 (hex) of the whole file, or `None` when some block was
    /// neither handed over nor on disk (the transfer stopped early).
    pub fn finish(mut self) -> io::Result<Option<String>> {
        drop(self.tx.take());
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(out)) => out,
            _ => Err(io::Error::other("the md5 thread failed")),
        }
    }
}

impl Drop for InOrderMd5 {
    fn drop(&mut self) {
        // Ends the thread; its result is nobody's any more.
        drop(self.tx.take());
    }
}

fn hash(mut layout: Layout, rx: &Receiver<(u64, Bytes)>) -> io::Result<Option<String>> {
    let total = step_core::plan::total_blocks(layout.size, layout.block_size);
    let mut md5 = Md5Hasher::new();
    let mut next = 0u64;
    let mut early: BTreeMap<u64, Bytes> = BTreeMap::new();
    let mut held = 0usize;
    loop {
        // Everything that can be hashed now, in order.
        while next < total {
            if let Some(data) = early.remove(&next) {
                held -= data.len();
                md5.update(&data);
            } else if on_disk(&layout, next) {
                md5.update(read_back(&layout, next)?);
            } else {
                break;
            }
            next += 1;
        }
        let Ok((index, data)) = rx.recv() else { break };
        if index == next {
            md5.update(&data);
            next += 1;
        } else if index > next && index < total {
            if held + data.len() <= layout.hold {
                held += data.len();
                early.insert(index, data);
            } else if let Some(d) = usize::try_from(index)
                .ok()
                .and_then(|i| layout.on_disk.get_mut(i))
            {
                // Too far ahead to hold: its turn reads it from the file.
                *d = true;
            }
        }
    }
    Ok((next == total).then(|| finish_hex(md5)))
}

fn on_disk(layout: &Layout, index: u64) -> bool {
    layout.file.is_some()
        && usize::try_from(index)
            .ok()
            .and_then(|i| layout.on_disk.get(i))
            .is_some_and(|d| *d)
}

fn read_back(layout: &Layout, index: u64) -> io::Result<Vec<u8>> {
    let len = block_len(layout.size, layout.block_size, index).unwrap_or(0);
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
    if let Some(file) = &layout.file {
        file.read_exact_at(&mut buf, index * layout.block_size)?;
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use step_core::digest::md5_hex;

    fn blocks(data: &[u8], bs: usize) -> Vec<Bytes> {
        data.chunks(bs).map(Bytes::copy_from_slice).collect()
    }

    #[test]
    fn any_order_gives_the_md5_of_the_whole() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let parts = blocks(&data, 1000);
        for order in [
            (0..10).collect::<Vec<u64>>(),
            (0..10).rev().collect(),
            vec![3, 1, 0, 2, 9, 8, 4, 5, 7, 6],
        ] {
            let h = InOrderMd5::start(Layout {
                size: data.len() as u64,
                block_size: 1000,
                file: None,
                on_disk: vec![false; 10],
                hold: 1 << 20,
            })
            .expect("start");
            for i in order {
                h.give(i, parts[i as usize].clone());
            }
            assert_eq!(h.finish().expect("md5"), Some(md5_hex(&data)));
        }
    }

    #[test]
    fn blocks_beyond_the_hold_and_blocks_on_disk_are_read_back() {
        let data: Vec<u8> = (0..8_000u32).map(|i| (i % 13) as u8).collect();
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("part");
        std::fs::write(&path, &data).expect("write");
        let parts = blocks(&data, 1000);
        // Block 0 was there before; 1 arrives last; 7 and 6 overflow the hold.
        let mut on_disk = vec![false; 8];
        on_disk[0] = true;
        let h = InOrderMd5::start(Layout {
            size: 8000,
            block_size: 1000,
            file: Some(File::open(&path).expect("open")),
            on_disk,
            hold: 4000,
        })
        .expect("start");
        for i in [2, 3, 4, 5, 7, 6, 1] {
            h.give(i, parts[i as usize].clone());
        }
        assert_eq!(h.finish().expect("md5"), Some(md5_hex(&data)));
    }

    #[test]
    fn a_missing_block_gives_no_md5() {
        let h = InOrderMd5::start(Layout {
            size: 3000,
            block_size: 1000,
            file: None,
            on_disk: vec![false; 3],
            hold: 1 << 20,
        })
        .expect("start");
        h.give(0, Bytes::from_static(&[0; 1000]));
        h.give(2, Bytes::from_static(&[0; 1000]));
        assert_eq!(h.finish().expect("md5"), None);
        let empty = InOrderMd5::start(Layout {
            size: 0,
            block_size: 1000,
            file: None,
            on_disk: Vec::new(),
            hold: 0,
        })
        .expect("start");
        assert_eq!(
            empty.finish().expect("md5"),
            Some(step_core::digest::EMPTY_MD5.to_owned())
        );
    }
}
