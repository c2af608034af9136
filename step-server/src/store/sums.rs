//! Checksums at rest: one CRC32C per 4 KiB chunk of a complete file, kept in
//! a sidecar next to its meta (`sums/<user>/<key>`) and checked on every
//! DOWNLOAD, so bytes that rotted or were altered on disk are refused
//! rather than served as a clean block (the whole-file md5 cannot protect a
//! single block or a range).
//!
//! The chunk is small and a power of two so that the block sizes clients use
//! (20480, 512 KiB, 1 MiB: all multiples of 4096) read exactly their own
//! chunks; any other block size reads at most one partial chunk more on each
//! side. CRC32C runs at many GB/s with the SSE4.2/ARMv8 instruction, so the
//! check costs little next to the read itself.
//!
//! Sidecar layout (little-endian): `STEPSUM1`, chunk size (u32), file size
//! (u64), the file's md5 (16 bytes), then one u32 per chunk. The header ties
//! a sidecar to the very file it describes: a sidecar whose size or md5 does
//! not match the meta is not this file's (a crash kept an older one) and is
//! removed when the store opens.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub const CHUNK: u64 = 4096;
const MAGIC: &[u8; 8] = b"STEPSUM1";
pub const HEADER_LEN: u64 = 8 + 4 + 8 + 16;

/// CRCs of a byte stream fed in order, cut into [`CHUNK`]-byte chunks.
#[derive(Debug, Default)]
pub struct ChunkSums {
    sums: Vec<u32>,
    current: u32,
    current_len: u64,
}

impl ChunkSums {
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = (CHUNK - self.current_len) as usize;
            let (head, rest) = data.split_at(room.min(data.len()));
            self.current = crc32c::crc32c_append(self.current, head);
            self.current_len += head.len() as u64;
            if self.current_len == CHUNK {
                self.sums.push(self.current);
                self.current = 0;
                self.current_len = 0;
            }
            data = rest;
        }
    }

    /// The CRCs of every chunk, the last one possibly partial.
    pub fn finish(mut self) -> Vec<u32> {
        if self.current_len > 0 {
            self.sums.push(self.current);
        }
        self.sums
    }
}

/// Chunks in a file of `size` bytes.
pub fn chunks(size: u64) -> u64 {
    size.div_ceil(CHUNK)
}

/// The sidecar's bytes for a file of `size` bytes with md5 `md5_hex`.
pub fn encode(size: u64, md5_hex: &str, sums: &[u32]) -> io::Result<Vec<u8>> {
    let md5 = md5_bytes(md5_hex)?;
    if sums.len() as u64 != chunks(size) {
        return Err(io::Error::other("checksums do not cover the file"));
    }
    let mut out = Vec::with_capacity(HEADER_LEN as usize + 4 * sums.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(CHUNK as u32).to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&md5);
    for s in sums {
        out.extend_from_slice(&s.to_le_bytes());
    }
    Ok(out)
}

fn md5_bytes(md5_hex: &str) -> io::Result<[u8; 16]> {
    let mut md5 = [0u8; 16];
    hex::decode_to_slice(md5_hex, &mut md5)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad md5 in meta"))?;
    Ok(md5)
}

/// Whether the sidecar `file` describes the file of `size` bytes and md5
/// `md5_hex` (and is whole).
pub fn matches(file: &File, size: u64, md5_hex: &str) -> io::Result<bool> {
    let mut header = [0u8; HEADER_LEN as usize];
    match file.read_exact_at(&mut header, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    let Ok(md5) = md5_bytes(md5_hex) else {
        return Ok(false);
    };
    let mut expected = Vec::with_capacity(HEADER_LEN as usize);
    expected.extend_from_slice(MAGIC);
    expected.extend_from_slice(&(CHUNK as u32).to_le_bytes());
    expected.extend_from_slice(&size.to_le_bytes());
    expected.extend_from_slice(&md5);
    Ok(header[..] == expected[..] && file.metadata()?.len() == HEADER_LEN + 4 * chunks(size))
}

/// The chunk-aligned span `[start, end)` that covers `len` bytes at
/// `offset` of a file of `size` bytes, and the index of its first chunk.
pub fn covering(offset: u64, len: u64, size: u64) -> (u64, u64, u64) {
    let first = offset / CHUNK;
    let start = first * CHUNK;
    let end = (offset + len)
        .div_ceil(CHUNK)
        .saturating_mul(CHUNK)
        .min(size);
    (first, start, end.max(start))
}

/// Check `data`, the chunk-aligned bytes from chunk `first` on, against the
/// sidecar `file`. Returns the offset (in the file) of the first chunk that
/// fails, if any.
pub fn verify(file: &File, first: u64, data: &[u8]) -> io::Result<Option<u64>> {
    let n = (data.len() as u64).div_ceil(CHUNK) as usize;
    let mut raw = vec![0u8; 4 * n];
    file.read_exact_at(&mut raw, HEADER_LEN + 4 * first)?;
    for (i, (chunk, want)) in data
        .chunks(CHUNK as usize)
        .zip(raw.chunks_exact(4))
        .enumerate()
    {
        let want = u32::from_le_bytes([want[0], want[1], want[2], want[3]]);
        if crc32c::crc32c(chunk) != want {
            return Ok(Some((first + i as u64) * CHUNK));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn content(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i * 31 + i / 7) as u8).collect()
    }

    #[test]
    fn sums_do_not_depend_on_how_the_stream_is_cut() {
        let body = content(3 * CHUNK as usize + 123);
        let whole: Vec<u32> = body.chunks(CHUNK as usize).map(crc32c::crc32c).collect();
        for cut in [1usize, 7, 100, 4095, 4096, 4097, 20480, body.len()] {
            let mut s = ChunkSums::default();
            for piece in body.chunks(cut) {
                s.update(piece);
            }
            assert_eq!(s.finish(), whole, "pieces of {cut}");
        }
        assert!(ChunkSums::default().finish().is_empty());
    }

    #[test]
    fn covering_spans_align_to_chunks_and_stop_at_the_end() {
        let size = 5 * CHUNK + 1000;
        // Aligned blocks read exactly themselves.
        assert_eq!(covering(0, 20480, size), (0, 0, 20480));
        assert_eq!(covering(20480, 1000, size), (5, 20480, 21480));
        // Odd offsets and sizes widen to the chunks around them.
        assert_eq!(covering(100, 10, size), (0, 0, CHUNK));
        assert_eq!(covering(4095, 2, size), (0, 0, 2 * CHUNK));
        assert_eq!(covering(20481, 999, size), (5, 20480, size));
        // The last partial chunk ends at the file's end.
        assert_eq!(covering(size - 1, 1, size), (5, 5 * CHUNK, size));
        assert_eq!(covering(0, size, size), (0, 0, size));
        assert_eq!(covering(0, 0, 0), (0, 0, 0));
    }

    #[test]
    fn verify_finds_the_failing_chunk_at_odd_offsets() {
        let body = content(5 * CHUNK as usize + 1000);
        let mut s = ChunkSums::default();
        s.update(&body);
        let sums = s.finish();
        let md5 = "00112233445566778899aabbccddeeff";
        let mut side = tempfile::tempfile().expect("tmp");
        side.write_all(&encode(body.len() as u64, md5, &sums).expect("encode"))
            .expect("write");
        assert!(matches(&side, body.len() as u64, md5).expect("read"));
        assert!(!matches(&side, body.len() as u64 + 1, md5).expect("read"));
        assert!(
            !matches(&side, body.len() as u64, "ff112233445566778899aabbccddeeff").expect("read")
        );

        let mut bad = body.clone();
        bad[5 * CHUNK as usize + 999] ^= 1;
        for (offset, len) in [(0u64, body.len() as u64), (20481, 999), (5 * CHUNK, 1)] {
            let (first, start, end) = covering(offset, len, body.len() as u64);
            let clean = &body[start as usize..end as usize];
            assert_eq!(verify(&side, first, clean).expect("verify"), None);
            let dirty = &bad[start as usize..end as usize];
            assert_eq!(
                verify(&side, first, dirty).expect("verify"),
                Some(5 * CHUNK),
                "{offset}+{len}"
            );
        }
        // A chunk elsewhere is not affected.
        let (first, start, end) = covering(CHUNK + 5, 10, body.len() as u64);
        assert_eq!(
            verify(&side, first, &bad[start as usize..end as usize]).expect("v"),
            None
        );
    }
}
