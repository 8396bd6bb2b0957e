//! MX checkpoints' 4-bit blocks (OpenAI's gpt-oss releases: `*_blocks` u8 [.., R, nb, 16] and
//! `*_scales` u8 [.., R, nb]) as ggml's MXFP4 rows, repacked as conversion/gpt_oss.py's
//! `repack_mxfp4` does it: the E8M0 scale byte is copied as the block's `e`, and the 32 FP4
//! codes move from the checkpoint's order (byte `i` holds element `2i` in its low nibble and
//! `2i + 1` in its high one) to ggml's (byte `j` holds element `j` low and `j + 16` high). Only
//! bits move: both index the same table of FP4 values (ggml's `kvalues_mxfp4` are the OCP
//! values doubled, and its E8M0 decoding halves the scale to match).

use crate::job::Mxfp4Rows;
use anyhow::{bail, Result};

/// Bytes of one ggml MXFP4 block: the scale, then 16 bytes of codes.
pub const BLOCK_BYTES: usize = 17;

/// One block's 16 code bytes in the checkpoint's order -> ggml's order.
pub fn repack_codes(src: &[u8; 16]) -> [u8; 16] {
    let mut q = [0u8; 16];
    for k in 0..8 {
        let (a, b) = (src[k], src[8 + k]);
        // Elements 2k, 2k+1 are a's nibbles; 16+2k, 17+2k are b's.
        q[2 * k] = (a & 0x0F) | ((b & 0x0F) << 4);
        q[2 * k + 1] = (a >> 4) | (b & 0xF0);
    }
    q
}

/// Writes output rows `first..first + n` of `rows` (each `nb` blocks of 17 bytes) into `out`
/// from the checkpoint's `blocks` and `scales` bytes.
pub fn repack_rows(
    rows: &Mxfp4Rows,
    blocks: &[u8],
    scales: &[u8],
    first: usize,
    n: usize,
    out: &mut [u8],
) -> Result<()> {
    let nb = rows.nb;
    let row_bytes = nb * BLOCK_BYTES;
    if out.len() != n * row_bytes {
        bail!("internal: MXFP4 output of {} bytes for {n} rows", out.len());
    }
    for (i, dst) in out.chunks_exact_mut(row_bytes).enumerate() {
        let sr = rows.source_row(first + i);
        let (b0, s0) = (sr * nb * 16, sr * nb);
        let (Some(b), Some(s)) = (blocks.get(b0..b0 + nb * 16), scales.get(s0..s0 + nb)) else {
            bail!(
                "source row {sr} is past the end of the blocks ({} bytes) or scales ({} bytes)",
                blocks.len(),
                scales.len()
            );
        };
        for (j, blk) in dst.chunks_exact_mut(BLOCK_BYTES).enumerate() {
            blk[0] = s[j];
            let codes: &[u8; 16] = b[j * 16..j * 16 + 16]
                .try_into()
                .map_err(|_| anyhow::anyhow!("internal: block of 16 bytes"))?;
            blk[1..].copy_from_slice(&repack_codes(codes));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// conversion/gpt_oss.py's `transform_nibble_layout`, step by step as its torch code does
    /// it (swap nibbles, interleave the two halves, swap back), on one block.
    fn convert_py(t: &[u8; 16]) -> [u8; 16] {
        let t: Vec<u8> = t.iter().map(|&x| x.rotate_right(4)).collect(); // swap nibbles
        let (a, b) = t.split_at(8);
        let mut out = [0u8; 16];
        for k in 0..8 {
            let blk_a = [a[k] & 0xF0, a[k] << 4];
            let blk_b = [b[k] >> 4, b[k] & 0x0F];
            for m in 0..2 {
                let o = blk_a[m] | blk_b[m];
                out[2 * k + m] = o.rotate_left(4);
            }
        }
        out
    }

    #[test]
    fn codes_move_as_converts_transform_does() {
        let mut x = 0x12345u64;
        for _ in 0..200 {
            let mut blk = [0u8; 16];
            for v in blk.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *v = x as u8;
            }
            assert_eq!(repack_codes(&blk), convert_py(&blk));
        }
        // Element order: source element e (byte e/2, nibble e%2) lands at ggml position
        // (byte e%16, nibble e/16).
        for e in 0..32 {
            let mut blk = [0u8; 16];
            blk[e / 2] = 0x5 << (4 * (e % 2));
            let q = repack_codes(&blk);
            let want_byte = e % 16;
            let want = 0x5u8 << (4 * (e / 16));
            for (j, &v) in q.iter().enumerate() {
                assert_eq!(v, if j == want_byte { want } else { 0 }, "element {e}");
            }
        }
    }
}
