//! The per-tensor type plan: for a file type such as Q4_K_M, the ggml type of every tensor,
//! chosen exactly as llama.cpp's `llama_tensor_get_type` (src/llama-quant.cpp) chooses it for
//! the decoder architectures kiln converts, dense and mixture-of-experts (3-D `ffn_*_exps`
//! tensors are quantized row by row like 2-D ones; the rules for 8-expert models and the
//! layer of an expert tensor taken from its name are llama.cpp's).

use crate::gguf::TypeId;
use anyhow::{bail, Result};
use kiln_kernels::GgmlType;

/// Generates [`FileType`], [`FileType::ALL`] and the lookups from one line per file type:
/// `Variant = llama_ftype number, "name as llama.cpp prints it", default ggml type` and, for a
/// mix llama-quantize also accepts under a shorter name, `alias "NAME"`.
macro_rules! file_types {
    ($($variant:ident = $id:literal, $name:literal, $default:ident $(, alias $alias:literal)?;)*) => {
        /// A llama.cpp file type (`llama_ftype`): what `--type` names.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types)]
        pub enum FileType {
            $($variant,)*
        }

        impl FileType {
            /// Every file type kiln writes, highest precision first.
            pub const ALL: [FileType; [$($id),*].len()] = [$(FileType::$variant),*];

            /// llama.cpp's `llama_ftype` number, stored as `general.file_type`.
            pub fn id(self) -> u32 {
                match self {
                    $(FileType::$variant => $id,)*
                }
            }

            /// llama-quantize's name ("Q4_K_M"), used in file names.
            pub fn name(self) -> &'static str {
                match self {
                    $(FileType::$variant => $name,)*
                }
            }

            /// The type most tensors get (`llama_ftype_get_default_type`).
            pub fn default_type(self) -> TypeId {
                match self {
                    $(FileType::$variant => TypeId::$default,)*
                }
            }

            /// The shorter names llama-quantize also accepts for a mix ("Q4_K" for Q4_K_M).
            const ALIASES: &[(FileType, &str)] = &[$($((FileType::$variant, $alias),)?)*];
        }
    };
}

file_types! {
    F32    = 0,  "F32",    F32;
    F16    = 1,  "F16",    F16;
    BF16   = 32, "BF16",   BF16;
    Q8_0   = 7,  "Q8_0",   Q8_0;
    Q6_K   = 18, "Q6_K",   Q6_K;
    Q5_K_M = 17, "Q5_K_M", Q5_K, alias "Q5_K";
    Q5_K_S = 16, "Q5_K_S", Q5_K;
    Q5_1   = 9,  "Q5_1",   Q5_1;
    Q5_0   = 8,  "Q5_0",   Q5_0;
    Q4_K_M = 15, "Q4_K_M", Q4_K, alias "Q4_K";
    Q4_K_S = 14, "Q4_K_S", Q4_K;
    Q4_1   = 3,  "Q4_1",   Q4_1;
    Q4_0   = 2,  "Q4_0",   Q4_0;
    IQ4_NL = 25, "IQ4_NL", IQ4_NL;
    IQ4_XS = 30, "IQ4_XS", IQ4_XS;
    MXFP4_MOE = 38, "MXFP4_MOE", MXFP4;
    Q3_K_L = 13, "Q3_K_L", Q3_K;
    Q3_K_M = 12, "Q3_K_M", Q3_K, alias "Q3_K";
    IQ3_M  = 27, "IQ3_M",  IQ3_S;
    Q3_K_S = 11, "Q3_K_S", Q3_K;
    IQ3_S  = 26, "IQ3_S",  IQ3_S;
    IQ3_XS = 22, "IQ3_XS", IQ3_S;
    IQ3_XXS = 23, "IQ3_XXS", IQ3_XXS;
    Q2_K   = 10, "Q2_K",   Q2_K;
    Q2_0   = 41, "Q2_0",   Q2_0;
    TQ2_0  = 37, "TQ2_0",  TQ2_0;
    TQ1_0  = 36, "TQ1_0",  TQ1_0;
    Q1_0   = 40, "Q1_0",   Q1_0;
    Q2_K_S = 21, "Q2_K_S", Q2_K;
    IQ2_M  = 29, "IQ2_M",  IQ2_S;
    IQ2_S  = 28, "IQ2_S",  IQ2_XS;
    IQ2_XS = 20, "IQ2_XS", IQ2_XS;
    IQ2_XXS = 19, "IQ2_XXS", IQ2_XXS;
    IQ1_M  = 31, "IQ1_M",  IQ1_M;
    IQ1_S  = 24, "IQ1_S",  IQ1_S;
}

impl FileType {
    pub fn from_id(id: u32) -> Option<FileType> {
        FileType::ALL.into_iter().find(|f| f.id() == id)
    }

    /// Parses llama.cpp's names case-insensitively, with llama-quantize's aliases (Q4_K is
    /// Q4_K_M, Q5_K is Q5_K_M, Q3_K is Q3_K_M) and its numbers ("15").
    pub fn parse(s: &str) -> Result<FileType> {
        let up = s.trim().to_ascii_uppercase();
        if let Some(&(f, _)) = FileType::ALIASES.iter().find(|(_, a)| *a == up) {
            return Ok(f);
        }
        if let Some(f) = FileType::ALL.into_iter().find(|f| f.name() == up) {
            return Ok(f);
        }
        if let Ok(n) = up.parse::<u32>() {
            if let Some(f) = FileType::from_id(n) {
                return Ok(f);
            }
        }
        let names: Vec<&str> = FileType::ALL.iter().map(|f| f.name()).collect();
        bail!("unknown type {s:?}; kiln writes {}", names.join(", "))
    }

    /// The help of `--type`: the names [`FileType::parse`] accepts, spelled as llama-quantize's
    /// users write them ("q4_K_M"), with the aliases.
    pub fn help_text() -> String {
        // Lower case up to the first '_', as llama.cpp's docs spell them: q4_K_M, q8_0, bf16.
        let spell = |name: &str| match name.split_once('_') {
            Some((head, tail)) => format!("{}_{tail}", head.to_ascii_lowercase()),
            None => name.to_ascii_lowercase(),
        };
        let names: Vec<String> = FileType::ALL.iter().map(|f| spell(f.name())).collect();
        let aliases: Vec<String> = FileType::ALIASES.iter().map(|(_, a)| spell(a)).collect();
        format!(
            "llama.cpp's type name, case-insensitive: {} ({} mean their _M mix), or its \
             llama_ftype number",
            names.join(", "),
            aliases.join(", "),
        )
    }
}

impl std::fmt::Display for FileType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// llama-quantize's options that change the plan.
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// `--pure`: no mixture, every quantizable tensor gets the default type.
    pub pure: bool,
    pub output_tensor_type: Option<GgmlType>,
    pub token_embedding_type: Option<GgmlType>,
    /// `--leave-output-tensor`: output.weight keeps its type.
    pub leave_output_tensor: bool,
    pub has_imatrix: bool,
    /// `--tensor-type` rules in command-line order: the first whose regex matches a tensor's
    /// name sets its type, before the mix's rules (and instead of them).
    pub tensor_types: Vec<crate::overrides::TensorTypeRule>,
}

/// What the plan needs of the model (llama.cpp reads these from the hparams).
#[derive(Clone, Debug)]
pub struct ModelFacts {
    pub arch: String,
    pub n_layer: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    /// llama.cpp's LLM_TYPE_70B (the only model size the mixes look at), as the family decides
    /// it (see `arch::Family::is_70b`).
    pub is_70b: bool,
    /// `<arch>.expert_count` (0 for dense models): the mixes treat 8-expert models specially
    /// and find an expert tensor's layer by its name.
    pub n_expert: u32,
}

impl ModelFacts {
    fn n_gqa(&self) -> u32 {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }
}

/// One tensor as the plan sees it.
#[derive(Clone, Debug)]
pub struct PlanTensor {
    pub name: String,
    /// ne, innermost first.
    pub dims: Vec<u64>,
    /// The type it has in the input (for a Hugging Face checkpoint: what convert_hf_to_gguf
    /// would have written, F32 for norms and 1-D tensors).
    pub input_type: TypeId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

fn category(name: &str) -> Category {
    use Category::*;
    if name == "output.weight" {
        Output
    } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        TokenEmbd
    } else if name.contains("attn_qkv.weight")
        || name.contains("attn_kv_b.weight")
        || name.contains("attn_v.weight")
    {
        AttnV
    } else if name.contains("attn_k.weight") {
        AttnK
    } else if name.contains("attn_q.weight") {
        AttnQ
    } else if name.contains("attn_output.weight") {
        AttnOutput
    } else if name.contains("ffn_up") {
        FfnUp
    } else if name.contains("ffn_gate") {
        FfnGate
    } else if name.contains("ffn_down") {
        FfnDown
    } else {
        Other
    }
}

/// ggml_n_dims: dimensions not counting trailing ones.
fn n_dims(dims: &[u64]) -> usize {
    let mut n = dims.len();
    while n > 1 && dims[n - 1] == 1 {
        n -= 1;
    }
    n
}

/// llama.cpp's `tensor_allows_quantization`, for the names dense decoders have.
pub fn allows_quantization(name: &str, dims: &[u64], opts: &PlanOptions) -> bool {
    if n_dims(dims) < 2 || !name.ends_with("weight") || name.contains("_norm.weight") {
        return false;
    }
    if opts.leave_output_tensor && name == "output.weight" {
        return false;
    }
    const NEVER: [&str; 8] = [
        "ffn_gate_inp.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "attn_rel_b.weight",
        ".position_embd",
        "shortconv.conv.weight",
    ];
    !NEVER.iter().any(|p| name.contains(p))
        && name != "position_embd.weight"
        && name != "token_types.weight"
}

/// The order llama.cpp's loader walks tensors in (its `weight_name_comparer`): tensors outside
/// any block first, then block by block, by name within each. The mixes count attn_v and
/// ffn_down tensors in this order, and llama-quantize writes its output in it.
pub fn llama_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn layer(s: &str) -> i64 {
        s.strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap_or(-1)
    }
    layer(a).cmp(&layer(b)).then_with(|| a.cmp(b))
}

/// The N of a `blk.N.` name.
fn block_of(name: &str) -> Option<i64> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

fn use_more_bits(i_layer: i64, n_layers: i64) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

/// A plan decision for one tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub ty: TypeId,
    /// The mix wanted a type the row length does not allow, and this is the fallback.
    pub fallback_from: Option<TypeId>,
}

/// The type of the first `--tensor-type` rule whose regex matches `name`.
fn manual_type(name: &str, opts: &PlanOptions) -> Result<Option<GgmlType>> {
    for r in &opts.tensor_types {
        if r.matches(name)? {
            return Ok(Some(r.ty));
        }
    }
    Ok(None)
}

/// Chooses every tensor's type (llama.cpp's `llama_tensor_get_type`). `tensors` must be in
/// [`llama_order`]. Fails only when a `--tensor-type` regex cannot be evaluated.
pub fn choose_types(
    ftype: FileType,
    model: &ModelFacts,
    tensors: &[PlanTensor],
    opts: &PlanOptions,
) -> Result<Vec<Choice>> {
    let default_type = ftype.default_type();
    let n_attention_wv = tensors
        .iter()
        .filter(|t| category(&t.name) == Category::AttnV)
        .count() as i64;
    let tied = !tensors.iter().any(|t| t.name == "output.weight");
    let n_layer = model.n_layer as i64;
    let mut i_attention_wv = 0i64;
    let mut i_ffn_down = 0i64;
    let mut i_ffn_gate_up = [0i64; 2];
    let mut out = Vec::with_capacity(tensors.len());
    for t in tensors {
        let cat = category(&t.name);
        if !allows_quantization(&t.name, &t.dims, opts) {
            out.push(Choice {
                ty: t.input_type,
                fallback_from: None,
            });
            continue;
        }
        if let (Some(ty), Category::TokenEmbd) = (opts.token_embedding_type, cat) {
            // per_layer_token_embd follows --token-embedding-type unless a --tensor-type
            // rule names it.
            let named =
                t.name == "per_layer_token_embd.weight" && manual_type(&t.name, opts)?.is_some();
            if !named {
                out.push(Choice {
                    ty: TypeId::of(ty),
                    fallback_from: None,
                });
                continue;
            }
        }
        if let (Some(ty), Category::Output) = (opts.output_tensor_type, cat) {
            out.push(Choice {
                ty: TypeId::of(ty),
                fallback_from: None,
            });
            continue;
        }
        let mut ty = default_type;
        if !ty.is_quantized() {
            out.push(Choice {
                ty,
                fallback_from: None,
            });
            continue;
        }
        // --tensor-type: the first matching rule wins and the mix's rules are skipped (its
        // attn_v/ffn_down counters do not count this tensor); the fallback still applies.
        let manual = manual_type(&t.name, opts)?;
        if let Some(m) = manual {
            ty = TypeId::of(m);
        } else if !opts.pure {
            ty = mix_type(
                ftype,
                model,
                ty,
                t,
                cat,
                tied,
                opts,
                n_attention_wv,
                &mut i_attention_wv,
                &mut i_ffn_down,
                &mut i_ffn_gate_up,
                n_layer,
            );
        }
        out.push(fallback(ty, t.dims[0]));
    }
    Ok(out)
}

/// `tensor_type_fallback`: rows that are not whole blocks of the chosen type.
fn fallback(ty: TypeId, ncols: u64) -> Choice {
    if ncols.is_multiple_of(ty.block_weights()) {
        return Choice {
            ty,
            fallback_from: None,
        };
    }
    let mut ret = match ty {
        TypeId::IQ1_S
        | TypeId::IQ1_M
        | TypeId::IQ2_XXS
        | TypeId::IQ2_XS
        | TypeId::IQ2_S
        | TypeId::IQ3_XXS
        | TypeId::IQ3_S
        | TypeId::IQ4_XS => TypeId::IQ4_NL,
        TypeId::Q2_K | TypeId::Q3_K => TypeId::Q4_0,
        TypeId::Q2_0 | TypeId::TQ1_0 | TypeId::TQ2_0 => TypeId::Q4_0,
        TypeId::Q4_K => TypeId::Q5_0,
        TypeId::Q5_K => TypeId::Q5_1,
        TypeId::Q6_K => TypeId::Q8_0,
        other if other.block_weights() <= 32 => other,
        // llama.cpp defines no fallback (Q1_0's 128-weight blocks) and refuses the tensor:
        // the incompatible type stays, and `quantize::prepare` refuses the plan the same way.
        other => {
            return Choice {
                ty: other,
                fallback_from: None,
            }
        }
    };
    if !ncols.is_multiple_of(ret.block_weights()) {
        ret = TypeId::F16;
    }
    Choice {
        ty: ret,
        fallback_from: Some(ty),
    }
}

/// llama.cpp's `tensor_requires_imatrix`: whether quantizing tensor `name` to `ty` in a file
/// of type `ftype` needs importance data (llama.cpp refuses otherwise: "this quantization
/// requires an imatrix").
pub fn requires_imatrix(name: &str, ty: TypeId, ftype: FileType) -> bool {
    if matches!(
        name,
        "token_embd.weight" | "per_layer_token_embd.weight" | "output.weight"
    ) {
        return false;
    }
    match ty {
        TypeId::IQ3_XXS
        | TypeId::IQ2_XXS
        | TypeId::IQ2_XS
        | TypeId::IQ2_S
        | TypeId::IQ1_M
        | TypeId::IQ1_S => true,
        TypeId::Q2_K => ftype == FileType::Q2_K_S,
        _ => false,
    }
}

#[allow(clippy::too_many_arguments)]
fn mix_type(
    ftype: FileType,
    model: &ModelFacts,
    mut new_type: TypeId,
    t: &PlanTensor,
    cat: Category,
    tied: bool,
    opts: &PlanOptions,
    n_attention_wv: i64,
    i_attention_wv: &mut i64,
    i_ffn_down: &mut i64,
    i_ffn_gate_up: &mut [i64; 2],
    n_layer: i64,
) -> TypeId {
    use FileType as F;
    use TypeId as G;
    if cat == Category::Output || (tied && cat == Category::TokenEmbd) {
        if let Some(o) = opts.output_tensor_type {
            return TypeId::of(o);
        }
        let nx = t.dims[0];
        if ftype == F::MXFP4_MOE || !nx.is_multiple_of(new_type.block_weights()) {
            return G::Q8_0;
        }
        if matches!(
            ftype,
            F::IQ2_XXS | F::IQ2_XS | F::IQ3_XXS | F::IQ1_S | F::IQ2_S | F::IQ2_M | F::IQ1_M
        ) {
            return G::Q5_K;
        }
        if new_type != G::Q8_0 {
            return G::Q6_K;
        }
        return new_type;
    }
    if ftype == F::MXFP4_MOE {
        // Expert tensors (3-D, one matrix per expert) to MXFP4, everything else to Q8_0.
        return if t.dims.get(2).is_some_and(|&n| n > 1) {
            G::MXFP4
        } else {
            G::Q8_0
        };
    }
    let iq2_s_or_m = matches!(ftype, F::IQ2_S | F::IQ2_M);
    if cat != Category::TokenEmbd
        && matches!(
            ftype,
            F::IQ2_XXS | F::IQ2_XS | F::IQ1_S | F::IQ2_S | F::IQ2_M | F::IQ1_M
        )
    {
        // The 1- and 2-bit mixes have their own rules.
        match cat {
            Category::AttnV => {
                new_type = if model.n_gqa() >= 4 || model.n_expert >= 4 {
                    G::Q4_K
                } else if iq2_s_or_m {
                    G::IQ3_S
                } else {
                    G::Q2_K
                };
                *i_attention_wv += 1;
            }
            Category::AttnK if model.n_expert == 8 => new_type = G::Q4_K,
            Category::FfnDown => {
                if *i_ffn_down < n_layer / 8 {
                    new_type = if iq2_s_or_m { G::IQ3_S } else { G::Q2_K };
                }
                *i_ffn_down += 1;
            }
            Category::AttnOutput if model.n_expert == 8 => new_type = G::Q5_K,
            Category::AttnOutput => match ftype {
                F::IQ1_S | F::IQ1_M => new_type = G::IQ2_XXS,
                F::IQ2_S | F::IQ2_M => new_type = G::IQ3_S,
                _ => {}
            },
            _ => {}
        }
        return new_type;
    }
    match cat {
        Category::TokenEmbd => match ftype {
            F::IQ2_XXS | F::IQ2_XS | F::IQ1_S | F::IQ1_M => new_type = G::Q2_K,
            F::IQ2_S | F::IQ2_M | F::IQ3_XXS => new_type = G::IQ3_S,
            F::TQ1_0 | F::TQ2_0 | F::Q2_0 => new_type = G::Q4_K,
            _ => {}
        },
        Category::AttnK if model.n_expert == 8 => {
            // "for the 8-expert model, bumping this to Q8_0 trades just ~128MB"
            new_type = G::Q8_0;
        }
        Category::AttnV => {
            match ftype {
                F::Q2_K => new_type = if model.n_gqa() >= 4 { G::Q4_K } else { G::Q3_K },
                F::Q2_K_S if model.n_gqa() >= 4 => new_type = G::Q4_K,
                F::IQ3_XXS => {
                    new_type = if model.n_gqa() >= 4 {
                        G::Q4_K
                    } else if !opts.has_imatrix {
                        G::IQ3_S
                    } else {
                        G::IQ3_XXS
                    }
                }
                F::IQ3_XS | F::IQ3_S if model.n_gqa() >= 4 => new_type = G::Q4_K,
                F::IQ3_M => new_type = G::Q4_K,
                F::Q3_K_M => {
                    new_type = if *i_attention_wv < 2 {
                        G::Q5_K
                    } else {
                        G::Q4_K
                    }
                }
                F::Q3_K_L => new_type = G::Q5_K,
                F::Q4_K_M | F::Q5_K_M if use_more_bits(*i_attention_wv, n_attention_wv) => {
                    new_type = G::Q6_K
                }
                F::Q4_K_S if *i_attention_wv < 4 => new_type = G::Q5_K,
                F::IQ4_NL | F::IQ4_XS if model.n_gqa() >= 4 => new_type = G::Q5_K,
                _ => {}
            }
            if model.is_70b && (new_type == G::Q3_K || new_type == G::Q4_K) {
                new_type = G::Q5_K;
            }
            if model.n_expert == 8 {
                new_type = G::Q8_0;
            }
            *i_attention_wv += 1;
        }
        Category::AttnK | Category::AttnQ => match ftype {
            F::IQ3_XS => new_type = G::IQ3_XXS,
            F::IQ3_XXS => new_type = G::IQ2_S,
            _ => {}
        },
        Category::FfnGate | Category::FfnUp => {
            let counter = &mut i_ffn_gate_up[(cat == Category::FfnUp) as usize];
            let i_layer = *counter;
            if ftype == F::IQ3_XS && i_layer >= n_layer / 8 && i_layer < 7 * n_layer / 8 {
                new_type = G::IQ3_XXS;
            }
            *counter += 1;
        }
        Category::FfnDown => {
            // With experts, llama.cpp reads the layer from the name (`blk.N.`): Mixtral's
            // expert tensors were not always in layer order.
            let i_layer = if model.n_expert > 1 {
                block_of(&t.name).unwrap_or(*i_ffn_down)
            } else {
                *i_ffn_down
            };
            match ftype {
                F::Q2_K => new_type = G::Q3_K,
                F::Q2_K_S if i_layer < n_layer / 8 => new_type = G::Q4_K,
                F::IQ3_XXS if !opts.has_imatrix => {
                    new_type = if i_layer < n_layer / 8 {
                        G::Q4_K
                    } else {
                        G::Q3_K
                    };
                }
                F::IQ3_M if i_layer < n_layer / 8 => new_type = G::Q4_K,
                F::Q3_K_M => {
                    // `arch != FALCON || use_more_bits(...)` is always true for kiln's archs.
                    new_type = if i_layer < n_layer / 16 {
                        G::Q5_K
                    } else {
                        G::Q4_K
                    };
                }
                F::Q3_K_L => new_type = G::Q5_K,
                F::Q4_K_M | F::Q5_K_M if use_more_bits(i_layer, n_layer) => new_type = G::Q6_K,
                F::Q4_K_S if i_layer < n_layer / 8 => new_type = G::Q5_K,
                F::IQ4_NL | F::IQ4_XS if !opts.has_imatrix && i_layer < n_layer / 8 => {
                    new_type = G::Q5_K
                }
                F::Q4_0 | F::Q5_0 if opts.has_imatrix && i_layer < n_layer / 8 => {
                    new_type = if ftype == F::Q4_0 { G::Q4_1 } else { G::Q5_1 };
                }
                _ => {}
            }
            *i_ffn_down += 1;
        }
        Category::AttnOutput if model.n_expert == 8 => {
            if matches!(
                ftype,
                F::Q2_K | F::Q3_K_S | F::Q3_K_M | F::Q4_K_S | F::Q4_K_M
            ) {
                new_type = G::Q5_K;
            }
        }
        Category::AttnOutput => match ftype {
            F::Q2_K => new_type = G::Q3_K,
            F::IQ3_XXS => new_type = G::IQ3_S,
            F::IQ3_M => new_type = G::Q4_K,
            F::Q3_K_M => new_type = G::Q4_K,
            F::Q3_K_L => new_type = G::Q5_K,
            _ => {}
        },
        _ => {}
    }
    new_type
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_parse_like_llama_quantize() {
        assert_eq!(FileType::parse("q4_k_m").unwrap(), FileType::Q4_K_M);
        assert_eq!(FileType::parse("Q4_K").unwrap(), FileType::Q4_K_M);
        assert_eq!(FileType::parse("q5_k").unwrap(), FileType::Q5_K_M);
        assert_eq!(FileType::parse("q3_K").unwrap(), FileType::Q3_K_M);
        assert_eq!(FileType::parse("15").unwrap(), FileType::Q4_K_M);
        assert_eq!(FileType::parse("bf16").unwrap(), FileType::BF16);
        assert!(FileType::parse("q4_k_x").is_err());
        for f in FileType::ALL {
            assert_eq!(FileType::parse(f.name()).unwrap(), f);
            assert_eq!(FileType::from_id(f.id()), Some(f));
        }
    }

    #[test]
    fn llama_order_puts_globals_first_then_blocks_numerically() {
        let mut v = vec![
            "blk.10.attn_v.weight",
            "output.weight",
            "blk.2.attn_v.weight",
            "blk.2.attn_k.weight",
            "token_embd.weight",
        ];
        v.sort_by(|a, b| llama_order(a, b));
        assert_eq!(
            v,
            [
                "output.weight",
                "token_embd.weight",
                "blk.2.attn_k.weight",
                "blk.2.attn_v.weight",
                "blk.10.attn_v.weight"
            ]
        );
    }

    #[test]
    fn fallbacks_follow_llama_cpp() {
        assert_eq!(fallback(TypeId::Q4_K, 640).ty, TypeId::Q5_0);
        assert_eq!(fallback(TypeId::Q6_K, 640).ty, TypeId::Q8_0);
        assert_eq!(fallback(TypeId::Q3_K, 640).ty, TypeId::Q4_0);
        assert_eq!(fallback(TypeId::Q5_K, 640).ty, TypeId::Q5_1);
        assert_eq!(fallback(TypeId::Q4_K, 100).ty, TypeId::F16);
        assert_eq!(fallback(TypeId::Q4_K, 512).fallback_from, None);
        assert_eq!(fallback(TypeId::IQ3_S, 640).ty, TypeId::IQ4_NL);
        assert_eq!(fallback(TypeId::IQ2_XXS, 640).ty, TypeId::IQ4_NL);
        assert_eq!(fallback(TypeId::IQ3_XXS, 100).ty, TypeId::F16);
        assert_eq!(fallback(TypeId::IQ4_XS, 640).ty, TypeId::IQ4_NL);
        for t in [TypeId::TQ1_0, TypeId::TQ2_0, TypeId::Q2_0] {
            assert_eq!(fallback(t, 640 + 32).ty, TypeId::Q4_0);
        }
        assert_eq!(fallback(TypeId::MXFP4, 100).ty, TypeId::F16);
        assert_eq!(fallback(TypeId::IQ4_NL, 100).ty, TypeId::F16);
        // No fallback defined: the type stays, and the plan is refused (quantize::prepare).
        assert_eq!(fallback(TypeId::Q1_0, 320).ty, TypeId::Q1_0);
    }
}
