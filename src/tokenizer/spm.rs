//! SentencePiece `tokenizer.model` (a protobuf `ModelProto`) read with a small hand-written
//! protobuf wire reader, and the vocab convert_hf_to_gguf.py builds from it
//! (`_create_vocab_sentencepiece` / `_set_vocab_sentencepiece`).
//!
//! Only the parts convert uses are decoded: the pieces (text, score, type), and for information
//! the trainer spec's model type and the normalizer spec's flags. Everything else is skipped by
//! wire type, so newer fields do not break parsing.

use super::special::{self, SpecialVocab};
use super::token_type;
use crate::gguf::{Array, Metadata};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

/// sentencepiece_model.proto `SentencePiece.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceType {
    fn from_proto(v: u64) -> Result<Self> {
        Ok(match v {
            1 => PieceType::Normal,
            2 => PieceType::Unknown,
            3 => PieceType::Control,
            4 => PieceType::UserDefined,
            5 => PieceType::Unused,
            6 => PieceType::Byte,
            _ => bail!("unknown SentencePiece piece type {v}"),
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceType,
}

/// The decoded parts of a `ModelProto`.
#[derive(Clone, Debug, PartialEq)]
pub struct SpmModel {
    pub pieces: Vec<Piece>,
    /// TrainerSpec.model_type (1 UNIGRAM, 2 BPE, 3 WORD, 4 CHAR); proto default UNIGRAM.
    pub model_type: u64,
    /// TrainerSpec.byte_fallback (default false).
    pub byte_fallback: bool,
    /// NormalizerSpec.name, when present.
    pub normalizer_name: Option<String>,
    /// NormalizerSpec.add_dummy_prefix (default true). convert_hf_to_gguf.py does not write it
    /// (llama.cpp's SPM tokenizer defaults tokenizer.ggml.add_space_prefix to true); kept for
    /// information.
    pub add_dummy_prefix: bool,
    /// NormalizerSpec.remove_extra_whitespaces (default true).
    pub remove_extra_whitespaces: bool,
}

impl SpmModel {
    pub fn model_type_name(&self) -> &'static str {
        match self.model_type {
            1 => "UNIGRAM",
            2 => "BPE",
            3 => "WORD",
            4 => "CHAR",
            _ => "unknown",
        }
    }
}

/// One protobuf field value, by wire type.
enum Wire<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// A protobuf wire-format reader over one message.
struct ProtoReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> ProtoReader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                bail!("truncated varint at byte {}", self.pos);
            };
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        bail!("varint longer than 10 bytes at byte {}", self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                anyhow!(
                    "field of {n} bytes at byte {} runs past the end ({} bytes)",
                    self.pos,
                    self.buf.len()
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next (field number, value), or None at the end of the message.
    fn next_field(&mut self) -> Result<Option<(u64, Wire<'a>)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let at = self.pos;
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 {
            bail!("field number 0 at byte {at}");
        }
        let value = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed64
            }
            2 => {
                let n = self.varint()?;
                let n =
                    usize::try_from(n).map_err(|_| anyhow!("length {n} too large at byte {at}"))?;
                Wire::Bytes(self.take(n)?)
            }
            5 => Wire::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().unwrap())),
            w => bail!("unsupported protobuf wire type {w} (field {field}) at byte {at}"),
        };
        Ok(Some((field, value)))
    }
}

fn want_bytes<'a>(what: &str, w: Wire<'a>) -> Result<&'a [u8]> {
    match w {
        Wire::Bytes(b) => Ok(b),
        _ => bail!("{what}: expected a length-delimited field"),
    }
}

fn want_varint(what: &str, w: Wire<'_>) -> Result<u64> {
    match w {
        Wire::Varint(v) => Ok(v),
        _ => bail!("{what}: expected a varint field"),
    }
}

fn parse_piece(buf: &[u8], index: usize) -> Result<Piece> {
    let mut r = ProtoReader::new(buf);
    let mut piece: Option<String> = None;
    let mut score = 0.0f32;
    let mut kind = PieceType::Normal;
    while let Some((field, w)) = r.next_field()? {
        match field {
            1 => {
                let b = want_bytes("SentencePiece.piece", w)?;
                piece = Some(
                    String::from_utf8(b.to_vec())
                        .map_err(|_| anyhow!("piece text is not UTF-8"))?,
                );
            }
            2 => match w {
                Wire::Fixed32(v) => score = f32::from_bits(v),
                _ => bail!("SentencePiece.score: expected a 32-bit float"),
            },
            3 => kind = PieceType::from_proto(want_varint("SentencePiece.type", w)?)?,
            _ => {}
        }
    }
    let piece = piece.ok_or_else(|| anyhow!("piece {index} has no text"))?;
    Ok(Piece { piece, score, kind })
}

/// Parses a serialized `ModelProto`.
pub fn parse_model(buf: &[u8]) -> Result<SpmModel> {
    if buf.is_empty() {
        bail!("empty file");
    }
    let mut m = SpmModel {
        pieces: Vec::new(),
        model_type: 1,
        byte_fallback: false,
        normalizer_name: None,
        add_dummy_prefix: true,
        remove_extra_whitespaces: true,
    };
    let mut r = ProtoReader::new(buf);
    while let Some((field, w)) = r.next_field()? {
        match field {
            1 => {
                let b = want_bytes("ModelProto.pieces", w)?;
                let idx = m.pieces.len();
                m.pieces
                    .push(parse_piece(b, idx).with_context(|| format!("piece {idx}"))?);
            }
            2 => {
                let mut t = ProtoReader::new(want_bytes("ModelProto.trainer_spec", w)?);
                while let Some((f, w)) = t.next_field().context("trainer_spec")? {
                    match f {
                        3 => m.model_type = want_varint("TrainerSpec.model_type", w)?,
                        35 => m.byte_fallback = want_varint("TrainerSpec.byte_fallback", w)? != 0,
                        _ => {}
                    }
                }
            }
            3 => {
                let mut n = ProtoReader::new(want_bytes("ModelProto.normalizer_spec", w)?);
                while let Some((f, w)) = n.next_field().context("normalizer_spec")? {
                    match f {
                        1 => {
                            let b = want_bytes("NormalizerSpec.name", w)?;
                            m.normalizer_name = Some(String::from_utf8_lossy(b).into_owned());
                        }
                        3 => {
                            m.add_dummy_prefix =
                                want_varint("NormalizerSpec.add_dummy_prefix", w)? != 0
                        }
                        4 => {
                            m.remove_extra_whitespaces =
                                want_varint("NormalizerSpec.remove_extra_whitespaces", w)? != 0
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if m.pieces.is_empty() {
        bail!("no pieces (not a SentencePiece model?)");
    }
    Ok(m)
}

/// Reads and parses a `tokenizer.model` file; errors name the file.
pub fn load_model(path: &Path) -> Result<SpmModel> {
    let buf = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_model(&buf)
        .with_context(|| format!("{}: not a valid SentencePiece model", path.display()))
}

/// The vocab convert_hf_to_gguf.py's `_create_vocab_sentencepiece` builds.
#[derive(Clone, Debug, PartialEq)]
pub struct SpmVocab {
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    pub types: Vec<i32>,
    pub model: SpmModel,
    pub warnings: Vec<String>,
}

fn read_json(path: &Path) -> Result<Json> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}

/// `_create_vocab_sentencepiece`: pieces padded/truncated to `vocab_size` (config.json's; the
/// piece count when None or 0), then `added_tokens.json` and tokenizer_config.json's
/// `added_tokens_decoder` applied on top.
pub fn create_vocab(dir: &Path, vocab_size: Option<usize>) -> Result<SpmVocab> {
    let model_path = dir.join("tokenizer.model");
    let model = load_model(&model_path)?;
    let mut warnings = Vec::new();
    let n_pieces = model.pieces.len();
    let vocab_size = vocab_size.filter(|&v| v > 0).unwrap_or(n_pieces);

    let mut tokens: Vec<String> = (0..vocab_size).map(|i| format!("[PAD{i}]")).collect();
    let mut scores = vec![-10000.0f32; vocab_size];
    let mut types = vec![token_type::UNUSED; vocab_size];

    for (id, p) in model.pieces.iter().enumerate() {
        if id >= vocab_size {
            warnings.push(format!(
                "ignore tokens from {id}: id is out of range, max={}",
                vocab_size - 1
            ));
            break;
        }
        // Note: USER_DEFINED pieces stay NORMAL, as convert does (it never asks IsUserDefined).
        let t = match p.kind {
            PieceType::Unknown => token_type::UNKNOWN,
            PieceType::Control => token_type::CONTROL,
            PieceType::Unused => token_type::UNUSED,
            PieceType::Byte => token_type::BYTE,
            PieceType::Normal | PieceType::UserDefined => token_type::NORMAL,
        };
        tokens[id] = p.piece.clone();
        scores[id] = p.score;
        types[id] = t;
    }

    added_tokens_json(
        dir,
        vocab_size,
        &mut tokens,
        &mut scores,
        &mut types,
        &mut warnings,
    )?;

    let config_path = dir.join("tokenizer_config.json");
    if config_path.is_file() {
        let json = read_json(&config_path)?;
        if let Some(decoder) = json.get("added_tokens_decoder").and_then(Json::as_object) {
            for (key, data) in decoder {
                let id: usize = key.trim().parse().map_err(|_| {
                    anyhow!(
                        "{}: added_tokens_decoder key {key:?} is not an id",
                        config_path.display()
                    )
                })?;
                let mut token = data
                    .get("content")
                    .and_then(Json::as_str)
                    .ok_or_else(|| {
                        anyhow!(
                            "{}: added_tokens_decoder[{key}] has no content",
                            config_path.display()
                        )
                    })?
                    .to_string();
                if id >= vocab_size {
                    warnings.push(format!(
                        "ignore token {id}: id is out of range, max={}",
                        vocab_size - 1
                    ));
                    continue;
                }
                if types[id] != token_type::UNUSED && tokens[id] != token {
                    warnings.push(format!(
                        "replacing token {id}: {:?} -> {token:?}",
                        tokens[id]
                    ));
                }
                if data.get("special").is_some_and(special::truthy)
                    || super::does_token_look_special(&token)
                {
                    types[id] = token_type::CONTROL;
                } else {
                    token = token.replace('\u{2581}', " ");
                    types[id] = token_type::USER_DEFINED;
                }
                scores[id] = -1000.0;
                tokens[id] = token;
            }
        }
    }

    Ok(SpmVocab {
        tokens,
        scores,
        types,
        model,
        warnings,
    })
}

/// Outcome of [`set_vocab_sentencepiece`].
#[derive(Debug)]
pub struct SpmWritten {
    pub n_tokens: usize,
    pub path: PathBuf,
    pub model: SpmModel,
    pub warnings: Vec<String>,
}

/// `_set_vocab_sentencepiece`: writes tokenizer.ggml.{model,pre,tokens,scores,token_type} and the
/// SpecialVocab keys. Errors with `NotFound` semantics are reported by the caller checking for
/// the file first (convert falls back only when tokenizer.model is missing).
pub fn set_vocab_sentencepiece(
    dir: &Path,
    vocab_size: Option<usize>,
    md: &mut Metadata,
) -> Result<SpmWritten> {
    write_vocab(dir, create_vocab(dir, vocab_size)?, md)
}

/// `Phi3MiniModel.set_vocab`'s SentencePiece path: the pieces padded to `vocab_size` as
/// [`create_vocab`] does, then `added_tokens.json`, tokenizer_config.json's
/// `added_tokens_decoder` and tokenizer.json's `added_tokens`, each token taken as written
/// (no space pre-normalization, no "looks special" rule: `special` makes it CONTROL, else
/// USER_DEFINED, score -1000). Where convert fails with an IndexError (a piece or added token
/// past `vocab_size`), this is an error naming the file.
pub fn create_vocab_phi3(dir: &Path, vocab_size: Option<usize>) -> Result<SpmVocab> {
    let model_path = dir.join("tokenizer.model");
    let model = load_model(&model_path)?;
    let mut warnings = Vec::new();
    let vocab_size = vocab_size.filter(|&v| v > 0).unwrap_or(model.pieces.len());
    if model.pieces.len() > vocab_size {
        bail!(
            "{}: {} pieces, more than config.json's vocab_size = {vocab_size}",
            model_path.display(),
            model.pieces.len()
        );
    }
    let mut tokens: Vec<String> = (0..vocab_size).map(|i| format!("[PAD{i}]")).collect();
    let mut scores = vec![-10000.0f32; vocab_size];
    let mut types = vec![token_type::UNUSED; vocab_size];
    for (id, p) in model.pieces.iter().enumerate() {
        tokens[id] = p.piece.clone();
        scores[id] = p.score;
        types[id] = match p.kind {
            PieceType::Unknown => token_type::UNKNOWN,
            PieceType::Control => token_type::CONTROL,
            PieceType::Unused => token_type::UNUSED,
            PieceType::Byte => token_type::BYTE,
            PieceType::Normal | PieceType::UserDefined => token_type::NORMAL,
        };
    }

    added_tokens_json(
        dir,
        vocab_size,
        &mut tokens,
        &mut scores,
        &mut types,
        &mut warnings,
    )?;

    // (file, its added tokens as (id, content, special)).
    type Added = Vec<(usize, String, bool)>;
    let mut sources: Vec<(PathBuf, Added)> = Vec::new();
    let config_path = dir.join("tokenizer_config.json");
    if config_path.is_file() {
        let json = read_json(&config_path)?;
        let mut list = Vec::new();
        if let Some(decoder) = json.get("added_tokens_decoder").and_then(Json::as_object) {
            for (key, data) in decoder {
                let id: usize = key.trim().parse().map_err(|_| {
                    anyhow!(
                        "{}: added_tokens_decoder key {key:?} is not an id",
                        config_path.display()
                    )
                })?;
                let content = data.get("content").and_then(Json::as_str).ok_or_else(|| {
                    anyhow!(
                        "{}: added_tokens_decoder[{key}] has no content",
                        config_path.display()
                    )
                })?;
                let special = data.get("special").is_some_and(special::truthy);
                list.push((id, content.to_string(), special));
            }
        }
        sources.push((config_path, list));
    }
    let json_path = dir.join("tokenizer.json");
    if json_path.is_file() {
        let json = read_json(&json_path)?;
        let mut list = Vec::new();
        for data in json
            .get("added_tokens")
            .and_then(Json::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let id =
                data.get("id").and_then(Json::as_u64).ok_or_else(|| {
                    anyhow!("{}: an added token without an id", json_path.display())
                })? as usize;
            let content = data.get("content").and_then(Json::as_str).ok_or_else(|| {
                anyhow!("{}: added token {id} has no content", json_path.display())
            })?;
            let special = data.get("special").is_some_and(special::truthy);
            list.push((id, content.to_string(), special));
        }
        sources.push((json_path, list));
    }
    for (path, list) in sources {
        for (id, token, special) in list {
            if id >= vocab_size {
                bail!(
                    "{}: added token {token:?} has id {id}, past config.json's vocab_size = {vocab_size}",
                    path.display()
                );
            }
            if types[id] != token_type::UNUSED && tokens[id] != token {
                warnings.push(format!(
                    "replacing token {id}: {:?} -> {token:?}",
                    tokens[id]
                ));
            }
            tokens[id] = token;
            scores[id] = -1000.0;
            types[id] = if special {
                token_type::CONTROL
            } else {
                token_type::USER_DEFINED
            };
        }
    }
    Ok(SpmVocab {
        tokens,
        scores,
        types,
        model,
        warnings,
    })
}

/// `Phi3MiniModel.set_vocab` with a tokenizer.model: [`create_vocab_phi3`], then the keys in
/// [`set_vocab_sentencepiece`]'s order.
pub fn set_vocab_phi3(
    dir: &Path,
    vocab_size: Option<usize>,
    md: &mut Metadata,
) -> Result<SpmWritten> {
    write_vocab(dir, create_vocab_phi3(dir, vocab_size)?, md)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::gguf::Value;

    const LLAMA2: &str = "/work/shared/fixtures/llama2-tokenizer.model";

    fn llama2_path() -> Option<PathBuf> {
        let candidates = [
            std::env::var("KILN_LLAMA2_TOKENIZER_MODEL")
                .ok()
                .map(PathBuf::from),
            Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/llama2-tokenizer.model")),
            Some(
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../shared/fixtures/llama2-tokenizer.model"),
            ),
            Some(PathBuf::from(LLAMA2)),
        ];
        candidates.into_iter().flatten().find(|p| p.is_file())
    }

    /// Encodes a varint (test helper for building protobufs by hand).
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn len_field(field: u64, body: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | 2, out);
        varint(body.len() as u64, out);
        out.extend_from_slice(body);
    }

    fn piece(text: &str, score: f32, kind: u64) -> Vec<u8> {
        let mut p = Vec::new();
        len_field(1, text.as_bytes(), &mut p);
        varint(2 << 3 | 5, &mut p);
        p.extend_from_slice(&score.to_le_bytes());
        if kind != 1 {
            varint(3 << 3, &mut p);
            varint(kind, &mut p);
        }
        p
    }

    /// A tiny hand-built ModelProto: <unk>, <s>, </s>, <0x0A>, ▁a, ▁b, a user-defined piece.
    pub(crate) fn tiny_model() -> Vec<u8> {
        let mut m = Vec::new();
        for (t, s, k) in [
            ("<unk>", 0.0, 2),
            ("<s>", 0.0, 3),
            ("</s>", 0.0, 3),
            ("<0x0A>", 0.0, 6),
            ("\u{2581}a", -1.5, 1),
            ("\u{2581}b", -2.5, 1),
            ("<tool>", 0.0, 4),
            ("<unused0>", 0.0, 5),
        ] {
            len_field(1, &piece(t, s, k), &mut m);
        }
        // trainer_spec { model_type: BPE (2), byte_fallback: true, some unknown string field 99 }
        let mut t = Vec::new();
        varint(3 << 3, &mut t);
        varint(2, &mut t);
        varint(35 << 3, &mut t);
        varint(1, &mut t);
        len_field(99, b"ignored", &mut t);
        len_field(2, &t, &mut m);
        // normalizer_spec { name: "identity", add_dummy_prefix: false }
        let mut n = Vec::new();
        len_field(1, b"identity", &mut n);
        varint(3 << 3, &mut n);
        varint(0, &mut n);
        len_field(3, &n, &mut m);
        m
    }

    #[test]
    fn parses_hand_built_model() {
        let m = parse_model(&tiny_model()).unwrap();
        assert_eq!(m.pieces.len(), 8);
        assert_eq!(
            m.pieces[0],
            Piece {
                piece: "<unk>".into(),
                score: 0.0,
                kind: PieceType::Unknown
            }
        );
        assert_eq!(m.pieces[3].kind, PieceType::Byte);
        assert_eq!(m.pieces[4].score, -1.5);
        assert_eq!(m.pieces[4].kind, PieceType::Normal);
        assert_eq!(m.pieces[6].kind, PieceType::UserDefined);
        assert_eq!(m.model_type_name(), "BPE");
        assert!(m.byte_fallback);
        assert_eq!(m.normalizer_name.as_deref(), Some("identity"));
        assert!(!m.add_dummy_prefix);
        assert!(m.remove_extra_whitespaces);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_model(b"").is_err());
        assert!(parse_model(b"{\"model\": 1}").is_err());
        let mut t = tiny_model();
        t.truncate(t.len() - 3);
        assert!(parse_model(&t).is_err());
        // Field 1 that is a varint instead of a message.
        assert!(parse_model(&[0x08, 0x01]).is_err());
    }

    #[test]
    fn bad_file_error_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.model");
        std::fs::write(&p, b"this is not a protobuf at all").unwrap();
        let e = format!("{:#}", load_model(&p).unwrap_err());
        assert!(e.contains(&p.display().to_string()), "{e}");
        let mut md = Metadata::new();
        let e = format!(
            "{:#}",
            set_vocab_sentencepiece(dir.path(), None, &mut md).unwrap_err()
        );
        assert!(e.contains("tokenizer.model"), "{e}");
    }

    #[test]
    fn vocab_pads_and_applies_added_tokens() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.model"), tiny_model()).unwrap();
        let v = create_vocab(dir.path(), None).unwrap();
        assert_eq!(v.tokens.len(), 8);
        // USER_DEFINED pieces stay NORMAL in convert (it never asks IsUserDefined).
        assert_eq!(
            (v.tokens[6].as_str(), v.types[6]),
            ("<tool>", token_type::NORMAL)
        );
        assert_eq!(v.types[7], token_type::UNUSED);
        std::fs::write(
            dir.path().join("added_tokens.json"),
            r#"{"<extra>": 9, "<far>": 99}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"added_tokens_decoder": {
                "6": {"content": "<tool2>", "special": true},
                "7": {"content": "<start_of_turn>", "special": false},
                "10": {"content": "\u2581\u2581x", "special": false},
                "11": {"content": "<mask>", "special": true}
            }}"#,
        )
        .unwrap();
        let v = create_vocab(dir.path(), Some(12)).unwrap();
        assert_eq!(v.tokens.len(), 12);
        assert_eq!(v.types[3], token_type::BYTE);
        // A piece that is UNUSED in the model is replaced without a warning; not special and
        // not looking special: USER_DEFINED.
        assert_eq!(
            (v.tokens[7].as_str(), v.types[7], v.scores[7]),
            ("<start_of_turn>", token_type::USER_DEFINED, -1000.0)
        );
        assert!(!v.warnings.iter().any(|w| w.contains("replacing token 7")));
        // Replacing a used piece warns.
        assert_eq!(
            (v.tokens[6].as_str(), v.types[6]),
            ("<tool2>", token_type::CONTROL)
        );
        assert!(v.warnings.iter().any(|w| w.contains("replacing token 6")));
        assert_eq!(
            (v.tokens[8].as_str(), v.types[8], v.scores[8]),
            ("[PAD8]", token_type::UNUSED, -10000.0)
        );
        assert_eq!(
            (v.tokens[9].as_str(), v.types[9], v.scores[9]),
            ("<extra>", token_type::USER_DEFINED, -1000.0)
        );
        // ▁ is pre-normalized to spaces in user-defined tokens.
        assert_eq!(
            (v.tokens[10].as_str(), v.types[10]),
            ("  x", token_type::USER_DEFINED)
        );
        assert_eq!(
            (v.tokens[11].as_str(), v.types[11]),
            ("<mask>", token_type::CONTROL)
        );
        assert!(v.warnings.iter().any(|w| w.contains("ignore token 99")));

        // vocab_size below the piece count truncates with a warning.
        let v = create_vocab(dir.path(), Some(5)).unwrap();
        assert_eq!(v.tokens.len(), 5);
        assert!(v
            .warnings
            .iter()
            .any(|w| w.contains("ignore tokens from 5")));
    }

    #[test]
    fn llama2_tokenizer_model() {
        let path = llama2_path().expect("the Llama 2 tokenizer.model (../shared/fixtures)");
        let m = load_model(&path).unwrap();
        assert_eq!(m.pieces.len(), 32000);
        assert_eq!(
            (m.pieces[0].piece.as_str(), m.pieces[0].kind),
            ("<unk>", PieceType::Unknown)
        );
        assert_eq!(
            (m.pieces[1].piece.as_str(), m.pieces[1].kind),
            ("<s>", PieceType::Control)
        );
        assert_eq!(
            (m.pieces[2].piece.as_str(), m.pieces[2].kind),
            ("</s>", PieceType::Control)
        );
        for b in 0..256usize {
            let p = &m.pieces[3 + b];
            assert_eq!(p.piece, format!("<0x{b:02X}>"));
            assert_eq!(p.kind, PieceType::Byte);
        }
        assert!(m.pieces[259..].iter().all(|p| p.kind == PieceType::Normal));
        assert_eq!(m.pieces[259].piece, "\u{2581}\u{2581}");
        assert_eq!(m.model_type_name(), "BPE");
        assert!(m.byte_fallback);
        assert!(m.add_dummy_prefix);

        // Through the convert path: 32000 tokens, "llama"/"default", types as llama.cpp expects.
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(&path, dir.path().join("tokenizer.model")).unwrap();
        let mut md = Metadata::new();
        let w = set_vocab_sentencepiece(dir.path(), Some(32000), &mut md).unwrap();
        assert_eq!(w.n_tokens, 32000);
        let keys: Vec<&str> = md.iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "tokenizer.ggml.model",
                "tokenizer.ggml.pre",
                "tokenizer.ggml.tokens",
                "tokenizer.ggml.scores",
                "tokenizer.ggml.token_type"
            ]
        );
        let Some(Value::Array(Array::I32(types))) = md.get("tokenizer.ggml.token_type") else {
            panic!()
        };
        assert_eq!(&types[..5], &[2, 3, 3, 6, 6]);
    }

    /// Cross-check: llama.cpp's own ggml-vocab-llama-spm.gguf (the Llama 2 vocab as llama.cpp
    /// expects it) holds exactly our tokens, scores (bitwise) and token types.
    #[test]
    fn llama2_matches_llama_cpp_vocab_gguf() {
        let models = crate::tokenizer::llama_cpp_vocabs();
        let path = llama2_path().expect("the Llama 2 tokenizer.model (../shared/fixtures)");
        let f = crate::gguf::GgufFile::open(&models.join("ggml-vocab-llama-spm.gguf")).unwrap();
        let want = f.metadata();
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(&path, dir.path().join("tokenizer.model")).unwrap();
        let mut md = Metadata::new();
        set_vocab_sentencepiece(dir.path(), Some(32000), &mut md).unwrap();
        for key in [
            "tokenizer.ggml.model",
            "tokenizer.ggml.pre",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.token_type",
        ] {
            assert_eq!(md.get(key), want.get(key), "{key}");
        }
        let (Some(Value::Array(Array::F32(a))), Some(Value::Array(Array::F32(b)))) = (
            md.get("tokenizer.ggml.scores"),
            want.get("tokenizer.ggml.scores"),
        ) else {
            panic!("scores are not F32 arrays");
        };
        assert_eq!(a.len(), b.len());
        let differ = a
            .iter()
            .zip(b)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        assert_eq!(differ, 0, "scores differ bitwise at {differ} ids");
        eprintln!("llama-spm: 32000 tokens, scores and types equal to ggml-vocab-llama-spm.gguf");
    }
}

/// added_tokens.json (token -> id), as convert's SentencePiece vocabularies read it: each id in
/// range becomes that token, score -1000, USER_DEFINED; an id out of range is a warning.
fn added_tokens_json(
    dir: &Path,
    vocab_size: usize,
    tokens: &mut [String],
    scores: &mut [f32],
    types: &mut [i32],
    warnings: &mut Vec<String>,
) -> Result<()> {
    let added_path = dir.join("added_tokens.json");
    if added_path.is_file() {
        let json = read_json(&added_path)?;
        let obj = json.as_object().ok_or_else(|| {
            anyhow!(
                "{}: expected a JSON object of token -> id",
                added_path.display()
            )
        })?;
        for (key, id) in obj {
            let id = id.as_u64().ok_or_else(|| {
                anyhow!(
                    "{}: id of {key:?} is not a non-negative integer",
                    added_path.display()
                )
            })? as usize;
            if id >= vocab_size {
                warnings.push(format!(
                    "ignore token {id}: id is out of range, max={}",
                    vocab_size - 1
                ));
                continue;
            }
            tokens[id] = key.clone();
            scores[id] = -1000.0;
            types[id] = token_type::USER_DEFINED;
        }
    }
    Ok(())
}

/// The keys both SentencePiece recipes write, in `_set_vocab_sentencepiece`'s order:
/// tokenizer.ggml.{model,pre,tokens,scores,token_type}, then the SpecialVocab keys.
fn write_vocab(dir: &Path, v: SpmVocab, md: &mut Metadata) -> Result<SpmWritten> {
    let n = v.tokens.len();
    md.set_str("tokenizer.ggml.model", "llama");
    md.set_str("tokenizer.ggml.pre", "default");
    super::set_array(md, "tokenizer.ggml.tokens", Array::Str(v.tokens));
    super::set_array(md, "tokenizer.ggml.scores", Array::F32(v.scores));
    super::set_array(md, "tokenizer.ggml.token_type", Array::I32(v.types));
    let mut warnings = v.warnings;
    let sv = SpecialVocab::load(dir, false, None, Some(n))?;
    sv.add_to(md, &mut warnings);
    Ok(SpmWritten {
        n_tokens: n,
        path: dir.join("tokenizer.model"),
        model: v.model,
        warnings,
    })
}
