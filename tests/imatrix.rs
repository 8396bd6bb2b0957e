//! `kiln imatrix` on the Llama fixture: the file is llama-imatrix's GGUF format as ggml's own
//! GGUF reader and llama.cpp's quantizer read it, every weight llama.cpp multiplies by has its
//! entry with the tokens processed as its count, the first layer's sums agree with a direct
//! computation from the model's weights, and bad text is refused without output.

use crate::common::fixtures::{convert, llama_checkpoint};
use kiln::gguf::GgufFile;
use kiln::plan::FileType;
use kiln::runner::imatrix::{self, ImatrixOptions};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const N_CTX: u32 = 128;
const CHUNKS: usize = 5;

fn tmp() -> PathBuf {
    crate::common::module_dir("imatrix")
}

/// The Llama fixture at f32, once.
fn model() -> &'static Path {
    static M: OnceLock<PathBuf> = OnceLock::new();
    M.get_or_init(|| {
        let d = tmp().join("llama-spm");
        llama_checkpoint(&d);
        let out = tmp().join("llama-F32.gguf");
        convert(&d, FileType::F32, &out);
        out
    })
}

fn text() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/eval/text.txt")
}

fn opts() -> ImatrixOptions {
    ImatrixOptions {
        n_ctx: N_CTX,
        max_chunks: Some(CHUNKS),
        threads: 2,
        process_output: false,
    }
}

/// `kiln imatrix` run once through the command line: (the file, stderr).
fn computed() -> &'static (PathBuf, String) {
    static F: OnceLock<(PathBuf, String)> = OnceLock::new();
    F.get_or_init(|| {
        let out = tmp().join("fixture-imatrix.gguf");
        let _ = std::fs::remove_file(&out);
        let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("imatrix")
            .arg(model())
            .arg("--text")
            .arg(text())
            .args(["-c", &N_CTX.to_string(), "--chunks", &CHUNKS.to_string()])
            .args(["--threads", "2", "-o"])
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "kiln imatrix failed: {err}");
        (out, err)
    })
}

/// The matrices llama.cpp multiplies activations by in the Llama graph: every 2-D weight of a
/// block (token_embd is a lookup; output.weight is left out by default, as llama-imatrix does).
fn block_matrices(model: &Path) -> BTreeSet<(String, u64)> {
    GgufFile::open(model)
        .unwrap()
        .tensors()
        .iter()
        .filter(|t| t.name.starts_with("blk.") && t.dims.len() == 2)
        .map(|t| (t.name.clone(), t.dims[0]))
        .collect()
}

#[test]
fn the_file_is_llama_imatrix_format_with_every_matrix_and_its_token_count() {
    let (file, stderr) = computed();
    assert!(
        stderr.contains(&format!("chunks {CHUNKS}/{CHUNKS}")),
        "{stderr}"
    );
    assert!(stderr.contains("ppl"), "{stderr}");
    let g = kiln::llama::raw::read_imatrix_with_ggml(file).unwrap();
    assert_eq!(g.general_type.as_deref(), Some("imatrix"));
    // as llama-imatrix's files store them: a dense weight's sums and count are 1-D (ggml drops
    // the trailing 1 of [n, 1] and [1, 1])
    for t in GgufFile::open(file).unwrap().tensors() {
        let n = if t.name.ends_with(".counts") {
            1
        } else {
            t.dims[0]
        };
        assert_eq!(t.dims, vec![n], "{}", t.name);
    }
    assert_eq!(g.datasets, vec![text().display().to_string()]);
    assert_eq!(g.chunk_count, Some(CHUNKS as u32));
    assert_eq!(g.chunk_size, Some(N_CTX));
    let expected = block_matrices(model());
    let got: BTreeSet<(String, u64)> = g
        .entries
        .iter()
        .map(|(n, e)| (n.clone(), e.ne[0] as u64))
        .collect();
    assert_eq!(got, expected);
    let tokens = (CHUNKS * N_CTX as usize) as f32;
    for (name, e) in &g.entries {
        assert_eq!(e.ne[1], 1, "{name}: one matrix");
        assert_eq!(e.counts, vec![tokens], "{name}: count = tokens processed");
        assert!(e.sums.iter().all(|v| v.is_finite() && *v >= 0.0), "{name}");
        assert!(e.sums.iter().any(|v| *v > 0.0), "{name}: all zero");
    }
    // kiln's own reader: sums / count.
    let k = kiln::imatrix::load(file).unwrap();
    assert_eq!(k.len(), g.entries.len());
    for (name, e) in &g.entries {
        let want: Vec<f32> = e.sums.iter().map(|s| s / e.counts[0]).collect();
        assert_eq!(k[name], want, "{name}");
    }
}

#[test]
fn llama_cpp_quantizes_with_it_and_kiln_matches() {
    let (file, _) = computed();
    let weights: Vec<(String, Vec<f32>)> = kiln::imatrix::load(file).unwrap().into_iter().collect();
    let n_weights = weights.len();
    // IQ2_XXS (llama ftype 19) refuses to run without importance data for every matrix it
    // quantizes at that type.
    const IQ2_XXS: u32 = 19;
    let without = tmp().join("iq2xxs-none.gguf");
    assert!(kiln::llama::reference_quantize(
        model(),
        &without,
        IQ2_XXS,
        &kiln::llama::ReferenceOptions::default()
    )
    .is_err());
    let with = tmp().join("iq2xxs-imatrix.gguf");
    kiln::llama::reference_quantize(
        model(),
        &with,
        IQ2_XXS,
        &kiln::llama::ReferenceOptions {
            imatrix: Some(weights.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    // kiln quantize --imatrix FILE gives llama.cpp's bytes for Q4_K_M.
    let theirs = tmp().join("q4km-llama.gguf");
    kiln::llama::reference_quantize(
        model(),
        &theirs,
        FileType::Q4_K_M.id(),
        &kiln::llama::ReferenceOptions {
            imatrix: Some(weights),
            ..Default::default()
        },
    )
    .unwrap();
    let ours = tmp().join("q4km-kiln.gguf");
    let mut o = kiln::quantize::Options::new(FileType::Q4_K_M);
    o.output = Some(ours.clone());
    o.force = true;
    o.imatrix = Some(file.clone());
    let p = kiln::quantize::prepare(model(), &o).unwrap();
    kiln::quantize::execute(&p, true, false).unwrap();
    let (a, b) = (
        GgufFile::open(&ours).unwrap(),
        GgufFile::open(&theirs).unwrap(),
    );
    // what llama-quantize records of the file it used: kiln's own chunk count and entries
    let md = a.metadata();
    assert_eq!(
        md.get("quantize.imatrix.chunks_count"),
        Some(&kiln::gguf::Value::U32(CHUNKS as u32))
    );
    assert_eq!(
        md.get("quantize.imatrix.entries_count"),
        Some(&kiln::gguf::Value::U32(n_weights as u32))
    );
    assert_eq!(
        md.get("quantize.imatrix.file").and_then(|v| v.as_str()),
        Some(file.to_string_lossy().as_ref())
    );
    assert_eq!(a.tensors().len(), b.tensors().len());
    for t in b.tensors() {
        let u = a.find(&t.name).unwrap();
        assert_eq!(u.ty, t.ty, "{}", t.name);
        assert!(a.data(u) == b.data(t), "{}: bytes differ", t.name);
    }
}

/// f32 values of a tensor of an f32 GGUF.
fn f32_tensor(g: &GgufFile, name: &str) -> Vec<f32> {
    let t = g.find(name).unwrap();
    g.data(t)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn first_layer_sums_are_those_of_the_rms_normed_embeddings() {
    let (file, _) = computed();
    let imat = kiln::llama::raw::read_imatrix_with_ggml(file).unwrap();
    let g = GgufFile::open(model()).unwrap();
    let embd = f32_tensor(&g, "token_embd.weight");
    let norm = f32_tensor(&g, "blk.0.attn_norm.weight");
    let n = norm.len();
    let eps = g
        .metadata()
        .get("llama.attention.layer_norm_rms_epsilon")
        .and_then(|v| v.as_f64())
        .unwrap();
    // The tokens llama.cpp saw: the text (one trailing newline dropped, as -f reads it) with
    // BOS, cut into chunks whose first token is BOS.
    let text = imatrix::read_text(&text()).unwrap();
    let m = kiln::llama::load(model()).unwrap();
    let tokens = kiln::llama::tokenize(&m, &text, true);
    let bos = m.vocab().bos().0 as u32;
    assert_eq!(tokens[0], bos);
    let mut want = vec![0f64; n];
    for c in 0..CHUNKS {
        for p in 0..N_CTX as usize {
            let tok = if p == 0 {
                bos
            } else {
                tokens[c * N_CTX as usize + p]
            } as usize;
            let x = &embd[tok * n..(tok + 1) * n];
            let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / n as f64;
            let s = 1.0 / (ms + eps).sqrt();
            for i in 0..n {
                let y = x[i] as f64 * s * norm[i] as f64;
                want[i] += y * y;
            }
        }
    }
    let q = &imat.entries["blk.0.attn_q.weight"].sums;
    for i in 0..n {
        let rel = (q[i] as f64 - want[i]).abs() / want[i];
        assert!(rel < 1e-4, "column {i}: {} vs {}", q[i], want[i]);
    }
    // attn_k and attn_v take the same input, summed in the same order.
    assert_eq!(&imat.entries["blk.0.attn_k.weight"].sums, q);
    assert_eq!(&imat.entries["blk.0.attn_v.weight"].sums, q);
    // A later layer's input is not the embeddings' (the check above can fail).
    assert_ne!(&imat.entries["blk.1.attn_q.weight"].sums, q);
}

#[test]
fn bad_text_is_one_clear_error_and_no_file() {
    let d = tmp().join("bad");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let cases: [(&str, &[u8], &str); 4] = [
        ("empty", b"", "empty"),
        ("newline", b"\n", "empty"),
        (
            "short",
            b"A few words, far fewer than one chunk.",
            "shorter than one chunk",
        ),
        ("latin1", b"caf\xe9 au lait, encore un caf\xe9", "not UTF-8"),
    ];
    for (name, bytes, says) in cases {
        let t = d.join(format!("{name}.txt"));
        std::fs::write(&t, bytes).unwrap();
        let out = d.join(format!("{name}.gguf"));
        let e = imatrix::run(model(), &t, &out, &opts(), &mut |_| {})
            .err()
            .unwrap_or_else(|| panic!("{name}: accepted"));
        let e = format!("{e:#}");
        assert!(
            e.contains(says) && e.contains(&*t.to_string_lossy()),
            "{name}: {e}"
        );
        assert!(!out.exists(), "{name}: output written");
    }
    // The command line: exit status 1, one line on stderr, nothing in the folder but the texts.
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("imatrix")
        .arg(model())
        .arg("--text")
        .arg(d.join("latin1.txt"))
        .arg("-o")
        .arg(d.join("cli.gguf"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("kiln: error:") && err.contains("not UTF-8"),
        "{err}"
    );
    let left: Vec<String> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".txt"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The hidden temporary folders `kiln imatrix` and `--calibrate` convert a checkpoint into.
fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".kiln-"))
        .collect()
}

/// `kiln imatrix CHECKPOINT`: the checkpoint (BF16) is converted to a temporary BF16 GGUF
/// beside the output and removed; the matrix is byte for byte the one computed on the same
/// conversion done by hand. On an error (a text shorter than a chunk, found only after the
/// conversion) the temporary file goes too.
#[test]
fn imatrix_of_a_checkpoint_equals_converting_first() {
    let d = tmp().join("checkpoint");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let ck = d.join("ck");
    llama_checkpoint(&ck);
    let run = |model: &Path, text: &Path, out: &Path| {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("imatrix")
            .arg(model)
            .arg("--text")
            .arg(text)
            .args(["-c", "128", "--chunks", "3", "--threads", "2", "-o"])
            .arg(out)
            .output()
            .unwrap()
    };
    let direct = d.join("direct.gguf");
    let o = run(&ck, &text(), &direct);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("temporary BF16 GGUF"), "{err}");
    assert!(temporaries(&d).is_empty(), "{:?}", temporaries(&d));

    let bf16 = d.join("by-hand-BF16.gguf");
    convert(&ck, FileType::BF16, &bf16);
    let by_hand = d.join("by-hand.gguf");
    let o = run(&bf16, &text(), &by_hand);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (a, b) = (
        std::fs::read(&direct).unwrap(),
        std::fs::read(&by_hand).unwrap(),
    );
    assert!(a == b, "the two importance matrices differ");
    // and they are real ones: every block matrix of the model
    let g = kiln::llama::raw::read_imatrix_with_ggml(&direct).unwrap();
    assert_eq!(g.entries.len(), block_matrices(&bf16).len());

    let short = d.join("short.txt");
    std::fs::write(&short, "Far fewer words than one chunk of 128 tokens.").unwrap();
    let out = d.join("short.gguf");
    let o = run(&ck, &short, &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("shorter than one chunk") && err.contains("short.txt"),
        "{err}"
    );
    assert!(!out.exists());
    assert!(temporaries(&d).is_empty(), "{:?}", temporaries(&d));
}
