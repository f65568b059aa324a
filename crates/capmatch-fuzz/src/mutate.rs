//! Byte-level mutations (as AFL's and libFuzzer's havoc stages do) driven by a seeded RNG,
//! so a run is reproduced by its seed.

/// xorshift64*: small, fast, and the same sequence on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Values that sit on the edges of integer fields (sizes, counts, offsets).
pub const INTERESTING_U32: [u32; 10] = [0, 1, 0x7f, 0x80, 0xff, 0xffff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 0x0100_0000];

/// One to four stacked mutations of `input`; `other` is another corpus entry to splice from.
pub fn havoc(input: &mut Vec<u8>, other: &[u8], rng: &mut Rng) {
    for _ in 0..1 + rng.below(4) {
        mutate_once(input, other, rng);
    }
}

fn mutate_once(input: &mut Vec<u8>, other: &[u8], rng: &mut Rng) {
    let len = input.len();
    match rng.below(10) {
        0 if len > 0 => {
            let i = rng.below(len);
            input[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            input[i] = [0u8, 0xff, 0x7f, 0x80, b'0', b'9', b'-', b'"'][rng.below(8)];
        }
        2 if len >= 4 => {
            let i = rng.below(len - 3);
            let v = INTERESTING_U32[rng.below(INTERESTING_U32.len())];
            let bytes = if rng.chance(2) { v.to_le_bytes() } else { v.to_be_bytes() };
            input[i..i + 4].copy_from_slice(&bytes);
        }
        3 => {
            let i = rng.below(len + 1);
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            input.splice(i..i, bytes);
        }
        4 if len > 1 => {
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(256));
            input.drain(i..i + n);
        }
        5 if len > 0 => input.truncate(rng.below(len)),
        6 if len > 1 => {
            // Duplicate a block in place (repeated chunks, nested structures).
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(512));
            let block = input[i..i + n].to_vec();
            let at = rng.below(len + 1);
            input.splice(at..at, block);
        }
        7 if !other.is_empty() => {
            // Splice: this input's head with another's tail.
            let cut = rng.below(len + 1);
            let from = rng.below(other.len());
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        8 if len > 0 && len < (1 << 20) && rng.chance(8) => {
            // Grow to about a megabyte (huge texts, long lists).
            let copy = input.clone();
            while input.len() < (1 << 20) {
                input.extend_from_slice(&copy);
            }
        }
        _ if len > 0 => {
            // An ASCII digit run: numbers in text formats (JSON sizes, SVG lengths).
            let i = rng.below(len);
            let digits = ["0", "-1", "4294967296", "99999999999999999999", "1e308", "NaN", "65535"][rng.below(7)];
            input.splice(i..i, digits.bytes());
        }
        _ => input.extend((0..1 + rng.below(8)).map(|_| rng.next_u64() as u8)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_mutations() {
        let run = |seed| {
            let mut rng = Rng::new(seed);
            let mut input = b"{\"hidden_size\": 32}".to_vec();
            (0..50).map(|_| {
                havoc(&mut input, b"other input", &mut rng);
                input.clone()
            }).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
