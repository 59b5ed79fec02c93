//! The deterministic byte stream every connection sends and checks its echo against.
//!
//! SplitMix64 seeded per connection: cheap (one multiply-xorshift round per 8 bytes), every
//! byte value occurs, and no two connections or offsets share a pattern, so a byte that is
//! corrupted, dropped, duplicated, reordered or delivered to the wrong client shows up.

/// An endless pseudo-random byte stream; two instances with the same seed yield the same bytes.
#[derive(Clone, Debug)]
pub struct ByteStream {
    state: u64,
    word: [u8; 8],
    /// Bytes of `word` already handed out (8: empty).
    used: usize,
}

impl ByteStream {
    pub fn new(seed: u64) -> ByteStream {
        ByteStream {
            // Mix the seed once so that seeds 0, 1, 2… do not start on neighbouring states.
            state: mix(seed ^ 0x6a09_e667_f3bc_c908),
            word: [0; 8],
            used: 8,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.state).to_le_bytes()
    }

    /// Fills `buf` with the next `buf.len()` bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut rest = buf;
        // Finish the partly used word first, then whole words, then start a new one.
        while self.used < 8 && !rest.is_empty() {
            rest[0] = self.word[self.used];
            self.used += 1;
            rest = &mut rest[1..];
        }
        let mut chunks = rest.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_word());
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            self.word = self.next_word();
            tail.copy_from_slice(&self.word[..tail.len()]);
            self.used = tail.len();
        }
    }

    /// Checks that `data` is the next `data.len()` bytes of the stream (advancing past them).
    /// Returns the offset in `data` of the first wrong byte and the byte that was expected.
    pub fn verify(&mut self, data: &[u8]) -> Result<(), (usize, u8)> {
        const BLOCK: usize = 4096;
        let mut expect = [0u8; BLOCK];
        for (i, part) in data.chunks(BLOCK).enumerate() {
            let want = &mut expect[..part.len()];
            self.fill(want);
            if part != want {
                let at = part.iter().zip(want.iter()).position(|(a, b)| a != b);
                let at = at.unwrap_or(0);
                return Err((i * BLOCK + at, want[at]));
            }
        }
        Ok(())
    }
}

/// The stream seed of connection `id`'s `attempt`-th socket (churn reconnects).
pub fn seed(id: u64, attempt: u32) -> u64 {
    mix(id.wrapping_mul(0x1_0000_0001) ^ u64::from(attempt) << 40)
}

/// The SplitMix64 output function (also a good 64-bit hash).
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_whatever_the_split() {
        let mut whole = vec![0u8; 1000];
        ByteStream::new(7).fill(&mut whole);
        let mut g = ByteStream::new(7);
        let mut pieces = Vec::new();
        for len in [0, 1, 3, 8, 9, 15, 100, 864] {
            let mut p = vec![0u8; len];
            g.fill(&mut p);
            pieces.extend_from_slice(&p);
        }
        assert_eq!(pieces, whole);
        let mut v = ByteStream::new(7);
        assert_eq!(v.verify(&whole[..5]), Ok(()));
        assert_eq!(v.verify(&whole[5..]), Ok(()));
    }

    #[test]
    fn every_byte_value_occurs_and_seeds_differ() {
        let mut buf = vec![0u8; 1 << 16];
        ByteStream::new(1).fill(&mut buf);
        let mut seen = [false; 256];
        buf.iter().for_each(|&b| seen[b as usize] = true);
        assert!(seen.iter().all(|&s| s));
        let mut other = vec![0u8; 64];
        ByteStream::new(2).fill(&mut other);
        assert_ne!(&buf[..64], &other[..]);
    }

    #[test]
    fn verify_finds_the_first_wrong_byte() {
        let mut buf = vec![0u8; 10_000];
        ByteStream::new(3).fill(&mut buf);
        buf[5000] ^= 1;
        let want = buf[5000] ^ 1;
        assert_eq!(ByteStream::new(3).verify(&buf), Err((5000, want)));
    }
}
