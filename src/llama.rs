//! llama.cpp itself, through `llama-cpp-2`: loading a GGUF, logits, greedy generation,
//! tokenization, and llama-quantize's `llama_model_quantize` (the reference for files).

use anyhow::{anyhow, bail, Context, Result};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_sys_2 as sys;
use std::cell::{Cell, RefCell};
use std::ffi::{CStr, CString};
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::OnceLock;

pub mod raw;

/// The process-wide llama.cpp backend (it may be initialized once). llama.cpp's log goes to
/// [`log_callback`]: shown on stderr only with KILN_LLAMA_LOG set, and its errors kept so that
/// a refused file gets llama.cpp's reason in kiln's message.
pub fn backend() -> &'static LlamaBackend {
    static B: OnceLock<LlamaBackend> = OnceLock::new();
    B.get_or_init(|| {
        let b = LlamaBackend::init().expect("llama.cpp backend initializes once");
        // Safety: the callback is a plain function that never unwinds.
        unsafe { sys::llama_log_set(Some(log_callback), std::ptr::null_mut()) };
        b
    })
}

thread_local! {
    /// llama.cpp's error lines logged on this thread since [`clear_errors`].
    static ERRORS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    static LAST_LEVEL: Cell<sys::ggml_log_level> = const { Cell::new(0) };
}

unsafe extern "C" fn log_callback(
    level: sys::ggml_log_level,
    text: *const std::os::raw::c_char,
    _user: *mut std::os::raw::c_void,
) {
    if text.is_null() {
        return;
    }
    // Safety: llama.cpp passes a NUL-terminated string valid for the call.
    let s = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    static SHOW: OnceLock<bool> = OnceLock::new();
    if *SHOW.get_or_init(|| std::env::var_os("KILN_LLAMA_LOG").is_some()) {
        eprint!("{s}");
    }
    let level = if level == sys::GGML_LOG_LEVEL_CONT {
        LAST_LEVEL.with(Cell::get)
    } else {
        LAST_LEVEL.with(|l| l.set(level));
        level
    };
    if level != sys::GGML_LOG_LEVEL_ERROR {
        return;
    }
    let _ = ERRORS.try_with(|e| {
        if let Ok(mut e) = e.try_borrow_mut() {
            if e.len() < 64 {
                e.push(s.trim_end().to_string());
            }
        }
    });
}

/// Forgets llama.cpp's errors logged so far on this thread.
pub fn clear_errors() {
    ERRORS.with(|e| e.borrow_mut().clear());
}

/// llama.cpp's errors logged on this thread since [`clear_errors`], as one line: the most
/// specific first ("error loading model: ..." rather than "failed to load model").
pub fn logged_errors() -> Option<String> {
    let lines = ERRORS.with(|e| std::mem::take(&mut *e.borrow_mut()));
    let text: Vec<String> = lines
        .iter()
        // "llama_model_load: error loading model: ..." -> "error loading model: ..."
        .map(|l| match l.split_once(": ") {
            Some((f, rest)) if !f.contains(' ') => rest.to_string(),
            _ => l.clone(),
        })
        .filter(|l| !l.is_empty())
        .collect();
    // llama.cpp ends with a generic line; keep it only when it is all there is.
    let specific: Vec<String> = text
        .iter()
        .filter(|l| !l.starts_with("failed to load model"))
        .cloned()
        .collect();
    let text = if specific.is_empty() { text } else { specific };
    if text.is_empty() {
        None
    } else {
        Some(text.join("; "))
    }
}

/// The error for a file llama.cpp did not load, with llama.cpp's logged reason.
pub fn refused(path: &Path) -> anyhow::Error {
    match logged_errors() {
        Some(why) => anyhow!("{}: llama.cpp cannot load it: {why}", path.display()),
        None => anyhow!(
            "{}: llama.cpp cannot load it (KILN_LLAMA_LOG=1 shows llama.cpp's log)",
            path.display()
        ),
    }
}

/// Loads a GGUF on the CPU.
pub fn load(path: &Path) -> Result<LlamaModel> {
    let b = backend();
    clear_errors();
    LlamaModel::load_from_file(b, path, &LlamaModelParams::default()).map_err(|_| refused(path))
}

/// Tokenizes as llama.cpp does (`add_special`: BOS/EOS as the vocabulary asks).
pub fn tokenize(model: &LlamaModel, text: &str, add_special: bool) -> Vec<u32> {
    model
        .vocab()
        .tokenize(text.as_bytes(), add_special, false)
        .into_iter()
        .map(|t| t.0 as u32)
        .collect()
}

fn context<'m>(
    model: &'m LlamaModel,
    n_ctx: u32,
    threads: i32,
) -> Result<llama_cpp_2::context::LlamaContext<'m>> {
    context_with(model, n_ctx, threads, false)
}

/// A context; `exact` keeps the KV cache in f32 and flash attention off, so that logits are
/// f32 arithmetic throughout (for comparisons with an independent implementation).
fn context_with<'m>(
    model: &'m LlamaModel,
    n_ctx: u32,
    threads: i32,
    exact: bool,
) -> Result<llama_cpp_2::context::LlamaContext<'m>> {
    let mut p = LlamaContextParams::default();
    if exact {
        use llama_cpp_2::context::params::KvCacheType;
        p = p
            .with_type_k(KvCacheType::F32)
            .with_type_v(KvCacheType::F32)
            .with_flash_attention_policy(sys::LLAMA_FLASH_ATTN_TYPE_DISABLED);
    }
    let p = p
        .with_n_ctx(NonZeroU32::new(n_ctx.max(16)))
        .with_n_batch(n_ctx.max(16))
        .with_n_ubatch(n_ctx.max(16))
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    model
        .new_context(backend(), p)
        .map_err(|e| anyhow!("llama.cpp context: {e}"))
}

fn threads() -> i32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as i32)
        .unwrap_or(2)
}

/// The logits at every position of `tokens`, in one batch, with an f32 KV cache and no flash
/// attention (f32 arithmetic throughout, for comparisons with an independent implementation).
pub fn logits(model: &LlamaModel, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
    logits_in(model, tokens, true)
}

/// As [`logits`], but in a context with llama.cpp's default settings (f16 KV cache, flash
/// attention as llama.cpp chooses): what llama-perplexity and `kiln eval` compute with.
pub fn logits_default_context(model: &LlamaModel, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
    logits_in(model, tokens, false)
}

fn logits_in(model: &LlamaModel, tokens: &[u32], exact: bool) -> Result<Vec<Vec<f32>>> {
    let mut ctx = context_with(model, tokens.len() as u32, threads(), exact)?;
    let mut batch = LlamaBatch::new(tokens.len(), 1);
    for (i, &t) in tokens.iter().enumerate() {
        batch.add(LlamaToken(t as i32), i as i32, &[0], true)?;
    }
    ctx.decode(&mut batch)
        .map_err(|e| anyhow!("llama.cpp decode: {e}"))?;
    Ok((0..tokens.len())
        .map(|i| ctx.get_logits_ith(i as i32).to_vec())
        .collect())
}

/// Greedy generation of `n` tokens after `prompt`.
pub fn generate(model: &LlamaModel, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        bail!("empty prompt");
    }
    let mut ctx = context(model, (prompt.len() + n) as u32, threads())?;
    let mut batch = LlamaBatch::new(prompt.len().max(1), 1);
    for (i, &t) in prompt.iter().enumerate() {
        batch.add(LlamaToken(t as i32), i as i32, &[0], i + 1 == prompt.len())?;
    }
    ctx.decode(&mut batch)
        .map_err(|e| anyhow!("llama.cpp decode: {e}"))?;
    let mut out = Vec::with_capacity(n);
    let mut last = batch.n_tokens() - 1;
    for step in 0..n {
        let l = ctx.get_logits_ith(last);
        let next = argmax(l) as u32;
        out.push(next);
        batch.clear();
        batch.add(
            LlamaToken(next as i32),
            (prompt.len() + step) as i32,
            &[0],
            true,
        )?;
        ctx.decode(&mut batch)
            .map_err(|e| anyhow!("llama.cpp decode: {e}"))?;
        last = 0;
    }
    Ok(out)
}

pub fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// llama-quantize's options, as `llama_model_quantize_params` takes them.
#[derive(Clone, Debug, Default)]
pub struct ReferenceOptions {
    pub threads: i32,
    pub allow_requantize: bool,
    pub pure: bool,
    pub leave_output_tensor: bool,
    pub output_tensor_type: Option<u32>,
    pub token_embedding_type: Option<u32>,
    /// Importance weights per tensor name.
    pub imatrix: Option<Vec<(String, Vec<f32>)>>,
    /// llama-quantize's `--include-weights` / `--exclude-weights` (applied to `imatrix` as its
    /// `prepare_imatrix` does: substring matches; no entry left means no importance matrix).
    pub include_weights: Vec<String>,
    pub exclude_weights: Vec<String>,
    /// `--tensor-type NAME=TYPE` arguments, parsed as llama-quantize's `parse_tensor_type`.
    pub tensor_types: Vec<String>,
    /// `--override-kv KEY=TYPE:VALUE` arguments, parsed as common's `string_parse_kv_override`.
    pub kv_overrides: Vec<String>,
    /// `--prune-layers` (llama-quantize sorts and deduplicates them).
    pub prune_layers: Vec<i32>,
}

/// llama-quantize's `parse_ggml_type`: ggml's own type names, case-insensitive.
fn ggml_type_by_name(name: &str) -> Result<sys::ggml_type> {
    for i in 0..sys::GGML_TYPE_COUNT {
        // Safety: ggml_type_name returns a static string or null for every id below COUNT.
        let p = unsafe { sys::ggml_type_name(i as _) };
        if p.is_null() {
            continue;
        }
        let n = unsafe { CStr::from_ptr(p) }.to_string_lossy();
        if n.eq_ignore_ascii_case(name) {
            return Ok(i as _);
        }
    }
    bail!("invalid ggml_type '{name}'")
}

/// `llama_model_kv_override` of one `KEY=TYPE:VALUE` (common's `string_parse_kv_override`).
fn kv_override(arg: &str) -> Result<sys::llama_model_kv_override> {
    let (key, rest) = arg
        .split_once('=')
        .filter(|(k, _)| k.len() < 128)
        .with_context(|| format!("malformed KV override '{arg}'"))?;
    // Safety: an all-zero llama_model_kv_override is a valid value (plain data).
    let mut o: sys::llama_model_kv_override = unsafe { std::mem::zeroed() };
    for (d, s) in o.key.iter_mut().zip(key.bytes()) {
        *d = s as _;
    }
    if let Some(v) = rest.strip_prefix("int:") {
        o.tag = sys::LLAMA_KV_OVERRIDE_TYPE_INT;
        o.__bindgen_anon_1.val_i64 = v.trim().parse().context("int override")?;
    } else if let Some(v) = rest.strip_prefix("float:") {
        o.tag = sys::LLAMA_KV_OVERRIDE_TYPE_FLOAT;
        o.__bindgen_anon_1.val_f64 = v.trim().parse().context("float override")?;
    } else if let Some(v) = rest.strip_prefix("bool:") {
        o.tag = sys::LLAMA_KV_OVERRIDE_TYPE_BOOL;
        o.__bindgen_anon_1.val_bool = match v {
            "true" => true,
            "false" => false,
            _ => bail!("invalid boolean value for KV override '{arg}'"),
        };
    } else if let Some(v) = rest.strip_prefix("str:") {
        o.tag = sys::LLAMA_KV_OVERRIDE_TYPE_STR;
        if v.len() > 127 {
            bail!("malformed KV override '{arg}', value cannot exceed 127 chars");
        }
        // Safety: writing the union's string member, which the tag now names.
        let dst = unsafe { &mut o.__bindgen_anon_1.val_str };
        for (d, s) in dst.iter_mut().zip(v.bytes()) {
            *d = s as _;
        }
    } else {
        bail!("invalid type for KV override '{arg}'");
    }
    Ok(o)
}

/// Runs llama.cpp's own quantizer (`llama_model_quantize`, what llama-quantize calls) from
/// `input` to `output` at llama ftype `ftype`.
pub fn reference_quantize(
    input: &Path,
    output: &Path,
    ftype: u32,
    o: &ReferenceOptions,
) -> Result<()> {
    backend();
    let cin = CString::new(input.to_str().context("input path is not UTF-8")?)?;
    let cout = CString::new(output.to_str().context("output path is not UTF-8")?)?;
    // quantize.cpp's prepare_imatrix: --exclude-weights, then --include-weights.
    let imatrix: Option<Vec<&(String, Vec<f32>)>> = o.imatrix.as_ref().map(|m| {
        m.iter()
            .filter(|(n, _)| !o.exclude_weights.iter().any(|x| n.contains(x.as_str())))
            .filter(|(n, _)| {
                o.include_weights.is_empty()
                    || o.include_weights.iter().any(|x| n.contains(x.as_str()))
            })
            .collect()
    });
    let imatrix = imatrix.filter(|m| !m.is_empty());
    let names: Vec<CString> = imatrix
        .iter()
        .flatten()
        .map(|(n, _)| CString::new(n.as_str()))
        .collect::<Result<_, _>>()?;
    let mut entries: Vec<sys::llama_model_imatrix_data> = imatrix
        .iter()
        .flatten()
        .zip(&names)
        .map(|((_, v), n)| sys::llama_model_imatrix_data {
            name: n.as_ptr(),
            data: v.as_ptr(),
            size: v.len(),
        })
        .collect();
    entries.push(sys::llama_model_imatrix_data {
        name: std::ptr::null(),
        data: std::ptr::null(),
        size: 0,
    });
    // --tensor-type: the name lower-cased, the type one of ggml's names.
    let mut patterns = Vec::new();
    let mut types = Vec::new();
    for a in &o.tensor_types {
        let (n, t) = a
            .split_once('=')
            .with_context(|| format!("malformed tensor type '{a}'"))?;
        patterns.push(CString::new(n.to_ascii_lowercase())?);
        types.push(ggml_type_by_name(t)?);
    }
    let mut tt: Vec<sys::llama_model_tensor_override> = patterns
        .iter()
        .zip(&types)
        .map(|(p, &t)| sys::llama_model_tensor_override {
            pattern: p.as_ptr(),
            type_: t,
        })
        .collect();
    tt.push(sys::llama_model_tensor_override {
        pattern: std::ptr::null(),
        type_: sys::GGML_TYPE_COUNT,
    });
    let mut kv: Vec<sys::llama_model_kv_override> = o
        .kv_overrides
        .iter()
        .map(|a| kv_override(a))
        .collect::<Result<_>>()?;
    // Safety: zeroed is a valid value; an empty key ends the list.
    kv.push(unsafe { std::mem::zeroed() });
    let mut prune = o.prune_layers.clone();
    prune.sort_unstable();
    prune.dedup();
    prune.push(-1);
    let rc = unsafe {
        let mut p = sys::llama_model_quantize_default_params();
        if !o.tensor_types.is_empty() {
            p.tt_overrides = tt.as_ptr();
        }
        if !o.kv_overrides.is_empty() {
            p.kv_overrides = kv.as_ptr();
        }
        if !o.prune_layers.is_empty() {
            p.prune_layers = prune.as_ptr();
        }
        p.ftype = ftype as _;
        p.nthread = o.threads;
        p.allow_requantize = o.allow_requantize;
        p.pure_ = o.pure;
        p.quantize_output_tensor = !o.leave_output_tensor;
        if let Some(t) = o.output_tensor_type {
            p.output_tensor_type = t as _;
        }
        if let Some(t) = o.token_embedding_type {
            p.token_embedding_type = t as _;
        }
        if imatrix.is_some() {
            p.imatrix = entries.as_ptr();
        }
        sys::llama_model_quantize(cin.as_ptr(), cout.as_ptr(), &p)
    };
    if rc != 0 {
        bail!("llama_model_quantize failed ({rc}) on {}", input.display());
    }
    Ok(())
}
