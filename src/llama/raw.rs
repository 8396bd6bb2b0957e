//! The part of llama.cpp's C API that `llama-cpp-2` does not wrap, called directly through
//! `llama_cpp_sys_2` for `kiln bench` (which must make llama-bench's calls): a model loaded with
//! `n_gpu_layers`, a context with its own ggml threadpool, `llama_batch_ext` batches processed
//! with `llama_process`, ggml type names and row sizes, and the compiled-in backends and CPU.

use anyhow::{anyhow, bail, Result};
use llama_cpp_sys_2 as sys;
use std::ffi::{CStr, CString};
use std::path::Path;
use std::ptr::NonNull;

/// A ggml tensor type as the C API numbers it.
pub type GgmlTypeId = sys::ggml_type;
/// A token id as the C API has it.
pub type Token = sys::llama_token;

/// KV cache types llama-bench accepts for -ctk/-ctv.
pub const KV_CACHE_TYPES: [GgmlTypeId; 9] = [
    sys::GGML_TYPE_F32,
    sys::GGML_TYPE_F16,
    sys::GGML_TYPE_BF16,
    sys::GGML_TYPE_Q8_0,
    sys::GGML_TYPE_Q4_0,
    sys::GGML_TYPE_Q4_1,
    sys::GGML_TYPE_IQ4_NL,
    sys::GGML_TYPE_Q5_0,
    sys::GGML_TYPE_Q5_1,
];

/// ggml's name of a type ("f16", "q8_0").
pub fn type_name(t: GgmlTypeId) -> String {
    let p = unsafe { sys::ggml_type_name(t) };
    if p.is_null() {
        return format!("type#{t}");
    }
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// `ggml_is_quantized`.
pub fn is_quantized(t: GgmlTypeId) -> bool {
    unsafe { sys::ggml_is_quantized(t) }
}

/// `ggml_row_size(t, n)`: bytes of a row of `n` elements of type `t`.
pub fn row_size(t: GgmlTypeId, n: i64) -> usize {
    unsafe { sys::ggml_row_size(t, n) }
}

// ---- llama.cpp objects, freed on drop ----

/// A model loaded with `llama_model_load_from_file`.
pub struct Model(NonNull<sys::llama_model>);

impl Model {
    /// Loads `file` with `llama_model_default_params()` and `n_gpu_layers`.
    pub fn load(file: &Path, n_gpu_layers: u32) -> Result<Model> {
        let c = path_cstring(file)?;
        let mut mp = unsafe { sys::llama_model_default_params() };
        mp.n_gpu_layers = n_gpu_layers.min(i32::MAX as u32) as i32;
        super::clear_errors();
        let p = unsafe { sys::llama_model_load_from_file(c.as_ptr(), mp) };
        NonNull::new(p)
            .map(Model)
            .ok_or_else(|| super::refused(file))
    }

    /// `llama_model_size`: bytes of the weight tensors.
    pub fn size(&self) -> u64 {
        unsafe { sys::llama_model_size(self.ptr()) }
    }

    /// `llama_model_n_params`.
    pub fn n_params(&self) -> u64 {
        unsafe { sys::llama_model_n_params(self.ptr()) }
    }

    /// `llama_model_n_layer`.
    pub fn n_layer(&self) -> i32 {
        unsafe { sys::llama_model_n_layer(self.ptr()) }
    }

    /// `llama_model_desc`: llama-bench's `model_type`, "gemma3 270M Q4_K - Medium" (the
    /// architecture, the size class and the file type).
    pub fn desc(&self) -> String {
        let mut buf = vec![0u8; 128];
        loop {
            let n =
                unsafe { sys::llama_model_desc(self.ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                return String::new();
            }
            let n = n as usize;
            if n < buf.len() {
                return String::from_utf8_lossy(&buf[..n]).into_owned();
            }
            buf.resize(n + 1, 0);
        }
    }

    /// `llama_model_n_embd`.
    pub fn n_embd(&self) -> i32 {
        unsafe { sys::llama_model_n_embd(self.ptr()) }
    }

    fn ptr(&self) -> *mut sys::llama_model {
        self.0.as_ptr()
    }

    fn vocab_ptr(&self) -> *const sys::llama_vocab {
        unsafe { sys::llama_model_get_vocab(self.ptr()) }
    }

    /// `llama_vocab_n_tokens`.
    pub fn n_vocab(&self) -> i32 {
        unsafe { sys::llama_vocab_n_tokens(self.vocab_ptr()) }
    }

    /// `llama_tokenize` of `text` (`add_special`: BOS/EOS as the vocabulary asks; special
    /// tokens in the text are not parsed).
    pub fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<Token>> {
        let len = i32::try_from(text.len()).map_err(|_| anyhow!("text too long to tokenize"))?;
        let mut out: Vec<Token> = vec![0; text.len() + 2];
        let mut n = unsafe {
            sys::llama_tokenize(
                self.vocab_ptr(),
                text.as_ptr().cast(),
                len,
                out.as_mut_ptr(),
                out.len() as i32,
                add_special,
                false,
            )
        };
        if n < 0 {
            out.resize((-n) as usize, 0);
            n = unsafe {
                sys::llama_tokenize(
                    self.vocab_ptr(),
                    text.as_ptr().cast(),
                    len,
                    out.as_mut_ptr(),
                    out.len() as i32,
                    add_special,
                    false,
                )
            };
        }
        if n < 0 {
            bail!("llama_tokenize failed ({n})");
        }
        out.truncate(n as usize);
        Ok(out)
    }

    /// A metadata value as llama.cpp prints it, None when absent.
    pub fn meta(&self, key: &str) -> Option<String> {
        let k = CString::new(key).ok()?;
        let mut buf = vec![0u8; 256];
        loop {
            let n = unsafe {
                sys::llama_model_meta_val_str(
                    self.ptr(),
                    k.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n < 0 {
                return None;
            }
            let n = n as usize;
            if n < buf.len() {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            buf.resize(n + 1, 0);
        }
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        unsafe { sys::llama_model_free(self.0.as_ptr()) }
    }
}

#[cfg(unix)]
fn path_cstring(p: &Path) -> Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| anyhow!("{}: path contains a NUL byte", p.display()))
}

#[cfg(not(unix))]
fn path_cstring(p: &Path) -> Result<CString> {
    let s = p
        .to_str()
        .ok_or_else(|| anyhow!("{}: path is not UTF-8", p.display()))?;
    CString::new(s).map_err(|_| anyhow!("{}: path contains a NUL byte", p.display()))
}

/// The settings of a benchmark context (the rest is `llama_context_default_params()`).
pub struct CtxParams {
    pub n_ctx: u32,
    pub n_batch: u32,
    pub n_ubatch: u32,
    /// The type of both the K and the V cache.
    pub type_kv: GgmlTypeId,
    pub flash_attn: bool,
    pub n_threads: u32,
    /// Sequences the context holds (`n_seq_max`; 1 for llama-bench). Each gets its own
    /// `n_ctx / n_seq_max` cells: kiln leaves `kv_unified` off, as llama-batched-bench does by
    /// default.
    pub n_seq_max: u32,
    /// Attach a ggml threadpool of `n_threads` (llama-bench does; llama-batched-bench does not).
    pub threadpool: bool,
}

impl CtxParams {
    /// The C parameters as llama-bench sets them.
    fn to_c(&self) -> sys::llama_context_params {
        let mut cp = unsafe { sys::llama_context_default_params() };
        cp.n_ctx = self.n_ctx;
        cp.n_batch = self.n_batch;
        cp.n_ubatch = self.n_ubatch;
        cp.type_k = self.type_kv;
        cp.type_v = self.type_kv;
        cp.offload_kqv = true;
        cp.flash_attn_type = if self.flash_attn {
            sys::LLAMA_FLASH_ATTN_TYPE_ENABLED
        } else {
            sys::LLAMA_FLASH_ATTN_TYPE_DISABLED
        };
        cp.embeddings = false;
        cp.op_offload = true;
        cp.swa_full = false;
        cp.n_threads = self.n_threads as i32;
        cp.n_threads_batch = self.n_threads as i32;
        cp.n_seq_max = self.n_seq_max.max(1);
        cp.kv_unified = false;
        cp
    }
}

/// A context, with its own ggml threadpool attached when asked (dropped in that order: context
/// first).
pub struct Ctx<'m> {
    ctx: NonNull<sys::llama_context>,
    pool: Option<NonNull<sys::ggml_threadpool>>,
    type_k: sys::ggml_type,
    type_v: sys::ggml_type,
    /// The eval callback's observer (its user data), freed after the context.
    _observer: Option<Box<Box<dyn EvalObserver>>>,
    _model: std::marker::PhantomData<&'m Model>,
}

impl<'m> Ctx<'m> {
    /// `llama_init_from_model` with `p`, then (with `p.threadpool`) a threadpool of
    /// `p.n_threads` attached.
    pub fn new(model: &'m Model, p: &CtxParams) -> Result<Ctx<'m>> {
        let cp = p.to_c();
        let n_threads = p.n_threads;
        let ctx = NonNull::new(unsafe { sys::llama_init_from_model(model.ptr(), cp) })
            .ok_or_else(|| anyhow!("llama_init_from_model failed"))?;
        if !p.threadpool {
            return Ok(Ctx {
                ctx,
                pool: None,
                type_k: cp.type_k,
                type_v: cp.type_v,
                _observer: None,
                _model: std::marker::PhantomData,
            });
        }
        // llama-bench's threadpool: default parameters (polling level 50, normal priority, not
        // strict, no CPU mask), set here explicitly.
        let mut tpp = unsafe { sys::ggml_threadpool_params_default(n_threads as i32) };
        tpp.poll = 50;
        tpp.strict_cpu = false;
        tpp.prio = sys::GGML_SCHED_PRIO_NORMAL;
        tpp.cpumask.fill(false);
        let pool = match NonNull::new(unsafe { sys::ggml_threadpool_new(&mut tpp) }) {
            Some(p) => p,
            None => {
                unsafe { sys::llama_free(ctx.as_ptr()) };
                bail!("cannot create a threadpool of {n_threads} threads");
            }
        };
        unsafe { sys::llama_attach_threadpool(ctx.as_ptr(), pool.as_ptr(), std::ptr::null_mut()) };
        Ok(Ctx {
            ctx,
            pool: Some(pool),
            type_k: cp.type_k,
            type_v: cp.type_v,
            _observer: None,
            _model: std::marker::PhantomData,
        })
    }

    fn ptr(&self) -> *mut sys::llama_context {
        self.ctx.as_ptr()
    }

    fn memory(&self) -> sys::llama_memory_t {
        unsafe { sys::llama_get_memory(self.ptr()) }
    }

    /// The K cache's type.
    pub fn type_k(&self) -> GgmlTypeId {
        self.type_k
    }

    /// The V cache's type.
    pub fn type_v(&self) -> GgmlTypeId {
        self.type_v
    }

    /// `llama_n_ctx_seq`: the cells per sequence llama.cpp actually uses.
    pub fn n_ctx_seq(&self) -> u32 {
        unsafe { sys::llama_n_ctx_seq(self.ptr()) }
    }

    /// `llama_n_ctx`: the context's cells, all sequences together (llama-batched-bench's
    /// `n_kv_max`).
    pub fn n_ctx(&self) -> u32 {
        unsafe { sys::llama_n_ctx(self.ptr()) }
    }

    /// `llama_n_seq_max`.
    pub fn n_seq_max(&self) -> u32 {
        unsafe { sys::llama_n_seq_max(self.ptr()) }
    }

    /// `llama_memory_seq_cp(mem, src, dst, p0, p1)` (-1: to the end).
    pub fn seq_cp(&self, src: i32, dst: i32, p0: i32, p1: i32) {
        unsafe { sys::llama_memory_seq_cp(self.memory(), src, dst, p0, p1) }
    }

    /// `llama_n_ubatch`.
    pub fn n_ubatch(&self) -> u32 {
        unsafe { sys::llama_n_ubatch(self.ptr()) }
    }

    /// `llama_set_n_threads(ctx, n, n)`.
    pub fn set_n_threads(&self, n_threads: i32) {
        unsafe { sys::llama_set_n_threads(self.ptr(), n_threads, n_threads) };
    }

    /// `llama_synchronize`.
    pub fn synchronize(&self) {
        unsafe { sys::llama_synchronize(self.ptr()) };
    }

    /// `llama_memory_seq_pos_max` of sequence `seq` (-1 when it is empty).
    pub fn seq_pos_max(&self, seq: i32) -> i32 {
        unsafe { sys::llama_memory_seq_pos_max(self.memory(), seq) }
    }

    /// Runs this context's graphs on `other`'s threadpool (`llama_attach_threadpool`), pausing
    /// its own, so that two contexts used in turn (a target and its draft) do not keep two sets
    /// of polling threads competing for the cores.
    ///
    /// # Safety
    /// `other` must outlive every use of this context (drop this one first).
    pub unsafe fn share_threadpool_of(&self, other: &Ctx<'_>) {
        let Some(theirs) = other.pool else { return };
        unsafe {
            if let Some(ours) = self.pool {
                sys::ggml_threadpool_pause(ours.as_ptr());
            }
            sys::llama_attach_threadpool(self.ptr(), theirs.as_ptr(), std::ptr::null_mut());
        }
    }

    /// `llama_memory_seq_rm(mem, seq, p0, p1)`: forgets the cells of sequence `seq` at positions
    /// `p0 <= pos < p1` (`p1 < 0`: to the end). False when llama.cpp cannot (a recurrent
    /// model's partial removal).
    pub fn seq_rm(&self, seq: i32, p0: i32, p1: i32) -> bool {
        let m = self.memory();
        !m.is_null() && unsafe { sys::llama_memory_seq_rm(m, seq, p0, p1) }
    }

    /// The greedy choice after the `i`-th token of the last batch (which asked for its logits,
    /// `llama_get_logits_ith(ctx, i)`): the index of the largest logit, the first one on a tie
    /// ([`crate::llama::argmax`], what `kiln::llama::generate` picks).
    pub fn argmax_ith(&self, i: i32) -> Result<Token> {
        self.with_logits_ith(i, |l| super::argmax(l) as Token)
    }

    /// A copy of the logits of the `i`-th token of the last batch (`llama_get_logits_ith`).
    pub fn logits_ith(&self, i: i32) -> Result<Vec<f32>> {
        self.with_logits_ith(i, <[f32]>::to_vec)
    }

    /// `f` of the logits of the `i`-th token of the last batch, read in place.
    pub fn with_logits_ith<T>(&self, i: i32, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
        let n_vocab = self.vocab().0 as usize;
        let p = unsafe { sys::llama_get_logits_ith(self.ptr(), i) };
        if p.is_null() {
            bail!("llama.cpp has no logits for batch token {i}");
        }
        // Safety: llama.cpp's buffer of n_vocab floats for that token, valid until the next
        // decode on this context; read here and not kept.
        Ok(f(unsafe { std::slice::from_raw_parts(p, n_vocab) }))
    }

    /// `llama_vocab_get_add_eos`: whether tokenizing appends EOS.
    pub fn adds_eos(&self) -> bool {
        unsafe {
            let model = sys::llama_get_model(self.ptr());
            sys::llama_vocab_get_add_eos(sys::llama_model_get_vocab(model))
        }
    }

    /// `llama_memory_clear(mem, false)`, as llama-bench between runs.
    pub fn clear(&self) {
        let m = self.memory();
        if !m.is_null() {
            unsafe { sys::llama_memory_clear(m, false) }
        }
    }

    /// (n_vocab, BOS when the vocabulary adds one).
    pub fn vocab(&self) -> (i32, Option<sys::llama_token>) {
        unsafe {
            let model = sys::llama_get_model(self.ptr());
            let vocab = sys::llama_model_get_vocab(model);
            let n = sys::llama_vocab_n_tokens(vocab).max(1);
            let bos = sys::llama_vocab_get_add_bos(vocab).then(|| sys::llama_vocab_bos(vocab));
            (n, bos)
        }
    }

    /// `llama_process` of a decode batch; `what` names the batch in the error.
    pub fn process(&self, batch: &mut BatchExt, what: &str) -> Result<()> {
        let rc = unsafe {
            sys::llama_process(self.ptr(), sys::LLAMA_PROCESS_TYPE_DECODE, batch.0.as_ptr())
        };
        if rc != 0 {
            bail!("llama.cpp failed to decode a {what} (llama_process returned {rc})");
        }
        Ok(())
    }
}

impl Drop for Ctx<'_> {
    fn drop(&mut self) {
        unsafe {
            sys::llama_free(self.ctx.as_ptr());
            if let Some(pool) = self.pool {
                sys::ggml_threadpool_free(pool.as_ptr());
            }
        }
    }
}

/// A `llama_batch_ext` filled as `common_batch` fills it.
pub struct BatchExt(NonNull<sys::llama_batch_ext>);

impl BatchExt {
    /// `llama_batch_ext_init` for `ctx`.
    pub fn new(ctx: &Ctx) -> Result<BatchExt> {
        NonNull::new(unsafe { sys::llama_batch_ext_init(ctx.ptr()) })
            .map(BatchExt)
            .ok_or_else(|| anyhow!("llama_batch_ext_init failed"))
    }

    /// `llama_batch_ext_clear`.
    pub fn clear(&mut self) {
        unsafe { sys::llama_batch_ext_clear(self.0.as_ptr()) }
    }

    /// Adds `token` at `pos` of sequence 0, with its logits when `output`.
    pub fn add(&mut self, token: sys::llama_token, pos: i32, output: bool) -> Result<()> {
        self.add_seq(token, pos, 0, output)
    }

    /// Adds `token` at `pos` of sequence `seq`, with its logits when `output` (what
    /// `common_batch::get_sub_batch` does with one entry).
    pub fn add_seq(
        &mut self,
        token: sys::llama_token,
        pos: i32,
        seq: i32,
        output: bool,
    ) -> Result<()> {
        let b = self.0.as_ptr();
        let idx = unsafe { sys::llama_batch_ext_add_token(b, seq, token) };
        if idx < 0 {
            bail!("cannot add token {token} to a batch (error {idx})");
        }
        // common_batch passes 4 positions (M-RoPE sections); text tokens use the first.
        let p: [sys::llama_pos; 4] = [pos, 0, 0, 0];
        unsafe {
            sys::llama_batch_ext_set_pos(b, idx, p.as_ptr());
            if output {
                sys::llama_batch_ext_set_output_logits(b, idx, true);
            }
        }
        Ok(())
    }
}

impl Drop for BatchExt {
    fn drop(&mut self) {
        unsafe { sys::llama_batch_ext_free(self.0.as_ptr()) }
    }
}

// ---- the scheduler's eval callback (what llama-imatrix observes) ----

/// Which matrix multiplication a graph node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatMulOp {
    /// `GGML_OP_MUL_MAT`: a weight times the activations.
    Dense,
    /// `GGML_OP_MUL_MAT_ID`: a stack of expert weights, each token's input multiplied by the
    /// experts its router chose.
    Expert,
}

/// A matrix multiplication node, as the scheduler asks about it before computing it.
#[derive(Debug)]
pub struct MatMulAsk<'a> {
    pub op: MatMulOp,
    /// The weight's name, backend prefixes and suffixes removed (`CUDA0#blk.0.attn_k.weight#0`
    /// -> `blk.0.attn_k.weight`, as llama-imatrix's `filter_tensor_name`).
    pub weight: &'a str,
    /// The input's `ne[1]` (tokens, for a dense multiplication).
    pub rows: i64,
    /// Whether the input is f32.
    pub input_f32: bool,
}

/// A computed matrix multiplication's input (`src[1]`, f32), copied to host memory, with the
/// weight's shape and, for `MUL_MAT_ID`, the expert ids (`src[2]`).
pub struct MatMulInput {
    pub op: MatMulOp,
    pub weight: String,
    /// The weight's `ne` (for experts, `ne[2]` is the number of experts).
    pub weight_ne: [i64; 4],
    /// The input's `ne`.
    pub ne: [i64; 4],
    /// The input's strides, in f32 elements.
    stride: [usize; 4],
    data: Vec<f32>,
    ids_ne: [i64; 4],
    /// The ids' strides, in i32 elements.
    ids_stride: [usize; 4],
    ids: Vec<i32>,
}

impl MatMulInput {
    /// The input row at `(i1, i2, i3)`: `ne[0]` values.
    pub fn row(&self, i1: i64, i2: i64, i3: i64) -> &[f32] {
        let o = i1 as usize * self.stride[1]
            + i2 as usize * self.stride[2]
            + i3 as usize * self.stride[3];
        &self.data[o..o + self.ne[0] as usize]
    }

    /// `ggml_nrows` of the input.
    pub fn n_rows(&self) -> i64 {
        self.ne[1] * self.ne[2] * self.ne[3]
    }

    /// (experts chosen per token, tokens) of the ids; (0, 0) for a dense multiplication.
    pub fn ids_shape(&self) -> (i64, i64) {
        (self.ids_ne[0], self.ids_ne[1])
    }

    /// The `idx`-th expert chosen for token `token`.
    pub fn expert(&self, idx: i64, token: i64) -> i32 {
        self.ids[token as usize * self.ids_stride[1] + idx as usize * self.ids_stride[0]]
    }
}

/// What the eval callback reports to: asked about every matrix multiplication before it is
/// computed (`wants`), then given the input of each one it wanted (`observe`). Called from the
/// thread that decodes.
pub trait EvalObserver: Send {
    fn wants(&mut self, node: &MatMulAsk) -> bool;
    fn observe(&mut self, input: &MatMulInput);
}

/// The settings of a context whose graph computations are observed (the rest is
/// `llama_context_default_params()`, as llama.cpp's common code leaves it: f16 KV cache,
/// flash attention auto, no unified KV cache).
pub struct ObservedCtxParams {
    pub n_ctx: u32,
    pub n_batch: u32,
    pub n_ubatch: u32,
    pub n_seq_max: u32,
    pub n_threads: u32,
}

/// llama-imatrix's `filter_tensor_name`.
fn filter_tensor_name(name: &str) -> &str {
    match name.split_once('#') {
        Some((_, rest)) => rest.split_once('#').map_or(rest, |(w, _)| w),
        None => name,
    }
}

fn tensor_name(t: &sys::ggml_tensor) -> String {
    let bytes: Vec<u8> = t
        .name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A copy of tensor `t`'s bytes as `T`s (from the host or through the backend).
///
/// # Safety
/// `t` must be a computed tensor of the graph being evaluated, with elements of `T`'s size.
unsafe fn tensor_copy<T: Copy + Default>(t: &sys::ggml_tensor) -> Vec<T> {
    let n = unsafe { sys::ggml_nbytes(t) };
    let mut out = vec![T::default(); n.div_ceil(std::mem::size_of::<T>())];
    let host = t.buffer.is_null() || unsafe { sys::ggml_backend_buffer_is_host(t.buffer) };
    if host {
        unsafe {
            std::ptr::copy_nonoverlapping(t.data as *const u8, out.as_mut_ptr().cast::<u8>(), n)
        };
    } else {
        unsafe { sys::ggml_backend_tensor_get(t, out.as_mut_ptr().cast(), 0, n) };
    }
    out
}

/// The scheduler's eval callback (`ggml_backend_sched_eval_callback`).
unsafe extern "C" fn observe_node(
    t: *mut sys::ggml_tensor,
    ask: bool,
    user_data: *mut std::ffi::c_void,
) -> bool {
    let run = || -> bool {
        // Safety: the scheduler passes a live node and the user data set in
        // `Ctx::new_observed`, which outlives the context.
        let (t, obs) = unsafe { (&*t, &mut **(user_data as *mut Box<dyn EvalObserver>)) };
        let op = match t.op {
            sys::GGML_OP_MUL_MAT => MatMulOp::Dense,
            sys::GGML_OP_MUL_MAT_ID => MatMulOp::Expert,
            _ => return false,
        };
        let (src0, src1) = (t.src[0], t.src[1]);
        if src0.is_null() || src1.is_null() || (op == MatMulOp::Expert && t.src[2].is_null()) {
            return false;
        }
        let (src0, src1) = unsafe { (&*src0, &*src1) };
        let full = tensor_name(src0);
        let weight = filter_tensor_name(&full);
        let input_f32 = src1.type_ == sys::GGML_TYPE_F32;
        if ask {
            return obs.wants(&MatMulAsk {
                op,
                weight,
                rows: src1.ne[1],
                input_f32,
            });
        }
        if !input_f32 || src1.nb[0] != 4 {
            return true;
        }
        let (ids_ne, ids_stride, ids) = if op == MatMulOp::Expert {
            let ids = unsafe { &*t.src[2] };
            if ids.type_ != sys::GGML_TYPE_I32 {
                return true;
            }
            (ids.ne, ids.nb.map(|b| b / 4), unsafe {
                tensor_copy::<i32>(ids)
            })
        } else {
            ([0; 4], [0; 4], Vec::new())
        };
        obs.observe(&MatMulInput {
            op,
            weight: weight.to_string(),
            weight_ne: src0.ne,
            ne: src1.ne,
            stride: src1.nb.map(|b| b / 4),
            data: unsafe { tensor_copy::<f32>(src1) },
            ids_ne,
            ids_stride,
            ids,
        });
        true
    };
    // A panic must not cross into C; the observer sees no more nodes after one.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or(false)
}

impl<'m> Ctx<'m> {
    /// `llama_init_from_model` with `p` and llama.cpp's eval callback reporting every matrix
    /// multiplication to `observer` (what llama-imatrix sets as `cb_eval`).
    pub fn new_observed(
        model: &'m Model,
        p: &ObservedCtxParams,
        observer: Box<dyn EvalObserver>,
    ) -> Result<Ctx<'m>> {
        let mut observer = Box::new(observer);
        let mut cp = unsafe { sys::llama_context_default_params() };
        cp.n_ctx = p.n_ctx;
        cp.n_batch = p.n_batch;
        cp.n_ubatch = p.n_ubatch;
        cp.n_seq_max = p.n_seq_max.max(1);
        cp.n_threads = p.n_threads as i32;
        cp.n_threads_batch = p.n_threads as i32;
        cp.swa_full = false;
        cp.kv_unified = false;
        cp.cb_eval = Some(observe_node);
        cp.cb_eval_user_data = (&mut *observer as *mut Box<dyn EvalObserver>).cast();
        super::clear_errors();
        let ctx = NonNull::new(unsafe { sys::llama_init_from_model(model.ptr(), cp) }).ok_or_else(
            || match super::logged_errors() {
                Some(e) => anyhow!(
                    "llama.cpp cannot create a context of {} cells: {e}",
                    p.n_ctx
                ),
                None => anyhow!("llama.cpp cannot create a context of {} cells", p.n_ctx),
            },
        )?;
        Ok(Ctx {
            ctx,
            pool: None,
            type_k: cp.type_k,
            type_v: cp.type_v,
            _observer: Some(observer),
            _model: std::marker::PhantomData,
        })
    }
}

// ---- reading an importance matrix with ggml's own GGUF reader ----

/// An importance matrix as llama.cpp's loader (`common/imatrix-loader.cpp`, which
/// llama-quantize uses) sees a GGUF imatrix file, read with ggml's `gguf_*` functions.
#[derive(Clone, Debug, Default)]
pub struct GgmlImatrix {
    /// `general.type`.
    pub general_type: Option<String>,
    /// `imatrix.datasets`, when it is an array of strings.
    pub datasets: Vec<String>,
    /// `imatrix.chunk_count` and `imatrix.chunk_size` (u32), when present.
    pub chunk_count: Option<u32>,
    pub chunk_size: Option<u32>,
    /// Weight name -> its sums and counts.
    pub entries: std::collections::BTreeMap<String, GgmlImatrixEntry>,
}

/// One weight's `<name>.in_sum2` and `<name>.counts` as ggml read them.
#[derive(Clone, Debug, Default)]
pub struct GgmlImatrixEntry {
    pub sums: Vec<f32>,
    /// `in_sum2`'s ne.
    pub ne: [i64; 4],
    pub counts: Vec<f32>,
}

/// Reads `path` with `gguf_init_from_file` (tensor data loaded into a ggml context), pairing
/// `<name>.in_sum2` with `<name>.counts` as llama.cpp's imatrix loader does; an unpaired or
/// non-f32 tensor is an error, as there.
pub fn read_imatrix_with_ggml(path: &Path) -> Result<GgmlImatrix> {
    let c = path_cstring(path)?;
    let mut gctx: *mut sys::ggml_context = std::ptr::null_mut();
    let g = unsafe {
        sys::gguf_init_from_file(
            c.as_ptr(),
            sys::gguf_init_params {
                no_alloc: false,
                ctx: &mut gctx,
            },
        )
    };
    if g.is_null() {
        bail!("{}: ggml cannot read it as GGUF", path.display());
    }
    struct Guard(*mut sys::gguf_context, *mut sys::ggml_context);
    impl Drop for Guard {
        fn drop(&mut self) {
            unsafe {
                sys::gguf_free(self.0);
                if !self.1.is_null() {
                    sys::ggml_free(self.1);
                }
            }
        }
    }
    let _guard = Guard(g, gctx);
    let key = |k: &str| -> i64 {
        let k = CString::new(k).unwrap_or_default();
        unsafe { sys::gguf_find_key(g, k.as_ptr()) }
    };
    let cstr = |p: *const std::os::raw::c_char| -> String {
        if p.is_null() {
            String::new()
        } else {
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    let mut out = GgmlImatrix::default();
    unsafe {
        let k = key("general.type");
        if k >= 0 && sys::gguf_get_kv_type(g, k) == sys::GGUF_TYPE_STRING {
            out.general_type = Some(cstr(sys::gguf_get_val_str(g, k)));
        }
        let k = key("imatrix.datasets");
        if k >= 0
            && sys::gguf_get_kv_type(g, k) == sys::GGUF_TYPE_ARRAY
            && sys::gguf_get_arr_type(g, k) == sys::GGUF_TYPE_STRING
        {
            for i in 0..sys::gguf_get_arr_n(g, k) {
                out.datasets.push(cstr(sys::gguf_get_arr_str(g, k, i)));
            }
        }
        for (name, slot) in [
            ("imatrix.chunk_count", &mut out.chunk_count),
            ("imatrix.chunk_size", &mut out.chunk_size),
        ] {
            let k = key(name);
            if k >= 0 && sys::gguf_get_kv_type(g, k) == sys::GGUF_TYPE_UINT32 {
                *slot = Some(sys::gguf_get_val_u32(g, k));
            }
        }
    }
    let mut pairs: std::collections::BTreeMap<String, [Option<*mut sys::ggml_tensor>; 2]> =
        Default::default();
    let n = unsafe { sys::gguf_get_n_tensors(g) };
    for i in 0..n {
        let name = cstr(unsafe { sys::gguf_get_tensor_name(g, i) });
        let cname = CString::new(name.as_str()).unwrap_or_default();
        let t = unsafe { sys::ggml_get_tensor(gctx, cname.as_ptr()) };
        if t.is_null() {
            bail!("{}: ggml has no data for {name}", path.display());
        }
        if let Some(base) = name.strip_suffix(".in_sum2") {
            pairs.entry(base.to_string()).or_default()[0] = Some(t);
        } else if let Some(base) = name.strip_suffix(".counts") {
            pairs.entry(base.to_string()).or_default()[1] = Some(t);
        }
    }
    for (name, p) in pairs {
        let (Some(s), Some(c)) = (p[0], p[1]) else {
            bail!("{}: mismatched sums and counts for {name}", path.display());
        };
        let (s, c) = unsafe { (&*s, &*c) };
        if s.type_ != sys::GGML_TYPE_F32 || c.type_ != sys::GGML_TYPE_F32 {
            bail!("{}: sums and counts for {name} must be F32", path.display());
        }
        let read = |t: &sys::ggml_tensor| -> Vec<f32> {
            let n = unsafe { sys::ggml_nelements(t) } as usize;
            unsafe { std::slice::from_raw_parts(t.data as *const f32, n) }.to_vec()
        };
        out.entries.insert(
            name,
            GgmlImatrixEntry {
                sums: read(s),
                ne: s.ne,
                counts: read(c),
            },
        );
    }
    Ok(out)
}

// ---- what the report's footer names ----

/// The ggml backends compiled in, as llama-bench names them ("CPU" when there is no other).
pub fn backends() -> String {
    let mut names = Vec::new();
    let mut rpc = false;
    for i in 0..unsafe { sys::ggml_backend_reg_count() } {
        let reg = unsafe { sys::ggml_backend_reg_get(i) };
        if reg.is_null() {
            continue;
        }
        let p = unsafe { sys::ggml_backend_reg_name(reg) };
        if p.is_null() {
            continue;
        }
        let name = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        if name.starts_with("RPC") {
            rpc |= unsafe { sys::ggml_backend_reg_dev_count(reg) } > 0;
        } else if name != "CPU" {
            names.push(name);
        }
    }
    if rpc {
        names.push("RPC".into());
    }
    if names.is_empty() {
        "CPU".into()
    } else {
        names.join(",")
    }
}

/// The CPU as ggml describes it (llama-bench's `cpu_info`).
pub fn cpu_info() -> String {
    unsafe {
        let dev = sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU);
        if dev.is_null() {
            return "unknown CPU".into();
        }
        let p = sys::ggml_backend_dev_description(dev);
        if p.is_null() {
            return "unknown CPU".into();
        }
        CStr::from_ptr(p).to_string_lossy().trim().to_string()
    }
}

/// The features ggml's CPU backend was compiled with, as (name, value) pairs in ggml's order
/// (`("AVX2", "1")`, `("SVE_CNT", "16")`, `("OPENMP", "1")`, `("REPACK", "1")`): what the CPU
/// backend registry's `ggml_backend_get_features` returns, which `llama_print_system_info` and
/// `ggml_backend_load_best` read. They say which kernels llama.cpp's matmuls use (GGML_NATIVE
/// builds for the build machine's CPU). Falls back to the "CPU : ..." part of
/// [`system_info`] when the registry does not answer.
pub fn cpu_features() -> Vec<(String, String)> {
    let from_registry = unsafe {
        let dev = sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU);
        let reg = if dev.is_null() {
            std::ptr::null_mut()
        } else {
            sys::ggml_backend_dev_backend_reg(dev)
        };
        let f = if reg.is_null() {
            std::ptr::null_mut()
        } else {
            sys::ggml_backend_reg_get_proc_address(reg, c"ggml_backend_get_features".as_ptr())
        };
        if f.is_null() {
            None
        } else {
            // Safety: the registry returns this name's function, of ggml's declared type.
            let get: unsafe extern "C" fn(
                sys::ggml_backend_reg_t,
            ) -> *mut sys::ggml_backend_feature = std::mem::transmute(f);
            let mut out = Vec::new();
            let mut p = get(reg);
            // a NULL-terminated array of {name, value}
            while !p.is_null() && !(*p).name.is_null() {
                let name = CStr::from_ptr((*p).name).to_string_lossy().into_owned();
                let value = if (*p).value.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr((*p).value).to_string_lossy().into_owned()
                };
                out.push((name, value));
                p = p.add(1);
            }
            Some(out)
        }
    };
    from_registry.unwrap_or_else(|| parse_system_info(&system_info(), "CPU"))
}

/// `llama_print_system_info()`: "CPU : SSE3 = 1 | AVX2 = 1 | ... | " (each backend that has
/// features).
pub fn system_info() -> String {
    let p = unsafe { sys::llama_print_system_info() };
    if p.is_null() {
        return String::new();
    }
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The (name, value) pairs of `backend`'s part of [`system_info`]'s text.
pub fn parse_system_info(text: &str, backend: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for part in text.split('|') {
        let part = part.trim();
        // "CPU : SSE3 = 1" starts a backend's list
        let item = match part.split_once(" : ") {
            Some((b, rest)) => {
                current = b.trim().to_string();
                rest.trim()
            }
            None => part,
        };
        if current != backend || item.is_empty() {
            continue;
        }
        match item.split_once('=') {
            Some((n, v)) => out.push((n.trim().to_string(), v.trim().to_string())),
            None => out.push((item.to_string(), String::new())),
        }
    }
    out
}

/// [`cpu_features`] as one line: the names separated by spaces, with `=value` where the value
/// is not "1" ("SSE3 SSSE3 AVX AVX2 F16C FMA BMI2 OPENMP REPACK", "SVE_CNT=16").
pub fn cpu_features_line() -> String {
    cpu_features()
        .iter()
        .map(|(n, v)| {
            if v == "1" || v.is_empty() {
                n.clone()
            } else {
                format!("{n}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
