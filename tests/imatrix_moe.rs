//! `kiln imatrix` on a mixture of experts, and the budget's i-quant candidates, on the Qwen3 MoE
//! fixture (4 experts, 2 per token, every row a multiple of 256):
//!
//! - the per-expert sums and counts (llama-imatrix's `MUL_MAT_ID` collection: each token's input
//!   counted once for each expert it is routed to) equal those computed from the routing and
//!   expert inputs of the project's independent forward pass (`tests/common/reference.rs`);
//! - llama.cpp's quantizer (given the weights as llama-quantize's `load_imatrix` derives them
//!   from the file, read with ggml's own GGUF reader) and `kiln quantize --imatrix` write the
//!   same tensors with it, also where an expert was never routed to (weight 1 there) and from
//!   the legacy .dat format;
//! - a malformed MoE imatrix is one clear error;
//! - a budget mix at a low budget with that imatrix uses i-quants, fits, loads and generates in
//!   llama.cpp, and has a lower importance-weighted error (measured in the written file through
//!   ggml's dequantizer) than the plan the solver makes from the legacy and K-quant types alone.

use crate::common::fixtures::convert;
use crate::common::reference::{Options as RefOptions, ReferenceModel, Routed};
use kiln::budget::{self, MeasureOptions, Target};
use kiln::gguf::GgufFile;
use kiln::kernels::GgmlType;
use kiln::llama::raw::GgmlImatrix;
use kiln::plan::FileType;
use kiln::quantize;
use kiln::runner::imatrix::{self, ImatrixOptions, Stats};
use kiln_fixtures::checkpoint::{default_for, write_checkpoint, Arch, Vocab};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

const N_CTX: u32 = 128;
const CHUNKS: usize = 4;
const LAYERS: usize = 2;
const EXPERTS: usize = 4;
const TOP_K: usize = 2;

fn tmp() -> PathBuf {
    crate::common::module_dir("imatrix-moe")
}

fn text() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/eval/text.txt")
}

struct Fixture {
    /// The checkpoint (BF16).
    ck: PathBuf,
    /// Converted to f32.
    f32: PathBuf,
    /// `kiln imatrix` of the f32 file on the text.
    imatrix: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let d = tmp();
        let ck = d.join("ck");
        let _ = std::fs::remove_dir_all(&ck);
        let spec = default_for(Arch::Qwen3Moe, Vocab::TrainedBpe { size: 1024 });
        assert_eq!(
            (spec.layers, spec.experts, spec.experts_used),
            (LAYERS, EXPERTS, TOP_K)
        );
        write_checkpoint(&spec, &ck).unwrap();
        let f32 = d.join("qwen3moe-F32.gguf");
        convert(&ck, FileType::F32, &f32);
        let im = d.join("qwen3moe-imatrix.gguf");
        let o = ImatrixOptions {
            n_ctx: N_CTX,
            max_chunks: Some(CHUNKS),
            threads: 2,
            process_output: false,
        };
        imatrix::run(&f32, &text(), &im, &o, &mut |_| {}).unwrap();
        Fixture {
            ck,
            f32,
            imatrix: im,
        }
    })
}

/// The chunks llama-imatrix decodes: the text's tokens (BOS first when the vocabulary adds
/// it) cut into chunks of N_CTX, each chunk's first token replaced by BOS when it adds one.
fn chunks() -> Vec<Vec<u32>> {
    let m = kiln::llama::load(&fixture().f32).unwrap();
    let text = imatrix::read_text(&text()).unwrap();
    let tokens = kiln::llama::tokenize(&m, &text, true);
    let plain = kiln::llama::tokenize(&m, &text, false);
    let adds_bos = tokens.len() == plain.len() + 1;
    let n = N_CTX as usize;
    assert!(tokens.len() >= CHUNKS * n, "{} tokens", tokens.len());
    (0..CHUNKS)
        .map(|c| {
            let mut chunk = tokens[c * n..(c + 1) * n].to_vec();
            if adds_bos {
                chunk[0] = tokens[0];
            }
            chunk
        })
        .collect()
}

/// Router probabilities closer than this at the top-k boundary are a near-tie: llama.cpp (f32
/// with an f16 KV cache, its inputs within about 3e-4 of the reference's) may choose either
/// expert there.
const NEAR_TIE: f32 = 1e-3;

/// One layer's expected statistics, summed in f64 from the reference's routing.
#[derive(Default)]
struct Expected {
    /// Per expert: tokens routed to it.
    counts: Vec<u64>,
    /// Per expert: tokens whose last chosen expert (`.0`) or first one left out (`.1`) it is,
    /// at a near-tie.
    near_tie: Vec<(u64, u64)>,
    /// Per expert: sum of squares of its gate/up input (the MLP's normed input), per column.
    gate_up: Vec<Vec<f64>>,
    /// Per expert: sum of squares of its down-projection input, per column.
    down: Vec<Vec<f64>>,
    /// The router's input over every token (a dense multiplication).
    router: Vec<f64>,
    tokens: u64,
}

/// The reference forward pass over the chunks, its routing recorded: per layer, what
/// llama-imatrix must have summed; and the smallest gap, over every token and layer, between
/// the probabilities of the last expert chosen and the first one left out.
fn expected() -> (Vec<Expected>, f32) {
    let f = fixture();
    let model = ReferenceModel::load(&f.ck).unwrap();
    let rec: Arc<Mutex<Vec<Routed>>> = Arc::default();
    let o = RefOptions {
        routed: Some(rec.clone()),
        ..RefOptions::default()
    };
    for chunk in chunks() {
        model.logits_with(&chunk, &o).unwrap();
    }
    let records = std::mem::take(&mut *rec.lock().unwrap());
    assert_eq!(records.len(), CHUNKS * N_CTX as usize * LAYERS);
    let mut out: Vec<Expected> = (0..LAYERS).map(|_| Expected::default()).collect();
    let mut min_gap = f32::INFINITY;
    for r in &records {
        let e = &mut out[r.layer];
        let (n, w) = (r.input.len(), r.chosen[0].1.len());
        if e.counts.is_empty() {
            e.counts = vec![0; EXPERTS];
            e.near_tie = vec![(0, 0); EXPERTS];
            e.gate_up = vec![vec![0.0; n]; EXPERTS];
            e.down = vec![vec![0.0; w]; EXPERTS];
            e.router = vec![0.0; n];
        }
        let sq = |v: &f32| *v as f64 * *v as f64;
        for (a, v) in e.router.iter_mut().zip(&r.input) {
            *a += sq(v);
        }
        e.tokens += 1;
        assert_eq!(r.chosen.len(), TOP_K);
        for (ex, act) in &r.chosen {
            e.counts[*ex] += 1;
            for (a, v) in e.gate_up[*ex].iter_mut().zip(&r.input) {
                *a += sq(v);
            }
            for (a, v) in e.down[*ex].iter_mut().zip(act) {
                *a += sq(v);
            }
        }
        let mut order: Vec<usize> = (0..EXPERTS).collect();
        order.sort_by(|&a, &b| r.probs[b].total_cmp(&r.probs[a]).then(a.cmp(&b)));
        let (last, next) = (order[TOP_K - 1], order[TOP_K]);
        assert!(r.chosen.iter().any(|c| c.0 == last));
        let gap = r.probs[last] - r.probs[next];
        min_gap = min_gap.min(gap);
        if gap < NEAR_TIE {
            e.near_tie[last].0 += 1;
            e.near_tie[next].1 += 1;
        }
    }
    (out, min_gap)
}

/// `|got - want| / |want|` in the L2 norm.
fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let d: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).powi(2))
        .sum();
    let n: f64 = want.iter().map(|w| w * w).sum();
    (d / n).sqrt()
}

fn read(path: &Path) -> GgmlImatrix {
    kiln::llama::raw::read_imatrix_with_ggml(path).unwrap()
}

#[test]
fn expert_sums_and_counts_follow_the_reference_routing() {
    let f = fixture();
    let g = read(&f.imatrix);
    let (want, min_gap) = expected();
    let tokens = (CHUNKS * N_CTX as usize) as f32;
    // Relative L2 difference allowed between llama.cpp's f32 sums and the reference's f64 ones:
    // llama.cpp's f16 KV cache puts its layer inputs about 3e-4 from the reference's.
    const TOL: f64 = 1e-3;
    let mut worst = 0f64;
    // Once a near-tie went the other way in llama.cpp, that token's later layers differ from
    // the reference's: their sums are not compared.
    let mut flipped = false;
    let mut compared = 0;
    for (l, w) in want.iter().enumerate() {
        assert_eq!(w.tokens as f32, tokens);
        let gate = &g.entries[&format!("blk.{l}.ffn_gate_exps.weight")];
        let up = &g.entries[&format!("blk.{l}.ffn_up_exps.weight")];
        let down = &g.entries[&format!("blk.{l}.ffn_down_exps.weight")];
        let router = &g.entries[&format!("blk.{l}.ffn_gate_inp.weight")];
        for (name, e, width) in [
            ("gate", gate, w.gate_up[0].len()),
            ("up", up, w.gate_up[0].len()),
            ("down", down, w.down[0].len()),
        ] {
            // one row of sums and one count per expert
            assert_eq!(e.ne[..2], [width as i64, EXPERTS as i64], "blk.{l} {name}");
            assert_eq!(e.counts, gate.counts, "blk.{l} {name}");
        }
        // Each token counted once for each of the TOP_K experts it reached; per expert, the
        // reference's count, up to the near-ties that llama.cpp may have decided the other way.
        assert_eq!(gate.counts.iter().sum::<f32>(), tokens * TOP_K as f32);
        for ex in 0..EXPERTS {
            let (got, (lose, gain)) = (gate.counts[ex] as u64, w.near_tie[ex]);
            let lo = w.counts[ex] - lose;
            assert!(
                (lo..=w.counts[ex] + gain).contains(&got),
                "blk.{l} expert {ex}: {got} tokens, the reference routes {} ({lose} + {gain} near-ties)",
                w.counts[ex]
            );
            flipped |= got != w.counts[ex];
        }
        assert!(
            gate.counts.iter().all(|&c| c > 0.0),
            "blk.{l}: an expert got no token"
        );
        // the same input, summed in the same order
        assert_eq!(gate.sums, up.sums, "blk.{l}");
        // The router is a dense multiplication: every token once. Its input is the experts':
        // each token reaches TOP_K experts, so the experts' sums add up to TOP_K times the
        // router's.
        assert_eq!(router.counts, vec![tokens]);
        let n = w.router.len();
        for c in 0..n {
            let s: f64 = (0..EXPERTS).map(|ex| gate.sums[ex * n + c] as f64).sum();
            let want = TOP_K as f64 * router.sums[c] as f64;
            assert!(
                (s - want).abs() <= 1e-4 * want,
                "blk.{l} column {c}: {s} vs {want}"
            );
        }
        let r = rel_l2(&router.sums, &w.router);
        worst = worst.max(r);
        if flipped {
            continue;
        }
        compared += 1;
        assert!(r < TOL, "blk.{l} router sums: {r:.2e}");
        for ex in 0..EXPERTS {
            let k = w.gate_up[ex].len();
            let r = rel_l2(&gate.sums[ex * k..(ex + 1) * k], &w.gate_up[ex]);
            let k = w.down[ex].len();
            let rd = rel_l2(&down.sums[ex * k..(ex + 1) * k], &w.down[ex]);
            worst = worst.max(r).max(rd);
            assert!(r < TOL, "blk.{l} expert {ex} gate/up sums: {r:.2e}");
            assert!(rd < TOL, "blk.{l} expert {ex} down sums: {rd:.2e}");
        }
    }
    assert!(
        compared > 0,
        "llama.cpp routed layer 0 differently at a near-tie: nothing compared"
    );
    eprintln!(
        "MoE imatrix vs reference: worst relative L2 difference {worst:.2e} over {compared} layers, smallest routing gap {min_gap:.3e}"
    );
}

/// The weights llama-quantize's `load_imatrix` derives from a GGUF imatrix: per matrix, the
/// sums over the count rounded to an integer (`lround`), 1 where the count is 0.
fn llama_weights(g: &GgmlImatrix) -> Vec<(String, Vec<f32>)> {
    g.entries
        .iter()
        .map(|(name, e)| {
            let n_mat = e.counts.len();
            let ne0 = e.sums.len() / n_mat;
            let mut v = vec![0f32; e.sums.len()];
            for j in 0..n_mat {
                let count = e.counts[j].round() as i64 as f32;
                for i in 0..ne0 {
                    v[j * ne0 + i] = if count > 0.0 {
                        e.sums[j * ne0 + i] / count
                    } else {
                        1.0
                    };
                }
            }
            (name.clone(), v)
        })
        .collect()
}

/// (name, dims, type, bytes) of every tensor, in file order.
fn tensors(path: &Path) -> Vec<crate::common::Tensor> {
    crate::common::tensors(&GgufFile::open(path).unwrap())
}

fn assert_same_tensors(ours: &Path, theirs: &Path, what: &str) {
    let (a, b) = (tensors(ours), tensors(theirs));
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((&x.0, &x.1, &x.2), (&y.0, &y.1, &y.2), "{what}");
        assert!(x.3 == y.3, "{what}: bytes of {} ({})", x.0, x.2);
    }
}

fn kiln_quantize(imatrix: &Path, ftype: FileType, out: &Path) {
    let mut o = quantize::Options::new(ftype);
    o.output = Some(out.to_path_buf());
    o.force = true;
    o.imatrix = Some(imatrix.to_path_buf());
    let p = quantize::prepare(&fixture().f32, &o).unwrap();
    quantize::execute(&p, true, false).unwrap();
}

fn llama_quantize(weights: Vec<(String, Vec<f32>)>, ftype: FileType, out: &Path) {
    let ro = kiln::llama::ReferenceOptions {
        imatrix: Some(weights),
        ..Default::default()
    };
    kiln::llama::reference_quantize(&fixture().f32, out, ftype.id(), &ro).unwrap();
}

/// The computed matrix with expert 1 of layer 0 never routed to (its sums and count 0), as
/// llama-imatrix writes an expert that no calibration token reached.
fn partial_imatrix() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let g = read(&fixture().imatrix);
        let mut stats: HashMap<String, Stats> = g
            .entries
            .iter()
            .map(|(n, e)| {
                let s = Stats {
                    values: e.sums.clone(),
                    counts: e.counts.iter().map(|&c| c as i64).collect(),
                };
                (n.clone(), s)
            })
            .collect();
        for t in ["gate", "up", "down"] {
            let s = stats
                .get_mut(&format!("blk.0.ffn_{t}_exps.weight"))
                .unwrap();
            let n = s.values.len() / EXPERTS;
            s.values[n..2 * n].iter_mut().for_each(|v| *v = 0.0);
            s.counts[1] = 0;
        }
        let out = tmp().join("partial-imatrix.gguf");
        imatrix::write(
            &out,
            &stats,
            &g.datasets[0],
            g.chunk_count.unwrap(),
            g.chunk_size.unwrap(),
        )
        .unwrap();
        out
    })
}

#[test]
fn llama_quantize_and_kiln_quantize_agree_with_the_moe_imatrix() {
    let f = fixture();
    let d = tmp();
    // Q4_K_M with the computed matrix.
    let ours = d.join("kiln-Q4_K_M.gguf");
    let theirs = d.join("llama-Q4_K_M.gguf");
    kiln_quantize(&f.imatrix, FileType::Q4_K_M, &ours);
    llama_quantize(llama_weights(&read(&f.imatrix)), FileType::Q4_K_M, &theirs);
    assert_same_tensors(&ours, &theirs, "Q4_K_M");

    // IQ2_XXS (which needs the matrix for every expert) with an expert no token reached: both
    // quantize it with weights of 1.
    let partial = partial_imatrix();
    let k = kiln::imatrix::load(partial).unwrap();
    let down = &k["blk.0.ffn_down_exps.weight"];
    let n = down.len() / EXPERTS;
    assert!(down[n..2 * n].iter().all(|&v| v == 1.0));
    assert!(down[..n].iter().all(|&v| v != 1.0));
    let ours = d.join("kiln-IQ2_XXS-partial.gguf");
    let theirs = d.join("llama-IQ2_XXS-partial.gguf");
    kiln_quantize(partial, FileType::IQ2_XXS, &ours);
    llama_quantize(llama_weights(&read(partial)), FileType::IQ2_XXS, &theirs);
    assert_same_tensors(&ours, &theirs, "IQ2_XXS, partial data");
    // ... and that expert's bytes are not those the full matrix gives (the case is exercised),
    // while expert 0's are.
    let full = d.join("kiln-IQ2_XXS.gguf");
    kiln_quantize(&f.imatrix, FileType::IQ2_XXS, &full);
    let expert = |p: &Path, e: usize| {
        let g = GgufFile::open(p).unwrap();
        let t = g.find("blk.0.ffn_down_exps.weight").unwrap();
        let b = g.data(t);
        let per = b.len() / EXPERTS;
        b[e * per..(e + 1) * per].to_vec()
    };
    assert!(expert(&ours, 1) != expert(&full, 1));
    assert!(expert(&ours, 0) == expert(&full, 0));
}

#[test]
fn the_legacy_dat_format_carries_the_experts_too() {
    // llama-imatrix's save_imatrix_legacy: per entry ncall = ceil(max count / chunk size),
    // values (sum / count) * ncall per expert (1 * ncall for an expert with no data), then
    // the chunk count and the dataset name.
    let g = read(partial_imatrix());
    let chunk = g.chunk_size.unwrap() as f32;
    let mut legacy: Vec<(String, i32, Vec<f32>)> = Vec::new();
    for (name, e) in &g.entries {
        let max = e.counts.iter().fold(0f32, |m, &c| m.max(c));
        let ncall = ((max + chunk - 1.0) / chunk).floor() as i32;
        let per = e.sums.len() / e.counts.len();
        let vals = e
            .sums
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let c = e.counts[i / per];
                let (v, c) = if c == 0.0 { (1.0, 1.0) } else { (s, c) };
                (v / c) * ncall as f32
            })
            .collect();
        legacy.push((name.clone(), ncall, vals));
    }
    let refs: Vec<(&str, i32, &[f32])> = legacy
        .iter()
        .map(|(n, c, v)| (n.as_str(), *c, v.as_slice()))
        .collect();
    let mut bytes = kiln::imatrix::encode_legacy(&refs);
    bytes.extend_from_slice(&(g.chunk_count.unwrap() as i32).to_le_bytes());
    let name = b"text.txt";
    bytes.extend_from_slice(&(name.len() as i32).to_le_bytes());
    bytes.extend_from_slice(name);
    let dat = tmp().join("partial-imatrix.dat");
    std::fs::write(&dat, &bytes).unwrap();

    // kiln reads the same weights from both formats (up to the rounding of * ncall / ncall).
    let (a, b) = (
        kiln::imatrix::load(&dat).unwrap(),
        kiln::imatrix::load(partial_imatrix()).unwrap(),
    );
    assert_eq!(a.len(), b.len());
    for (name, v) in &b {
        let w = &a[name];
        assert_eq!(w.len(), v.len(), "{name}");
        for (x, y) in w.iter().zip(v) {
            assert!((x - y).abs() <= 1e-6 * y.abs(), "{name}: {x} vs {y}");
        }
    }
    assert!(a["blk.0.ffn_up_exps.weight"][256..512]
        .iter()
        .all(|&v| v == 1.0));
    // llama-quantize's legacy loader: value / ncall.
    let weights: Vec<(String, Vec<f32>)> = legacy
        .iter()
        .map(|(n, ncall, v)| (n.clone(), v.iter().map(|x| x / *ncall as f32).collect()))
        .collect();
    let (ours, theirs) = (
        tmp().join("kiln-dat-Q4_K_M.gguf"),
        tmp().join("llama-dat-Q4_K_M.gguf"),
    );
    kiln_quantize(&dat, FileType::Q4_K_M, &ours);
    llama_quantize(weights, FileType::Q4_K_M, &theirs);
    assert_same_tensors(&ours, &theirs, "Q4_K_M from the .dat file");
    let md = GgufFile::open(&ours).unwrap();
    assert_eq!(
        md.metadata()
            .get("quantize.imatrix.dataset")
            .and_then(|v| v.as_str()),
        Some("text.txt")
    );
}

#[test]
fn malformed_moe_imatrices_are_clear_errors() {
    let f = fixture();
    let g = read(&f.imatrix);
    // The down projection's sums for 4 experts, its counts for 2: the file disagrees with
    // itself.
    let mut stats: HashMap<String, Stats> = g
        .entries
        .iter()
        .map(|(n, e)| {
            let s = Stats {
                values: e.sums.clone(),
                counts: e.counts.iter().map(|&c| c as i64).collect(),
            };
            (n.clone(), s)
        })
        .collect();
    let bad_name = "blk.1.ffn_down_exps.weight";
    let bad = tmp().join("bad-counts.gguf");
    {
        use kiln::gguf::writer::{GgufWriter, TensorEntry};
        use kiln::gguf::{Metadata, TypeId};
        let f32t = TypeId::of(GgmlType::F32);
        let mut md = Metadata::new();
        md.set_str("general.type", "imatrix");
        let mut names: Vec<&String> = stats.keys().collect();
        names.sort();
        let mut list = Vec::new();
        for n in &names {
            let s = &stats[*n];
            let n_mat = s.counts.len() as u64;
            let counts = if n.as_str() == bad_name { 2 } else { n_mat };
            list.push(TensorEntry {
                name: format!("{n}.in_sum2"),
                dims: vec![s.values.len() as u64 / n_mat, n_mat],
                ty: f32t,
                bytes: 4 * s.values.len() as u64,
            });
            list.push(TensorEntry {
                name: format!("{n}.counts"),
                dims: vec![1, counts],
                ty: f32t,
                bytes: 4 * counts,
            });
        }
        let mut w = GgufWriter::create(&bad, true, &md, list).unwrap();
        for n in &names {
            let s = &stats[*n];
            let v: Vec<u8> = s.values.iter().flat_map(|x| x.to_le_bytes()).collect();
            w.write(&v).unwrap();
            w.end_tensor().unwrap();
            let k = if n.as_str() == bad_name {
                2
            } else {
                s.counts.len()
            };
            let c: Vec<u8> = s.counts[..k]
                .iter()
                .flat_map(|&x| (x as f32).to_le_bytes())
                .collect();
            w.write(&c).unwrap();
            w.end_tensor().unwrap();
        }
        w.finish().unwrap();
    }
    let e = kiln::imatrix::load(&bad).expect_err("refused");
    let e = format!("{e:#}");
    assert!(
        e.contains(bad_name) && e.contains("bad-counts.gguf") && e.contains("2 counts"),
        "{e}"
    );

    // The computed matrix with 3 experts' rows for a 4-expert tensor: the quantizer and the
    // budget both refuse it, naming the tensor.
    let s = stats.get_mut(bad_name).unwrap();
    let n = s.values.len() / EXPERTS;
    s.values.truncate(3 * n);
    s.counts.truncate(3);
    let three = tmp().join("three-experts.gguf");
    imatrix::write(&three, &stats, "text.txt", 4, N_CTX).unwrap();
    let out = tmp().join("never.gguf");
    let _ = std::fs::remove_file(&out);
    let mut o = quantize::Options::new(FileType::Q4_K_M);
    o.output = Some(out.clone());
    o.imatrix = Some(three.clone());
    let e = quantize::prepare(&f.f32, &o).err().expect("refused");
    let e = format!("{e:#}");
    assert!(
        e.contains(bad_name) && e.contains("in each of 4 experts"),
        "{e}"
    );
    let mut o = quantize::Options::new(FileType::Q8_0);
    o.output = Some(out.clone());
    o.imatrix = Some(three);
    let e = budget::prepare(&f.f32, &o, Target::Bpw(3.0), &MeasureOptions::default())
        .err()
        .expect("refused");
    let e = format!("{e:#}");
    assert!(e.contains(bad_name), "{e}");
    assert!(!out.exists());
}

// ---- the budget's candidates ----

const BUDGET_BPW: f64 = 2.75;

/// The importance-weighted relative squared error of every quantized tensor of `file` against
/// the f32 model, dequantized by ggml, with the weights llama-quantize derives from the matrix
/// (an expert's rows with its own): the quantity the budget minimises, measured in the file.
fn measured_loss(file: &Path) -> f64 {
    let reference = GgufFile::open(&fixture().f32).unwrap();
    let weights: BTreeMap<String, Vec<f32>> = llama_weights(&read(&fixture().imatrix))
        .into_iter()
        .collect();
    let g = GgufFile::open(file).unwrap();
    let mut total = 0.0;
    for t in g.tensors() {
        let ty = t.ty.kiln().unwrap();
        if !ty.is_quantized() {
            continue;
        }
        let r = reference.find(&t.name).unwrap();
        let x: Vec<f32> = reference
            .data(r)
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let y = kiln_fixtures::ggml::dequantize(ty, g.data(t));
        assert_eq!(x.len(), y.len(), "{}", t.name);
        let (n, rows) = (t.dims[0] as usize, t.dims[1] as usize);
        let w = weights.get(&t.name);
        let (mut err, mut energy) = (0.0f64, 0.0f64);
        for (i, (a, b)) in x.iter().zip(&y).enumerate() {
            let expert = i / (n * rows);
            let wi = w.map_or(1.0, |w| w[expert * n + i % n] as f64);
            err += wi * (*a as f64 - *b as f64).powi(2);
            energy += wi * (*a as f64).powi(2);
        }
        total += err / energy;
    }
    total
}

/// The budget options with the fixture's importance matrix.
fn budget_options(out: Option<PathBuf>) -> quantize::Options {
    let mut o = quantize::Options::new(FileType::Q8_0);
    o.output = out;
    o.force = true;
    o.imatrix = Some(fixture().imatrix.clone());
    o
}

/// The measured candidates with only `types` left.
fn only(m: &[budget::TensorChoices], types: &[GgmlType]) -> Vec<budget::TensorChoices> {
    m.iter()
        .map(|t| {
            let mut t = t.clone();
            t.candidates.retain(|c| types.contains(&c.ty));
            t
        })
        .collect()
}

/// Solves the budget on measured candidates and writes the file.
fn write_budget(
    name: &str,
    m: Vec<budget::TensorChoices>,
    target: Target,
) -> (PathBuf, budget::BudgetPlan) {
    let out = tmp().join(name);
    let o = budget_options(Some(out.clone()));
    let p = budget::start(&fixture().f32, &o).unwrap();
    let (p, plan) = budget::finish(&fixture().f32, p, &o, m, target).unwrap();
    quantize::execute(&p, true, false).unwrap();
    (out, plan)
}

#[test]
fn budget_with_i_quants_beats_legacy_and_k_quants_at_a_low_budget() {
    let f = fixture();
    // Measured once (on sampled rows, to keep the test fast; the comparison below is on the
    // written files), every plan below solved from it.
    let mopts = MeasureOptions {
        sample_weights: 1 << 16,
        ..Default::default()
    };
    let p = budget::start(&f.f32, &budget_options(None)).unwrap();
    let m = budget::measure(&p, &mopts).unwrap();
    // The measurement offers what llama.cpp accepts: MXFP4 for the experts only, the types
    // that need importance data only for tensors the matrix has.
    let types = |name: &str| -> Vec<GgmlType> {
        m.iter()
            .find(|t| t.name == name)
            .unwrap()
            .candidates
            .iter()
            .map(|c| c.ty)
            .collect()
    };
    let exps = types("blk.0.ffn_down_exps.weight");
    for t in [
        GgmlType::MXFP4,
        GgmlType::IQ1_S,
        GgmlType::IQ1_M,
        GgmlType::IQ2_XXS,
        GgmlType::IQ4_XS,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
    ] {
        assert!(exps.contains(&t), "{t} not measured for the experts");
    }
    let attn = types("blk.0.attn_q.weight");
    assert!(!attn.contains(&GgmlType::MXFP4) && attn.contains(&GgmlType::IQ1_S));
    // the token embedding (a lookup: no importance data) takes no type ggml cannot quantize
    // without it (llama.cpp does not demand it for the embedding; IQ1_M ggml does without)
    let embd = types("token_embd.weight");
    assert!(embd.contains(&GgmlType::Q2_K) && embd.contains(&GgmlType::IQ1_M));
    for t in [GgmlType::IQ2_XXS, GgmlType::IQ2_XS, GgmlType::IQ1_S] {
        assert!(!embd.contains(&t), "{t} offered without importance data");
    }

    // The legacy and K-quant candidates: measuring only them gives the same candidates as
    // the full measurement filtered to them.
    let k_types = budget::parse_types("float,legacy,k").unwrap();
    assert!(k_types.iter().all(|t| !t.name().starts_with("iq")));
    assert!(k_types.contains(&GgmlType::Q2_K) && k_types.contains(&GgmlType::Q8_0));
    let k_measured = budget::measure(
        &p,
        &MeasureOptions {
            types: Some(k_types.clone()),
            ..mopts.clone()
        },
    )
    .unwrap();
    let k_only = only(&m, &k_types);
    for (a, b) in k_measured.iter().zip(&k_only) {
        assert_eq!(a.candidates, b.candidates, "{}", a.name);
    }

    let target = Target::Bpw(BUDGET_BPW);
    let (all_file, plan) = write_budget("budget-all.gguf", m.clone(), target);
    let (k_file, k_plan) = write_budget("budget-legacy-k.gguf", k_only.clone(), target);
    for (file, plan) in [(&all_file, &plan), (&k_file, &k_plan)] {
        assert!(plan.bpw() <= BUDGET_BPW, "{}", plan.bpw());
        let g = GgufFile::open(file).unwrap();
        let data: u64 = g.tensors().iter().map(|t| g.data(t).len() as u64).sum();
        assert!(data as f64 * 8.0 / plan.n_elements as f64 <= BUDGET_BPW);
        let model = kiln::llama::load(file).unwrap();
        let prompt = kiln::llama::tokenize(&model, "The quick brown fox", true);
        assert_eq!(kiln::llama::generate(&model, &prompt, 8).unwrap().len(), 8);
    }
    let chosen: Vec<GgmlType> = plan
        .tensors
        .iter()
        .zip(&plan.chosen)
        .map(|(t, &k)| t.candidates[k].ty)
        .collect();
    assert!(
        chosen.iter().any(|t| t.name().starts_with("iq")),
        "no i-quant chosen: {chosen:?}"
    );
    let (ours, theirs) = (measured_loss(&all_file), measured_loss(&k_file));
    eprintln!(
        "budget {BUDGET_BPW} bpw: with i-quants {ours:.4e} ({:.4} bpw), legacy + K only {theirs:.4e} ({:.4} bpw); types {chosen:?}",
        plan.bpw(),
        k_plan.bpw()
    );
    assert!(
        ours < theirs,
        "with i-quants {ours:.4e} vs legacy + K only {theirs:.4e}"
    );

    // At 2.5 bpw only the i-quants fit (Q2_K alone is 2.625).
    let low = Target::Bpw(2.5);
    let o = budget_options(None);
    let e = budget::finish(&f.f32, budget::start(&f.f32, &o).unwrap(), &o, k_only, low)
        .err()
        .expect("legacy + K cannot reach 2.5 bpw");
    assert!(
        format!("{e:#}").contains("smaller than the smallest file"),
        "{e:#}"
    );
    let (_, plan) = budget::finish(&f.f32, budget::start(&f.f32, &o).unwrap(), &o, m, low).unwrap();
    assert!(plan.bpw() <= 2.5);

    // The command line's --budget-types: the plan of the legacy and K types only; an unknown
    // type is refused before any work.
    let run = |types: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args([
                "quantize",
                "--target-bpw",
                "3",
                "--dry-run",
                "--budget-types",
                types,
            ])
            .arg("--imatrix")
            .arg(&f.imatrix)
            .arg(&f.f32)
            .output()
            .unwrap()
    };
    let r = run("legacy,k");
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let planned: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("blk.") || l.starts_with("token_embd") || l.starts_with("output"))
        .filter_map(|l| {
            // tensor, shape ("256 x 512 x 4"), type, ...
            l.split_whitespace()
                .skip(1)
                .find(|w| GgmlType::from_name(w).is_some())
        })
        .collect();
    assert!(
        planned.iter().any(|t| *t == "q2_K" || *t == "q3_K"),
        "{stdout}"
    );
    assert!(planned.iter().all(|t| !t.starts_with("iq")), "{stdout}");
    let r = run("q4_K,q9_K");
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("unknown type \"q9_K\""),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
}
