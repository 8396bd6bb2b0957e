//! Every ggml tensor type a GGUF file may name: kiln's own formats, and the others from a table
//! of ggml's `type_traits` (name, weights per block, bytes per block) as the pinned llama.cpp
//! has them, so that `inspect` and the reader can size any tensor without linking ggml. A test
//! checks the table against ggml's own (through the bindings).

use kiln_kernels::GgmlType;

/// A tensor type id as stored in a GGUF file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TypeId(pub u32);

/// ggml's types by id: (id, name, weights per block, bytes per block). Ids that ggml removed
/// (4, 5, 31-33, 36-38) are absent.
pub const GGML_TYPES: [(u32, &str, u64, u64); 35] = [
    (0, "f32", 1, 4),
    (1, "f16", 1, 2),
    (2, "q4_0", 32, 18),
    (3, "q4_1", 32, 20),
    (6, "q5_0", 32, 22),
    (7, "q5_1", 32, 24),
    (8, "q8_0", 32, 34),
    (9, "q8_1", 32, 36),
    (10, "q2_K", 256, 84),
    (11, "q3_K", 256, 110),
    (12, "q4_K", 256, 144),
    (13, "q5_K", 256, 176),
    (14, "q6_K", 256, 210),
    (15, "q8_K", 256, 292),
    (16, "iq2_xxs", 256, 66),
    (17, "iq2_xs", 256, 74),
    (18, "iq3_xxs", 256, 98),
    (19, "iq1_s", 256, 50),
    (20, "iq4_nl", 32, 18),
    (21, "iq3_s", 256, 110),
    (22, "iq2_s", 256, 82),
    (23, "iq4_xs", 256, 136),
    (24, "i8", 1, 1),
    (25, "i16", 1, 2),
    (26, "i32", 1, 4),
    (27, "i64", 1, 8),
    (28, "f64", 1, 8),
    (29, "iq1_m", 256, 56),
    (30, "bf16", 1, 2),
    (34, "tq1_0", 256, 54),
    (35, "tq2_0", 256, 66),
    (39, "mxfp4", 32, 17),
    (40, "nvfp4", 64, 36),
    (41, "q1_0", 128, 18),
    (42, "q2_0", 64, 18),
];

/// ggml's ids by name, for the type choices of the file-type mixes (which name types kiln may
/// not write yet; [`TypeId::kiln`] says which it does).
impl TypeId {
    pub const F32: TypeId = TypeId(0);
    pub const F16: TypeId = TypeId(1);
    pub const Q4_0: TypeId = TypeId(2);
    pub const Q4_1: TypeId = TypeId(3);
    pub const Q5_0: TypeId = TypeId(6);
    pub const Q5_1: TypeId = TypeId(7);
    pub const Q8_0: TypeId = TypeId(8);
    pub const Q2_K: TypeId = TypeId(10);
    pub const Q3_K: TypeId = TypeId(11);
    pub const Q4_K: TypeId = TypeId(12);
    pub const Q5_K: TypeId = TypeId(13);
    pub const Q6_K: TypeId = TypeId(14);
    pub const IQ2_XXS: TypeId = TypeId(16);
    pub const IQ2_XS: TypeId = TypeId(17);
    pub const IQ3_XXS: TypeId = TypeId(18);
    pub const IQ1_S: TypeId = TypeId(19);
    pub const IQ4_NL: TypeId = TypeId(20);
    pub const IQ3_S: TypeId = TypeId(21);
    pub const IQ2_S: TypeId = TypeId(22);
    pub const IQ4_XS: TypeId = TypeId(23);
    pub const IQ1_M: TypeId = TypeId(29);
    pub const BF16: TypeId = TypeId(30);
    pub const TQ1_0: TypeId = TypeId(34);
    pub const TQ2_0: TypeId = TypeId(35);
    pub const MXFP4: TypeId = TypeId(39);
    pub const Q1_0: TypeId = TypeId(41);
    pub const Q2_0: TypeId = TypeId(42);

    /// Weights per block (1 for an unknown id).
    pub fn block_weights(self) -> u64 {
        self.block().map_or(1, |b| b.0)
    }

    /// Whether the type is a block quantization (ggml's `ggml_is_quantized`: blocks of more than
    /// one weight, or Q8_0-like; not F32/F16/BF16/F64 or the integer types).
    pub fn is_quantized(self) -> bool {
        !matches!(self.0, 0 | 1 | 24..=28 | 30)
    }
}

impl TypeId {
    pub fn of(ty: GgmlType) -> Self {
        TypeId(ty as u32)
    }

    /// kiln's format for this id, when kiln can read and write it.
    pub fn kiln(self) -> Option<GgmlType> {
        GgmlType::from_id(self.0)
    }

    fn ggml(self) -> Option<&'static (u32, &'static str, u64, u64)> {
        GGML_TYPES.iter().find(|t| t.0 == self.0)
    }

    /// ggml's name ("q4_K"), or None for an id ggml does not know.
    pub fn name(self) -> Option<String> {
        if let Some(t) = self.kiln() {
            return Some(t.name().to_string());
        }
        self.ggml().map(|t| t.1.to_string())
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
        self.ggml().map(|t| (t.2, t.3))
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
