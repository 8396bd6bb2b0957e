//! ggml's own quantizers and dequantizers, called through the llama.cpp bindings. They are
//! kiln's oracle: tests and benchmarks run the same input through ggml and through
//! `kiln-kernels` and compare bytes and time.

use kiln_kernels::GgmlType;
use llama_cpp_sys_2 as sys;

/// ggml's bytes for `src` (rows of `n_per_row`) quantized to `ty` with `ggml_quantize_chunk`,
/// which runs on the calling thread.
///
/// Panics if `n_per_row` is not a multiple of the block size or `src` is not whole rows (ggml
/// would abort); callers are tests and benchmarks that control their input.
pub fn quantize(ty: GgmlType, src: &[f32], n_per_row: usize, imatrix: Option<&[f32]>) -> Vec<u8> {
    let row_bytes = ty
        .row_bytes(n_per_row)
        .expect("row length is a whole number of blocks");
    assert!(src.len().is_multiple_of(n_per_row), "input is whole rows");
    if let Some(qw) = imatrix {
        assert_eq!(qw.len(), n_per_row, "one importance weight per column");
    }
    let nrows = src.len() / n_per_row;
    let mut dst = vec![0u8; nrows * row_bytes];
    let written = unsafe {
        sys::ggml_quantize_chunk(
            ty as sys::ggml_type,
            src.as_ptr(),
            dst.as_mut_ptr().cast(),
            0,
            nrows as i64,
            n_per_row as i64,
            imatrix.map_or(std::ptr::null(), |q| q.as_ptr()),
        )
    };
    assert_eq!(written, dst.len(), "ggml wrote the whole output");
    dst
}

/// ggml's `to_float` for `ty` applied to `src` (whole blocks).
pub fn dequantize(ty: GgmlType, src: &[u8]) -> Vec<f32> {
    assert!(
        src.len().is_multiple_of(ty.block_bytes()),
        "input is whole blocks"
    );
    let n = src.len() / ty.block_bytes() * ty.block_weights();
    let mut dst = vec![0f32; n];
    if ty == GgmlType::F32 {
        for (o, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
            *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        return dst;
    }
    unsafe {
        let traits = sys::ggml_get_type_traits(ty as sys::ggml_type);
        let to_float = (*traits)
            .to_float
            .expect("ggml has a to_float for this type");
        to_float(src.as_ptr().cast(), dst.as_mut_ptr(), n as i64);
    }
    dst
}

/// ggml's `ggml_validate_row_data`: whether llama.cpp would accept these quantized bytes.
pub fn validate_row_data(ty: GgmlType, data: &[u8]) -> bool {
    unsafe { sys::ggml_validate_row_data(ty as sys::ggml_type, data.as_ptr().cast(), data.len()) }
}
