//! llama-bench's token source: C's `rand()` as glibc implements it.

/// C's `rand()` as glibc implements it (`random_r`, TYPE_3: an additive feedback generator over
/// 31 words), from `srand(seed)`. llama-bench never seeds, so its tokens come from seed 1.
/// Serializable, so that a worker process can go on where the previous file's worker stopped.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CRand {
    s: [u32; 31],
    f: usize,
    r: usize,
}

impl CRand {
    pub fn new(seed: u32) -> CRand {
        let mut s = [0u32; 31];
        let seed = if seed == 0 { 1 } else { seed };
        s[0] = seed;
        let mut word = seed as i32 as i64;
        for x in s.iter_mut().skip(1) {
            let hi = word / 127_773;
            let lo = word % 127_773;
            word = 16_807 * lo - 2_836 * hi;
            if word < 0 {
                word += 2_147_483_647;
            }
            *x = word as u32;
        }
        let mut g = CRand { s, f: 3, r: 0 };
        for _ in 0..310 {
            g.next();
        }
        g
    }

    /// The next value, in [0, RAND_MAX = 2^31 - 1].
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> i32 {
        self.s[self.f] = self.s[self.f].wrapping_add(self.s[self.r]);
        let out = self.s[self.f] >> 1;
        self.f = (self.f + 1) % 31;
        self.r = (self.r + 1) % 31;
        out as i32
    }
}
