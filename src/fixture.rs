//! Deterministic tiny Hugging Face checkpoints, written to a folder exactly as `save_pretrained`
//! lays them out: `config.json`, `generation_config.json`, `tokenizer_config.json`,
//! `special_tokens_map.json`, the tokenizer (`tokenizer.model` or `tokenizer.json`) and the
//! weights (`model.safetensors`, or `model-0000i-of-0000n.safetensors` shards with
//! `model.safetensors.index.json`).
//!
//! Every byte depends only on the [`FixtureSpec`] (and, for [`Vocab::LlamaSpm`], on the bytes of
//! the given `tokenizer.model`): the same spec gives the same files on every run and machine.
//!
//! The weights are Gaussian with standard deviations chosen so that activations stay near unit
//! scale through the layers and the logits are neither flat nor one-hot (standard deviation of a
//! position's logits around 1 to 3). Gemma stores its RMSNorm weights as `gamma - 1`, so Gemma
//! norm tensors hold small values around 0; the other architectures hold values around 1.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Map, Value};

use crate::synth::SplitMix64;

/// The Hugging Face architectures a fixture can take: the converter's own list.
pub use crate::arch::Arch;

/// The dtype the weights are stored in (and `torch_dtype` in config.json).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F16,
    BF16,
}

impl Dtype {
    pub fn torch_name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::BF16 => "bfloat16",
        }
    }

    fn safetensors_dtype(self) -> safetensors::Dtype {
        match self {
            Dtype::F32 => safetensors::Dtype::F32,
            Dtype::F16 => safetensors::Dtype::F16,
            Dtype::BF16 => safetensors::Dtype::BF16,
        }
    }

    /// Little-endian bytes of `values` in this dtype (round to nearest even, as torch does).
    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            Dtype::BF16 => values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        }
    }
}

/// The tokenizer a fixture ships.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Vocab {
    /// Copies this SentencePiece `tokenizer.model` (the Llama 2 one: 32000 pieces, `<unk>` 0,
    /// `<s>` 1, `</s>` 2) into the checkpoint; config.json's `vocab_size` is its piece count.
    /// No tokenizer.json is written (`convert_hf_to_gguf.py` reads tokenizer.model for these).
    LlamaSpm(PathBuf),
    /// A byte-level BPE `tokenizer.json` trained with the `tokenizers` crate on [`ENGLISH_TEXT`]
    /// to `size` tokens (the 256 byte symbols included), plus the family's special tokens;
    /// config.json's `vocab_size` is the total rounded up to a multiple of 64, as real
    /// checkpoints pad their embedding matrix (Qwen2 does).
    TrainedBpe { size: usize },
}

/// What checkpoint to write. See [`llama_spm_default`], [`bpe_default`] and [`default_for`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FixtureSpec {
    pub arch: Arch,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: Vocab,
    pub dtype: Dtype,
    pub tied_embeddings: bool,
    /// 1: `model.safetensors`; more: `model-0000i-of-0000n.safetensors` and
    /// `model.safetensors.index.json`.
    pub shards: usize,
    pub seed: u64,
}

/// The sliding window the Gemma fixtures use: small, so that short prompts cross it.
pub const GEMMA_SLIDING_WINDOW: usize = 6;

/// Llama with the Llama 2 SentencePiece tokenizer: hidden 256, intermediate 640 (not a
/// multiple of 256, so K-quants must fall back on `ffn_down`), 4 layers, 8 heads and 4 KV heads
/// (GQA) of 32, BF16, untied output, 2 shards.
pub fn llama_spm_default(tokenizer_model: PathBuf) -> FixtureSpec {
    FixtureSpec {
        arch: Arch::Llama,
        hidden: 256,
        intermediate: 640,
        layers: 4,
        heads: 8,
        kv_heads: 4,
        head_dim: 32,
        vocab: Vocab::LlamaSpm(tokenizer_model),
        dtype: Dtype::BF16,
        tied_embeddings: false,
        shards: 2,
        seed: 0x6b69_6c6e_0001,
    }
}

/// Qwen2 with a trained byte-level BPE of 1024 tokens (+3 specials, padded to 1088): hidden 320
/// (not a multiple of 256), intermediate 768, 2 layers, 5 heads and 1 KV head of 64, tied
/// embeddings, F16, one file.
pub fn bpe_default() -> FixtureSpec {
    FixtureSpec {
        arch: Arch::Qwen2,
        hidden: 320,
        intermediate: 768,
        layers: 2,
        heads: 5,
        kv_heads: 1,
        head_dim: 64,
        vocab: Vocab::TrainedBpe { size: 1024 },
        dtype: Dtype::F16,
        tied_embeddings: true,
        shards: 1,
        seed: 0x6b69_6c6e_0002,
    }
}

/// A small spec for each architecture with the given tokenizer, shaped like the real family:
/// - Llama: as [`llama_spm_default`].
/// - Qwen2: as [`bpe_default`].
/// - Qwen3: hidden 256, 8 heads x 64 (q is 512 wide, not hidden), 2 KV heads, intermediate 512,
///   2 layers, tied, BF16.
/// - Gemma2: hidden 256, 4 heads x 128, 2 KV heads, intermediate 512, 4 layers (sliding, full,
///   sliding, full), F32 (as Google ships Gemma 2), tied.
/// - Gemma3: hidden 256, 4 heads x 64, 1 KV head, intermediate 512, 6 layers (5 sliding, then
///   1 global), BF16, tied.
///
/// Gemma fixtures set `query_pre_attn_scalar` = head_dim, which is what llama.cpp assumes for
/// every Gemma 2/3 size but 27B, and `sliding_window` = [`GEMMA_SLIDING_WINDOW`].
pub fn default_for(arch: Arch, vocab: Vocab) -> FixtureSpec {
    let base = FixtureSpec {
        vocab,
        ..llama_spm_default(PathBuf::new())
    };
    match arch {
        Arch::Llama => base,
        Arch::Qwen2 => FixtureSpec {
            vocab: base.vocab,
            ..bpe_default()
        },
        Arch::Qwen3 => FixtureSpec {
            arch,
            hidden: 256,
            intermediate: 512,
            layers: 2,
            heads: 8,
            kv_heads: 2,
            head_dim: 64,
            dtype: Dtype::BF16,
            tied_embeddings: true,
            shards: 1,
            seed: 0x6b69_6c6e_0003,
            ..base
        },
        Arch::Gemma2 => FixtureSpec {
            arch,
            hidden: 256,
            intermediate: 512,
            layers: 4,
            heads: 4,
            kv_heads: 2,
            head_dim: 128,
            dtype: Dtype::F32,
            tied_embeddings: true,
            shards: 1,
            seed: 0x6b69_6c6e_0004,
            ..base
        },
        Arch::Gemma3 => FixtureSpec {
            arch,
            hidden: 256,
            intermediate: 512,
            layers: 6,
            heads: 4,
            kv_heads: 1,
            head_dim: 64,
            dtype: Dtype::BF16,
            tied_embeddings: true,
            shards: 1,
            seed: 0x6b69_6c6e_0005,
            ..base
        },
    }
}

/// Writes the checkpoint that `spec` describes into `dir` (created if missing; files of the
/// same names are overwritten, nothing else is touched).
pub fn write_checkpoint(spec: &FixtureSpec, dir: &Path) -> Result<()> {
    validate(spec)?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tok = write_tokenizer(spec, dir)?;
    write_json(&dir.join("config.json"), &config_json(spec, &tok))?;
    write_json(
        &dir.join("generation_config.json"),
        &generation_config_json(&tok),
    )?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &tokenizer_config_json(spec, &tok),
    )?;
    write_json(
        &dir.join("special_tokens_map.json"),
        &special_tokens_map_json(&tok),
    )?;
    write_weights(spec, tok.vocab_size, dir)
}

fn validate(spec: &FixtureSpec) -> Result<()> {
    ensure!(
        spec.hidden > 0 && spec.intermediate > 0 && spec.layers > 0,
        "fixture: hidden, intermediate and layers must be positive"
    );
    ensure!(
        spec.heads > 0 && spec.kv_heads > 0 && spec.heads.is_multiple_of(spec.kv_heads),
        "fixture: heads ({}) must be a positive multiple of kv_heads ({})",
        spec.heads,
        spec.kv_heads
    );
    ensure!(
        spec.head_dim > 0 && spec.head_dim.is_multiple_of(2),
        "fixture: head_dim ({}) must be even (RoPE rotates pairs)",
        spec.head_dim
    );
    ensure!(spec.shards >= 1, "fixture: shards must be at least 1");
    ensure!(
        spec.shards <= tensor_count(spec),
        "fixture: {} shards for {} tensors",
        spec.shards,
        tensor_count(spec)
    );
    if spec.arch.is_gemma() {
        ensure!(
            spec.tied_embeddings,
            "fixture: Gemma checkpoints always tie the output to the embeddings"
        );
    }
    if let Vocab::TrainedBpe { size } = spec.vocab {
        ensure!(
            (300..=65536).contains(&size),
            "fixture: a trained BPE vocabulary needs 300 to 65536 tokens (256 are bytes), not {size}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

/// What the rest of the checkpoint needs to know about the tokenizer.
struct TokenizerFacts {
    /// config.json's vocab_size: rows of the embedding matrix.
    vocab_size: usize,
    bos: Option<(String, u32)>,
    eos: (String, u32),
    pad: Option<(String, u32)>,
    unk: Option<(String, u32)>,
    add_bos: bool,
    /// (id, content) of every special token, for `added_tokens_decoder`.
    specials: Vec<(u32, String)>,
    tokenizer_class: &'static str,
    chat_template: &'static str,
    /// Extra special tokens beyond bos/eos/pad/unk.
    additional: Vec<String>,
    spm: bool,
}

fn write_tokenizer(spec: &FixtureSpec, dir: &Path) -> Result<TokenizerFacts> {
    match &spec.vocab {
        Vocab::LlamaSpm(path) => write_spm(spec.arch, path, dir),
        Vocab::TrainedBpe { size } => write_bpe(spec.arch, *size, dir),
    }
}

fn write_spm(arch: Arch, path: &Path, dir: &Path) -> Result<TokenizerFacts> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let pieces = spm_pieces(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    ensure!(!pieces.is_empty(), "{}: no pieces", path.display());
    fs::write(dir.join("tokenizer.model"), &bytes)?;
    let find = |name: &str| -> Option<(String, u32)> {
        pieces
            .iter()
            .position(|(p, _)| p == name)
            .map(|i| (name.to_string(), i as u32))
    };
    let bos = find("<s>").context("tokenizer.model has no <s>")?;
    let eos = find("</s>").context("tokenizer.model has no </s>")?;
    let unk = find("<unk>");
    // Control and unknown pieces are the special tokens transformers lists.
    let specials = pieces
        .iter()
        .enumerate()
        .filter(|(_, (_, ty))| *ty == 2 || *ty == 3)
        .map(|(i, (p, _))| (i as u32, p.clone()))
        .collect();
    let gemma = arch.is_gemma();
    Ok(TokenizerFacts {
        vocab_size: pieces.len(),
        bos: Some(bos),
        eos,
        // Gemma configs say pad_token_id 0; with this vocabulary that is <unk>.
        pad: if gemma { unk.clone() } else { None },
        unk,
        add_bos: true,
        specials,
        tokenizer_class: if gemma {
            "GemmaTokenizer"
        } else {
            "LlamaTokenizer"
        },
        chat_template: if gemma {
            GEMMA_TEMPLATE
        } else {
            LLAMA2_TEMPLATE
        },
        additional: Vec::new(),
        spm: true,
    })
}

/// (piece, type) of every piece of a SentencePiece ModelProto (field 1, repeated
/// SentencePiece{1: piece, 2: score, 3: type}; type 1 normal, 2 unknown, 3 control,
/// 4 user-defined, 5 unused, 6 byte; absent means normal).
fn spm_pieces(bytes: &[u8]) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for field in proto_fields(bytes)? {
        if let (1, ProtoValue::Bytes(msg)) = field {
            let mut piece = None;
            let mut ty = 1;
            for f in proto_fields(msg)? {
                match f {
                    (1, ProtoValue::Bytes(b)) => piece = Some(String::from_utf8(b.to_vec())?),
                    (3, ProtoValue::Varint(v)) => ty = v,
                    _ => {}
                }
            }
            out.push((piece.context("a piece without text")?, ty));
        }
    }
    Ok(out)
}

enum ProtoValue<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn proto_fields(mut b: &[u8]) -> Result<Vec<(u64, ProtoValue<'_>)>> {
    fn varint(b: &mut &[u8]) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first().context("truncated varint")?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        bail!("varint too long")
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let value = match key & 7 {
            0 => ProtoValue::Varint(varint(&mut b)?),
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                ensure!(b.len() >= n, "truncated fixed field");
                b = &b[n..];
                ProtoValue::Fixed
            }
            2 => {
                let n = varint(&mut b)? as usize;
                ensure!(b.len() >= n, "truncated length-delimited field");
                let (v, rest) = b.split_at(n);
                b = rest;
                ProtoValue::Bytes(v)
            }
            w => bail!("unsupported protobuf wire type {w}"),
        };
        out.push((key >> 3, value));
    }
    Ok(out)
}

/// The tokenizer conventions of each family for a byte-level BPE.
struct BpeFlavor {
    /// Special tokens, in id order.
    specials: &'static [&'static str],
    /// Specials take ids 0.. (Gemma) instead of following the merges (Qwen, Llama 3).
    specials_first: bool,
    bos: Option<&'static str>,
    eos: &'static str,
    pad: Option<&'static str>,
    unk: Option<&'static str>,
    add_bos: bool,
    nfc: bool,
    /// The Split regex before a ByteLevel(use_regex=false); None: ByteLevel with GPT-2's regex.
    split_regex: Option<&'static str>,
    tokenizer_class: &'static str,
    chat_template: &'static str,
}

const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const CHATML_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
const LLAMA3_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";
const LLAMA2_TEMPLATE: &str = "{% for message in messages %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + message['content'] | trim + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}{% endfor %}";
const GEMMA_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}";

fn bpe_flavor(arch: Arch) -> BpeFlavor {
    match arch {
        Arch::Qwen2 | Arch::Qwen3 => BpeFlavor {
            specials: &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            specials_first: false,
            bos: None,
            eos: "<|im_end|>",
            pad: Some("<|endoftext|>"),
            unk: None,
            add_bos: false,
            nfc: true,
            split_regex: Some(QWEN2_REGEX),
            tokenizer_class: "Qwen2Tokenizer",
            chat_template: CHATML_TEMPLATE,
        },
        Arch::Llama => BpeFlavor {
            specials: &[
                "<|begin_of_text|>",
                "<|end_of_text|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>",
            ],
            specials_first: false,
            bos: Some("<|begin_of_text|>"),
            eos: "<|eot_id|>",
            pad: None,
            unk: None,
            add_bos: true,
            nfc: false,
            split_regex: Some(LLAMA3_REGEX),
            tokenizer_class: "PreTrainedTokenizerFast",
            chat_template: LLAMA3_TEMPLATE,
        },
        Arch::Gemma2 | Arch::Gemma3 => BpeFlavor {
            specials: &[
                "<pad>",
                "<eos>",
                "<bos>",
                "<unk>",
                "<start_of_turn>",
                "<end_of_turn>",
            ],
            specials_first: true,
            bos: Some("<bos>"),
            eos: "<eos>",
            pad: Some("<pad>"),
            unk: Some("<unk>"),
            add_bos: true,
            nfc: false,
            split_regex: None,
            tokenizer_class: "PreTrainedTokenizerFast",
            chat_template: GEMMA_TEMPLATE,
        },
    }
}

/// Trains the byte-level BPE of `arch`'s family on [`ENGLISH_TEXT`] (what `write_checkpoint`
/// saves as tokenizer.json for [`Vocab::TrainedBpe`]). Deterministic.
pub fn train_bpe(arch: Arch, size: usize) -> Result<tokenizers::Tokenizer> {
    use tokenizers::models::bpe::{BpeTrainer, BPE};
    use tokenizers::models::TrainerWrapper;
    use tokenizers::normalizers::unicode::NFC;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::processors::template::TemplateProcessing;
    use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

    let flavor = bpe_flavor(arch);
    let err = |e: tokenizers::Error| anyhow::anyhow!("training the BPE tokenizer: {e}");
    let mut tok = Tokenizer::new(BPE::default());
    if flavor.nfc {
        tok.with_normalizer(Some(NFC));
    }
    let byte_level = ByteLevel::new(false, false, flavor.split_regex.is_none());
    match flavor.split_regex {
        Some(re) => {
            let split = Split::new(
                SplitPattern::Regex(re.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(err)?;
            tok.with_pre_tokenizer(Some(Sequence::new(vec![split.into(), byte_level.into()])));
        }
        None => {
            tok.with_pre_tokenizer(Some(byte_level));
        }
    }
    tok.with_decoder(Some(ByteLevel::new(false, false, false)));
    tok.with_post_processor(Some(ByteLevel::new(false, false, false)));

    let special = |s: &&str| AddedToken::from(s.to_string(), true);
    let mut builder = BpeTrainer::builder()
        .vocab_size(size)
        .min_frequency(0)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect());
    if flavor.specials_first {
        builder = builder.special_tokens(flavor.specials.iter().map(special).collect());
    }
    let mut trainer = TrainerWrapper::BpeTrainer(builder.build());
    // One sequence per line, as `train_from_files` feeds a text file.
    let lines: Vec<String> = ENGLISH_TEXT
        .split_inclusive('\n')
        .map(String::from)
        .collect();
    tok.train(&mut trainer, lines.into_iter()).map_err(err)?;
    if !flavor.specials_first {
        let tokens: Vec<AddedToken> = flavor.specials.iter().map(special).collect();
        tok.add_special_tokens(&tokens);
    }
    if flavor.add_bos {
        let bos = flavor.bos.expect("add_bos without a bos token");
        let id = tok.token_to_id(bos).expect("bos token in the vocabulary");
        let template = TemplateProcessing::builder()
            .try_single(format!("{bos}:0 $A:0"))
            .map_err(|e| anyhow::anyhow!("template: {e}"))?
            .try_pair(format!("{bos}:0 $A:0 {bos}:1 $B:1"))
            .map_err(|e| anyhow::anyhow!("template: {e}"))?
            .special_tokens(vec![(bos.to_string(), id)])
            .build()?;
        tok.with_post_processor(Some(template));
    }
    Ok(tok)
}

fn write_bpe(arch: Arch, size: usize, dir: &Path) -> Result<TokenizerFacts> {
    let flavor = bpe_flavor(arch);
    let tok = train_bpe(arch, size)?;
    let json = tok
        .to_string(true)
        .map_err(|e| anyhow::anyhow!("serializing tokenizer.json: {e}"))?;
    fs::write(dir.join("tokenizer.json"), json + "\n")?;
    let id = |s: &str| -> Result<(String, u32)> {
        let id = tok
            .token_to_id(s)
            .with_context(|| format!("{s} missing from the trained vocabulary"))?;
        Ok((s.to_string(), id))
    };
    let total = tok.get_vocab_size(true);
    let specials = flavor
        .specials
        .iter()
        .map(|s| id(s).map(|(s, i)| (i, s)))
        .collect::<Result<Vec<_>>>()?;
    let named = [Some(flavor.eos), flavor.bos, flavor.pad, flavor.unk];
    Ok(TokenizerFacts {
        vocab_size: total.div_ceil(64) * 64,
        bos: flavor.bos.map(id).transpose()?,
        eos: id(flavor.eos)?,
        pad: flavor.pad.map(id).transpose()?,
        unk: flavor.unk.map(id).transpose()?,
        add_bos: flavor.add_bos,
        specials,
        tokenizer_class: flavor.tokenizer_class,
        chat_template: flavor.chat_template,
        additional: flavor
            .specials
            .iter()
            .filter(|s| !named.contains(&Some(**s)))
            .map(|s| s.to_string())
            .collect(),
        spm: false,
    })
}

// ---------------------------------------------------------------------------------------------
// JSON files

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// An object from (key, value) pairs, keys in the given order (HF sorts them: pass them
/// sorted).
fn object(pairs: Vec<(&str, Value)>) -> Value {
    Value::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn config_json(spec: &FixtureSpec, tok: &TokenizerFacts) -> Value {
    let arch = spec.arch;
    // Qwen's configs name <|endoftext|> as bos although the tokenizer adds none.
    let bos_id = tok.bos.as_ref().or(tok.pad.as_ref()).map(|b| b.1);
    let mut c: BTreeMap<&str, Value> = BTreeMap::new();
    c.insert("architectures", json!([arch.hf_architecture()]));
    c.insert("attention_dropout", json!(0.0));
    c.insert("bos_token_id", json!(bos_id));
    c.insert("eos_token_id", json!(tok.eos.1));
    c.insert("head_dim", json!(spec.head_dim));
    c.insert("hidden_size", json!(spec.hidden));
    c.insert("initializer_range", json!(0.02));
    c.insert("intermediate_size", json!(spec.intermediate));
    c.insert("model_type", json!(arch.model_type()));
    c.insert("num_attention_heads", json!(spec.heads));
    c.insert("num_hidden_layers", json!(spec.layers));
    c.insert("num_key_value_heads", json!(spec.kv_heads));
    c.insert("tie_word_embeddings", json!(spec.tied_embeddings));
    c.insert("torch_dtype", json!(spec.dtype.torch_name()));
    c.insert("transformers_version", json!("4.51.3"));
    c.insert("use_cache", json!(true));
    c.insert("vocab_size", json!(tok.vocab_size));
    match arch {
        Arch::Llama => {
            c.insert("attention_bias", json!(false));
            c.insert("hidden_act", json!("silu"));
            c.insert("max_position_embeddings", json!(4096));
            c.insert("mlp_bias", json!(false));
            c.insert("pretraining_tp", json!(1));
            c.insert("rms_norm_eps", json!(1e-5));
            c.insert("rope_scaling", Value::Null);
            c.insert("rope_theta", json!(10000.0));
        }
        Arch::Qwen2 | Arch::Qwen3 => {
            // Qwen2's q/k/v biases are implicit (always on); Qwen3 has none.
            if arch == Arch::Qwen3 {
                c.insert("attention_bias", json!(false));
                c.insert("rope_scaling", Value::Null);
            }
            c.insert("hidden_act", json!("silu"));
            c.insert(
                "max_position_embeddings",
                json!(if arch == Arch::Qwen2 { 32768 } else { 40960 }),
            );
            c.insert("max_window_layers", json!(spec.layers));
            c.insert("rms_norm_eps", json!(1e-6));
            c.insert("rope_theta", json!(1000000.0));
            c.insert(
                "sliding_window",
                if arch == Arch::Qwen2 {
                    json!(32768)
                } else {
                    Value::Null
                },
            );
            c.insert("use_sliding_window", json!(false));
        }
        Arch::Gemma2 | Arch::Gemma3 => {
            c.insert("attention_bias", json!(false));
            c.insert("hidden_activation", json!("gelu_pytorch_tanh"));
            c.insert("pad_token_id", json!(tok.pad.as_ref().map(|p| p.1)));
            c.insert("query_pre_attn_scalar", json!(spec.head_dim));
            c.insert("rms_norm_eps", json!(1e-6));
            c.insert("sliding_window", json!(GEMMA_SLIDING_WINDOW));
            if arch == Arch::Gemma2 {
                c.insert("attn_logit_softcapping", json!(50.0));
                c.insert("cache_implementation", json!("hybrid"));
                c.insert("final_logit_softcapping", json!(30.0));
                c.insert("hidden_act", json!("gelu_pytorch_tanh"));
                c.insert("max_position_embeddings", json!(8192));
                c.insert("rope_theta", json!(10000.0));
            } else {
                let pattern = 6;
                let layer_types: Vec<&str> = (0..spec.layers)
                    .map(|i| {
                        if (i + 1) % pattern != 0 {
                            "sliding_attention"
                        } else {
                            "full_attention"
                        }
                    })
                    .collect();
                c.insert("attn_logit_softcapping", Value::Null);
                c.insert("final_logit_softcapping", Value::Null);
                c.insert("layer_types", json!(layer_types));
                c.insert("max_position_embeddings", json!(32768));
                c.insert("rope_local_base_freq", json!(10000.0));
                c.insert("rope_scaling", Value::Null);
                c.insert("rope_theta", json!(1000000.0));
                c.insert("sliding_window_pattern", json!(pattern));
            }
        }
    }
    Value::Object(c.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn generation_config_json(tok: &TokenizerFacts) -> Value {
    let bos_id = tok.bos.as_ref().or(tok.pad.as_ref()).map(|b| b.1);
    let mut pairs = vec![("_from_model_config", json!(true))];
    if let Some(id) = bos_id {
        pairs.push(("bos_token_id", json!(id)));
    }
    pairs.push(("eos_token_id", json!(tok.eos.1)));
    if let Some(p) = &tok.pad {
        pairs.push(("pad_token_id", json!(p.1)));
    }
    pairs.push(("transformers_version", json!("4.51.3")));
    object(pairs)
}

fn tokenizer_config_json(spec: &FixtureSpec, tok: &TokenizerFacts) -> Value {
    let mut decoder = Map::new();
    for (id, content) in &tok.specials {
        decoder.insert(
            id.to_string(),
            object(vec![
                ("content", json!(content)),
                ("lstrip", json!(false)),
                ("normalized", json!(false)),
                ("rstrip", json!(false)),
                ("single_word", json!(false)),
                ("special", json!(true)),
            ]),
        );
    }
    let name = |t: &Option<(String, u32)>| t.as_ref().map(|t| json!(t.0)).unwrap_or(Value::Null);
    let mut pairs = vec![
        ("add_bos_token", json!(tok.add_bos)),
        ("add_eos_token", json!(false)),
    ];
    if !tok.spm {
        pairs.push(("add_prefix_space", json!(false)));
    }
    pairs.push(("added_tokens_decoder", Value::Object(decoder)));
    if !tok.additional.is_empty() {
        pairs.push(("additional_special_tokens", json!(tok.additional)));
    }
    pairs.extend([
        ("bos_token", name(&tok.bos)),
        ("chat_template", json!(tok.chat_template)),
        ("clean_up_tokenization_spaces", json!(false)),
        ("eos_token", json!(tok.eos.0)),
    ]);
    if tok.spm {
        pairs.push(("legacy", json!(false)));
    }
    pairs.push((
        "model_max_length",
        json!(match spec.arch {
            Arch::Llama => 4096,
            Arch::Gemma2 => 8192,
            _ => 32768,
        }),
    ));
    pairs.push(("pad_token", name(&tok.pad)));
    if tok.spm {
        pairs.push(("sp_model_kwargs", json!({})));
    }
    pairs.push(("tokenizer_class", json!(tok.tokenizer_class)));
    pairs.push(("unk_token", name(&tok.unk)));
    object(pairs)
}

fn special_tokens_map_json(tok: &TokenizerFacts) -> Value {
    let mut pairs = Vec::new();
    if !tok.additional.is_empty() {
        pairs.push(("additional_special_tokens", json!(tok.additional)));
    }
    if let Some(b) = &tok.bos {
        pairs.push(("bos_token", json!(b.0)));
    }
    pairs.push(("eos_token", json!(tok.eos.0)));
    if let Some(p) = &tok.pad {
        pairs.push(("pad_token", json!(p.0)));
    }
    if let Some(u) = &tok.unk {
        pairs.push(("unk_token", json!(u.0)));
    }
    object(pairs)
}

// ---------------------------------------------------------------------------------------------
// Weights

/// How a tensor's values are drawn.
#[derive(Clone, Copy)]
enum Init {
    /// Gaussian with this standard deviation (with a rare 4x outlier, as real layers have).
    Normal(f32),
    /// 1 + Gaussian(std) for a plain RMSNorm weight; Gemma's stored (gamma - 1) is Gaussian.
    Norm,
}

/// (name, shape, init) of every tensor, in the order `save_pretrained` writes them.
fn tensor_plan(spec: &FixtureSpec, vocab: usize) -> Vec<(String, Vec<usize>, Init)> {
    let (h, f, hd) = (spec.hidden, spec.intermediate, spec.head_dim);
    let q = spec.heads * hd;
    let kv = spec.kv_heads * hd;
    let inv = |n: usize| 1.0 / (n as f32).sqrt();
    let gemma = spec.arch.is_gemma();
    let qk_norm = matches!(spec.arch, Arch::Qwen3 | Arch::Gemma3);
    let mut t = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![vocab, h],
        Init::Normal(2.0 * inv(h)),
    )];
    for l in 0..spec.layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        t.push((
            p("self_attn.q_proj.weight"),
            vec![q, h],
            Init::Normal(1.5 * inv(h)),
        ));
        if spec.arch == Arch::Qwen2 {
            t.push((p("self_attn.q_proj.bias"), vec![q], Init::Normal(0.3)));
        }
        t.push((
            p("self_attn.k_proj.weight"),
            vec![kv, h],
            Init::Normal(1.5 * inv(h)),
        ));
        if spec.arch == Arch::Qwen2 {
            t.push((p("self_attn.k_proj.bias"), vec![kv], Init::Normal(0.3)));
        }
        t.push((
            p("self_attn.v_proj.weight"),
            vec![kv, h],
            Init::Normal(inv(h)),
        ));
        if spec.arch == Arch::Qwen2 {
            t.push((p("self_attn.v_proj.bias"), vec![kv], Init::Normal(0.1)));
        }
        t.push((
            p("self_attn.o_proj.weight"),
            vec![h, q],
            Init::Normal(inv(q)),
        ));
        if qk_norm {
            t.push((p("self_attn.q_norm.weight"), vec![hd], Init::Norm));
            t.push((p("self_attn.k_norm.weight"), vec![hd], Init::Norm));
        }
        t.push((p("mlp.gate_proj.weight"), vec![f, h], Init::Normal(inv(h))));
        t.push((p("mlp.up_proj.weight"), vec![f, h], Init::Normal(inv(h))));
        t.push((p("mlp.down_proj.weight"), vec![h, f], Init::Normal(inv(f))));
        t.push((p("input_layernorm.weight"), vec![h], Init::Norm));
        t.push((p("post_attention_layernorm.weight"), vec![h], Init::Norm));
        if gemma {
            t.push((p("pre_feedforward_layernorm.weight"), vec![h], Init::Norm));
            t.push((p("post_feedforward_layernorm.weight"), vec![h], Init::Norm));
        }
    }
    t.push(("model.norm.weight".to_string(), vec![h], Init::Norm));
    if !spec.tied_embeddings {
        t.push((
            "lm_head.weight".to_string(),
            vec![vocab, h],
            Init::Normal(2.0 * inv(h)),
        ));
    }
    t
}

fn tensor_count(spec: &FixtureSpec) -> usize {
    tensor_plan(spec, 1).len()
}

/// FNV-1a, to give each tensor its own random stream whatever the order or sharding.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn tensor_values(spec: &FixtureSpec, name: &str, n: usize, init: Init) -> Vec<f32> {
    let mut rng = SplitMix64(spec.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ fnv1a(name));
    match init {
        Init::Normal(std) => (0..n)
            .map(|_| {
                let g = rng.gaussian() * std;
                if rng.next_u64().is_multiple_of(1000) {
                    g * 4.0
                } else {
                    g
                }
            })
            .collect(),
        Init::Norm => {
            let offset = if spec.arch.is_gemma() { 0.0 } else { 1.0 };
            (0..n).map(|_| offset + 0.1 * rng.gaussian()).collect()
        }
    }
}

fn write_weights(spec: &FixtureSpec, vocab: usize, dir: &Path) -> Result<()> {
    let plan = tensor_plan(spec, vocab);
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = plan
        .into_iter()
        .map(|(name, shape, init)| {
            let n = shape.iter().product();
            let bytes = spec.dtype.encode(&tensor_values(spec, &name, n, init));
            (name, shape, bytes)
        })
        .collect();
    let total: usize = tensors.iter().map(|t| t.2.len()).sum();

    // Contiguous runs of tensors, cut where the running size passes k/n of the total, each
    // shard holding at least one tensor.
    let n = spec.shards;
    let mut shard_of = Vec::with_capacity(tensors.len());
    let (mut shard, mut done) = (0usize, 0usize);
    for (i, t) in tensors.iter().enumerate() {
        if i > 0 && shard + 1 < n {
            let shards_left = n - 1 - shard;
            let tensors_left = tensors.len() - i;
            if tensors_left <= shards_left || done * n >= (shard + 1) * total {
                shard += 1;
            }
        }
        shard_of.push(shard);
        done += t.2.len();
    }
    debug_assert_eq!(shard + 1, n);

    let metadata = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    let file_name = |s: usize| {
        if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", s + 1, n)
        }
    };
    let mut weight_map = BTreeMap::new();
    for s in 0..n {
        let mut views = Vec::new();
        for (t, _) in tensors.iter().zip(&shard_of).filter(|(_, &k)| k == s) {
            let view = safetensors::tensor::TensorView::new(
                spec.dtype.safetensors_dtype(),
                t.1.clone(),
                &t.2,
            )
            .map_err(|e| anyhow::anyhow!("tensor {}: {e:?}", t.0))?;
            views.push((t.0.clone(), view));
            weight_map.insert(t.0.clone(), file_name(s));
        }
        let bytes = safetensors::tensor::serialize(views, &metadata)
            .map_err(|e| anyhow::anyhow!("serializing {}: {e:?}", file_name(s)))?;
        let path = dir.join(file_name(s));
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    if n > 1 {
        let index = object(vec![
            ("metadata", json!({ "total_size": total })),
            (
                "weight_map",
                Value::Object(weight_map.into_iter().map(|(k, v)| (k, json!(v))).collect()),
            ),
        ]);
        write_json(&dir.join("model.safetensors.index.json"), &index)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Text

/// The fixed English text the BPE fixtures are trained on (also a small evaluation text).
pub const ENGLISH_TEXT: &str = "\
The potter opened the kiln at dawn, when the bricks had cooled enough to touch. Inside, forty-two \
bowls sat on the shelves where she had left them three days before, and every one of them had \
changed. The glaze that went in as a dull grey powder came out as a deep green, glassy and bright, \
with small bubbles frozen under the surface like air trapped in river ice.

She had been firing pots for nearly thirty years, and she still could not say exactly what would \
happen inside. \"You learn the rules,\" she told the students who came to her workshop each summer, \
\"and then the fire teaches you the exceptions.\" A kiln is a simple machine: a box of bricks that \
holds heat. But the chemistry that happens at 1,280 degrees Celsius is anything but simple. Clay \
turns to stone. Ash melts into glass. Iron in the glaze can turn red, brown, yellow or blue, \
depending on how much oxygen the flames are allowed to breathe.

Most of her students wanted recipes. They wrote down the weights of feldspar, silica, whiting and \
kaolin, the order in which to mix them, and the temperature at which to hold the kiln for twenty \
minutes before letting it cool. She gave them the recipes, because recipes are useful, but she \
always added a warning: a recipe is a description of one firing, not a promise about the next. \
The clay from a new bag will not be quite the same as the clay from the old one. The weather \
matters. The way the pots are packed on the shelves matters. Even the wood matters, if you burn \
wood: oak gives a different ash from pine, and the ash that lands on a pot becomes part of it.

In the early years she kept a notebook for every firing. She recorded the date, the weather, the \
time each cone bent, the colour of the flame at the spy hole, and a short description of every \
piece that came out. The notebooks filled a shelf, then two. When she read them again years later, \
she found that the most useful pages were not the ones about her successes. They were the pages \
where something had gone wrong and she had written down, honestly, what she thought had happened: \
a shelf that cracked because it was loaded unevenly; a glaze that crawled because the pots were \
dusty; a whole load of mugs that came out pale because the damper had been left open by mistake.

Measuring things, she liked to say, is how you stop arguing with yourself. If you think that a \
thinner glaze gives a brighter colour, you can test it: dip ten tiles for two seconds and ten tiles \
for five seconds, fire them together, and compare. If you think that the back of the kiln runs \
hotter than the front, you can put a row of cones on every shelf and look at how far each one bends. \
The answers were often surprising. The back of her kiln did not run hotter; the top did, by almost \
forty degrees, and that one fact explained half of the failures in her notebooks.

There is a kind of patience that pottery demands, and it is not the same as waiting. Waiting is \
passive. The patience of a potter is active: it is the habit of doing the same careful thing many \
times, watching closely each time, and changing only one thing at a time so that you can tell what \
made the difference. A student who changes the clay, the glaze and the firing schedule all at once \
may get a beautiful pot, but she will not know why, and she will not be able to make another one.

Some of her favourite pieces were accidents. A tall jar that slumped in the heat and leaned like a \
tired man became the centre of her first exhibition. A plate that had been too close to the burner \
came out with a ring of orange flashing that no glaze could imitate. She kept these pieces, but she \
was careful not to build her practice on them. An accident is a question, she said, not an answer. \
The work is to find out what caused it, so that the next time it happens, it happens on purpose.

When the village school asked her to teach the children, she started with mud. She let them squeeze \
it, roll it into snakes, flatten it into pancakes and stack it into towers that fell over. Only when \
they had stopped being afraid of making a mess did she show them how to centre a lump of clay on the \
wheel. Centring is the first skill and the hardest: the clay has to spin perfectly evenly, or every \
wall you pull from it will wobble. Most beginners need dozens of tries. Some need hundreds. The \
children who did best were not the strongest or the quickest, but the ones who kept their hands \
still and let the wheel do the work.

Her own teacher had been an old man who spoke very little. He would watch her throw a bowl, cut it \
in half with a wire, and point at the places where the wall was too thick. Then he would throw one \
himself, cut it in half, and show her that his wall was the same thickness from the foot to the rim. \
He never explained how he did it. She learned by copying him, badly at first, then less badly, over \
many months. Years later she understood that he had been teaching her to see, not to throw: once you \
can see what is wrong with a pot, your hands slowly learn to fix it.

Today her workshop has three kilns: a small electric one for tests, a gas kiln for most of her \
work, and a wood kiln that she fires twice a year with the help of friends. The wood firings take \
four days and nights. The friends take turns feeding the firebox every few minutes, sleeping in \
shifts, cooking soup on a camp stove and telling stories in the dark. It's hard work, and it's the \
part of the year they look forward to most. When the kiln is finally sealed and left to cool, \
everyone goes home exhausted, and a week later they all come back to see what the fire has made.

What it makes is never quite what anyone expected. That, she says, is the point. You can measure, \
plan and record everything, and you should, because it narrows the range of surprises to the ones \
worth having. But the last word always belongs to the fire.

A few numbers from her notebooks: 1,280 degrees for stoneware; 1,000 degrees for the first, bisque \
firing; 12 hours to reach the top temperature in the gas kiln; 96 hours in the wood kiln; 3 kilograms \
of glaze for a full load; 0.5 millimetres of glaze on a typical pot; and 1 in 20 pots lost, on \
average, to cracks, drips or stuck lids. She's proud of that last number. When she started, it was \
closer to 1 in 3.
";
