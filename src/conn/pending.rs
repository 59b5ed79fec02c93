//! Pending output: the bytes the socket did not take yet, in order.
//!
//! 24 bytes when empty, and no heap memory: a boxed slice with two `u32` cursors instead of a
//! `Vec` plus a `usize` start, so an idle connection's slot stays small. The cursors bound one
//! connection's pending output to [`MAX`] bytes; the server caps `--max-pending` well below it.

/// The most bytes one connection may hold pending (the cursors are `u32`).
pub const MAX: usize = u32::MAX as usize / 2;

/// Bytes the socket did not take yet, oldest first. Holds memory only while something is pending.
#[derive(Default, Debug)]
pub struct Pending {
    buf: Box<[u8]>,
    start: u32,
    end: u32,
}

impl Pending {
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The bytes still to send, oldest first.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start as usize..self.end as usize]
    }

    /// Appends bytes after what is already pending.
    ///
    /// Panics if the total would exceed [`MAX`]: callers stop reading long before (the
    /// `--max-pending` cap is checked before every read).
    pub fn push(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let live = self.len();
        let need = live + data.len();
        assert!(need <= MAX, "pending output above {MAX} bytes");
        if self.end as usize + data.len() > self.buf.len() {
            if need + need / 2 <= self.buf.len() {
                // Reuse the consumed front; at least a third stays free, so the copies cost
                // O(1) per byte pushed.
                let (s, e) = (self.start as usize, self.end as usize);
                self.buf.copy_within(s..e, 0);
            } else {
                // Double, but never beyond twice what is live: capacity ≤ 2 × the most pending.
                let cap = need.max(self.buf.len() * 2).min(2 * need).min(MAX);
                let mut grown = vec![0u8; cap].into_boxed_slice();
                grown[..live].copy_from_slice(self.as_slice());
                self.buf = grown;
            }
            self.start = 0;
            self.end = live as u32;
        }
        let e = self.end as usize;
        self.buf[e..e + data.len()].copy_from_slice(data);
        self.end += data.len() as u32;
    }

    /// Marks `n` bytes as sent; when nothing is left, the allocation is released.
    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.len(), "consumed more than pending");
        self.start += n as u32;
        if self.is_empty() {
            *self = Pending::default();
        }
    }

    /// Bytes of heap held (for tests of the memory bound).
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_keeps_order_across_partial_consumes() {
        let mut p = Pending::default();
        assert!(p.is_empty());
        assert_eq!(p.capacity(), 0, "no allocation while nothing is pending");
        p.push(b"hello ");
        p.push(b"world");
        assert_eq!(p.as_slice(), b"hello world");
        p.consume(3);
        assert_eq!(p.as_slice(), b"lo world");
        p.push(b"!");
        assert_eq!(p.as_slice(), b"lo world!");
        assert_eq!(p.len(), 9);
    }

    #[test]
    fn pending_releases_memory_when_drained() {
        let mut p = Pending::default();
        p.push(&[7u8; 100_000]);
        assert!(p.capacity() >= 100_000);
        p.consume(60_000);
        p.consume(40_000);
        assert!(p.is_empty());
        assert_eq!(p.capacity(), 0);
    }

    #[test]
    fn pending_compacts_instead_of_growing_without_bound() {
        // A steady stream of push(n) / consume(n) must not grow the buffer without bound.
        let mut p = Pending::default();
        let chunk = [1u8; 1000];
        p.push(&chunk);
        for i in 0..10_000 {
            p.push(&chunk);
            p.consume(1000);
            assert_eq!(p.len(), 1000, "round {i}");
        }
        assert!(
            p.capacity() <= 8 * 1000,
            "capacity grew to {}",
            p.capacity()
        );
    }

    #[test]
    fn pending_byte_order_under_random_ops() {
        // A model check: bytes come out exactly in the order they went in.
        let mut p = Pending::default();
        let mut model = std::collections::VecDeque::new();
        let mut x: u32 = 12345;
        let mut next_byte = 0u8;
        let mut most = 0;
        for _ in 0..20_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            if x.is_multiple_of(3) && !model.is_empty() {
                let n = (x as usize >> 8) % (model.len() + 1);
                assert_eq!(
                    &p.as_slice()[..n],
                    model.iter().take(n).copied().collect::<Vec<_>>()
                );
                p.consume(n);
                model.drain(..n);
            } else {
                let n = (x as usize >> 8) % 300;
                let data: Vec<u8> = (0..n)
                    .map(|_| {
                        next_byte = next_byte.wrapping_add(1);
                        next_byte
                    })
                    .collect();
                p.push(&data);
                model.extend(data);
            }
            assert_eq!(p.len(), model.len());
            most = most.max(p.len());
            assert!(
                p.capacity() <= 2 * most,
                "capacity {} for at most {most}",
                p.capacity()
            );
        }
    }

    #[test]
    #[should_panic(expected = "consumed more than pending")]
    fn pending_rejects_over_consume() {
        let mut p = Pending::default();
        p.push(b"ab");
        p.consume(3);
    }

    #[test]
    fn pending_is_24_bytes() {
        assert_eq!(std::mem::size_of::<Pending>(), 24);
    }
}
