//! Block arithmetic shared by servers and clients.

/// Number of blocks a file of `size` bytes has: `ceil(size / block_size)`.
pub fn total_blocks(size: u64, block_size: u64) -> u64 {
    if block_size == 0 {
        return 0;
    }
    size.div_ceil(block_size)
}

/// Length of block `index` (the last one may be short). `None` when out of range.
pub fn block_len(size: u64, block_size: u64, index: u64) -> Option<u64> {
    if index >= total_blocks(size, block_size) {
        return None;
    }
    let start = index * block_size;
    Some(block_size.min(size - start))
}

/// Collapse sorted block indexes into half-open `[start, end)` ranges.
pub fn to_ranges(sorted: impl IntoIterator<Item = u64>) -> Vec<[u64; 2]> {
    let mut out: Vec<[u64; 2]> = Vec::new();
    for i in sorted {
        match out.last_mut() {
            Some(last) if last[1] == i => last[1] = i + 1,
            _ => out.push([i, i + 1]),
        }
    }
    out
}

/// Expand half-open ranges back into indexes.
pub fn from_ranges(ranges: &[[u64; 2]]) -> impl Iterator<Item = u64> + '_ {
    ranges.iter().flat_map(|r| r[0]..r[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_math() {
        assert_eq!(total_blocks(0, 20480), 0);
        assert_eq!(total_blocks(1, 20480), 1);
        assert_eq!(total_blocks(40960, 20480), 2);
        assert_eq!(total_blocks(50000, 20480), 3);
        assert_eq!(block_len(50000, 20480, 2), Some(9040));
        assert_eq!(block_len(40960, 20480, 1), Some(20480));
        assert_eq!(block_len(50000, 20480, 3), None);
        assert_eq!(total_blocks(5, 0), 0);
    }

    #[test]
    fn ranges_round_trip() {
        let idx = [0, 1, 2, 5, 7, 8];
        let r = to_ranges(idx);
        assert_eq!(r, vec![[0, 3], [5, 6], [7, 9]]);
        assert_eq!(from_ranges(&r).collect::<Vec<_>>(), idx);
        assert!(to_ranges([]).is_empty());
    }
}
