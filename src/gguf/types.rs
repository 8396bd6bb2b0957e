//! Every ggml tensor type a GGUF file may name: kiln's own formats, and the others by ggml's
//! own table (through the bindings), so that `inspect` and the reader can size any tensor.

use kiln_kernels::GgmlType;
use llama_cpp_sys_2 as sys;
use std::ffi::CStr;

/// A tensor type id as stored in a GGUF file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TypeId(pub u32);

impl TypeId {
    pub fn of(ty: GgmlType) -> Self {
        TypeId(ty as u32)
    }

    /// kiln's format for this id, when kiln can read and write it.
    pub fn kiln(self) -> Option<GgmlType> {
        GgmlType::from_id(self.0)
    }

    fn known(self) -> bool {
        self.0 < sys::GGML_TYPE_COUNT
            && unsafe { sys::ggml_blck_size(self.0 as sys::ggml_type) } > 0
    }

    /// ggml's name ("q4_K"), or None for an id ggml does not know.
    pub fn name(self) -> Option<String> {
        if let Some(t) = self.kiln() {
            return Some(t.name().to_string());
        }
        if !self.known() {
            return None;
        }
        let p = unsafe { sys::ggml_type_name(self.0 as sys::ggml_type) };
        if p.is_null() {
            return None;
        }
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    /// Display name, "type#N" for an unknown id.
    pub fn label(self) -> String {
        self.name().unwrap_or_else(|| format!("type#{}", self.0))
    }

    /// (weights per block, bytes per block), None for an unknown id.
    pub fn block(self) -> Option<(u64, u64)> {
        if let Some(t) = self.kiln() {
            return Some((t.block_weights() as u64, t.block_bytes() as u64));
        }
        if !self.known() {
            return None;
        }
        let ty = self.0 as sys::ggml_type;
        let (bw, bb) = unsafe { (sys::ggml_blck_size(ty), sys::ggml_type_size(ty)) };
        Some((bw as u64, bb as u64))
    }

    /// Bytes of a row of `n` weights, None when the id is unknown or `n` is not whole blocks.
    pub fn row_bytes(self, n: u64) -> Option<u64> {
        let (bw, bb) = self.block()?;
        if !n.is_multiple_of(bw) {
            return None;
        }
        (n / bw).checked_mul(bb)
    }
}
