//! llama-quantize's advanced options (`--tensor-type`, `--override-kv`, `--prune-layers`,
//! `--include-weights`/`--exclude-weights`): kiln's file against llama.cpp's own quantizer run
//! with the same options (`llama_model_quantize`, its parameters filled as llama-quantize fills
//! them), as whole files, byte for byte (`--no-checksum`, from an f32 GGUF without kiln's keys).

use crate::common::tensors_of;
use crate::convert_vs_llama::{
    fixture_imatrix, imatrix_provenance, llama_f32, tmp, write_gguf_imatrix,
};
use kiln::gguf::{GgufFile, Value};
use kiln::llama::ReferenceOptions;
use kiln::overrides::{parse_prune_layers, KvOverride, TensorTypeRule};
use kiln::plan::FileType;
use kiln::quantize::{self, Options};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The Llama fixture's f32 GGUF without kiln's checksum keys (llama.cpp copies every key, so
/// only then can the two files be equal as bytes).
fn plain_f32() -> &'static Path {
    static F: OnceLock<PathBuf> = OnceLock::new();
    F.get_or_init(|| {
        let out = tmp().join("qopts-F32-plain.gguf");
        let mut o = Options::new(FileType::F32);
        o.output = Some(out.clone());
        o.force = true;
        o.checksum = false;
        quantize::execute(&quantize::prepare(llama_f32(), &o).unwrap(), true, false).unwrap();
        out
    })
}

/// Importance data: (tensor name, weights) per entry.
type Entries = Vec<(String, Vec<f32>)>;

/// The fixture's importance matrix as a GGUF imatrix file, and its entries.
fn imatrix() -> &'static (PathBuf, Entries) {
    static M: OnceLock<(PathBuf, Entries)> = OnceLock::new();
    M.get_or_init(|| {
        let entries = fixture_imatrix();
        let p = tmp().join("qopts-imatrix.gguf");
        write_gguf_imatrix(&p, &entries, 8.0);
        (p, entries)
    })
}

/// Runs kiln with `o` and llama.cpp with `ro` on the plain f32 GGUF and asserts the files are
/// byte-identical, naming the first difference (tensor or key) when they are not. Returns
/// kiln's file.
fn same_as_llama_quantize(label: &str, mut o: Options, ro: &ReferenceOptions) -> PathBuf {
    let ours = tmp().join(format!("qopts-kiln-{label}.gguf"));
    let theirs = tmp().join(format!("qopts-llama-{label}.gguf"));
    o.output = Some(ours.clone());
    o.force = true;
    o.checksum = false;
    let p = quantize::prepare(plain_f32(), &o).unwrap_or_else(|e| panic!("{label}: {e:#}"));
    quantize::execute(&p, true, false).unwrap_or_else(|e| panic!("{label}: {e:#}"));
    kiln::llama::reference_quantize(plain_f32(), &theirs, o.ftype.id(), ro).unwrap();
    let (a, b) = (
        std::fs::read(&ours).unwrap(),
        std::fs::read(&theirs).unwrap(),
    );
    if a != b {
        let (ta, tb) = (tensors_of(&ours), tensors_of(&theirs));
        let names = |t: &[(String, Vec<u64>, String, Vec<u8>)]| -> Vec<String> {
            t.iter().map(|x| x.0.clone()).collect()
        };
        assert_eq!(names(&ta), names(&tb), "{label}: tensor names");
        for (x, y) in ta.iter().zip(&tb) {
            assert_eq!((&x.1, &x.2), (&y.1, &y.2), "{label}: shape/type of {}", x.0);
            assert!(x.3 == y.3, "{label}: bytes of {} ({})", x.0, x.2);
        }
        let ma = GgufFile::open(&ours).unwrap().header.metadata;
        let mb = GgufFile::open(&theirs).unwrap().header.metadata;
        let ka: Vec<(&str, &Value)> = ma.iter().collect();
        let kb: Vec<(&str, &Value)> = mb.iter().collect();
        assert_eq!(ka, kb, "{label}: metadata (keys in order, values)");
        panic!(
            "{label}: files differ ({} vs {} bytes) though tensors and keys agree",
            a.len(),
            b.len()
        );
    }
    ours
}

fn types_of(path: &Path) -> Vec<(String, String)> {
    tensors_of(path).into_iter().map(|t| (t.0, t.2)).collect()
}

#[test]
fn tensor_type_rules_match_llama_quantize() {
    // One regex over several tensors (attn_q and attn_k of blocks 0-2); one type that the
    // 640-wide ffn_down rows cannot hold (q4_K -> q5_0 fallback, where the mix would give
    // q6_K -> q8_0 to some layers); and one attn_v rule, which takes blk.0.attn_v out of the
    // mix's count of attn_v tensors and so moves the mix's q6_K bumps on the other blocks.
    let args = [
        r"blk\.[0-2]\.attn_(q|k)=q8_0",
        "FFN_DOWN=q4_K",
        r"^blk\.0\.attn_v\.weight$=Q5_K",
    ];
    let mut o = Options::new(FileType::Q4_K_M);
    o.tensor_types = args
        .iter()
        .map(|a| TensorTypeRule::parse(a).unwrap())
        .collect();
    let ro = ReferenceOptions {
        tensor_types: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let ours = same_as_llama_quantize("tensor-type", o, &ro);
    let t = types_of(&ours);
    let ty = |n: &str| t.iter().find(|x| x.0 == n).unwrap().1.clone();
    for b in 0..3 {
        assert_eq!(ty(&format!("blk.{b}.attn_q.weight")), "q8_0");
        assert_eq!(ty(&format!("blk.{b}.attn_k.weight")), "q8_0");
    }
    assert_eq!(ty("blk.3.attn_q.weight"), "q4_K");
    for b in 0..4 {
        assert_eq!(ty(&format!("blk.{b}.ffn_down.weight")), "q5_0");
    }
    assert_eq!(ty("blk.0.attn_v.weight"), "q5_K");
    // Without the rule blk.2's attn_v would be bumped (i = 2 of 4); with it, it is i = 1.
    assert_eq!(ty("blk.2.attn_v.weight"), "q4_K");
    assert_eq!(ty("blk.3.attn_v.weight"), "q6_K");
    let plain = tmp().join("qopts-plain-Q4_K_M.gguf");
    crate::common::fixtures::convert(plain_f32(), FileType::Q4_K_M, &plain);
    assert_eq!(
        types_of(&plain)
            .iter()
            .find(|x| x.0 == "blk.2.attn_v.weight")
            .unwrap()
            .1,
        "q6_K"
    );
}

#[test]
fn kv_overrides_of_every_type_match_llama_quantize() {
    let args = [
        "general.name=str:renamed by override",
        "llama.context_length=int:4096",
        "test.negative=int:-77",
        "test.ratio=float:0.1",
        "test.flag=bool:true",
        "test.off=bool:false",
        // An existing key set again later moves to the end, as gguf_set_val_* moves it.
        "general.name=str:second",
    ];
    let mut o = Options::new(FileType::Q8_0);
    o.kv_overrides = args.iter().map(|a| KvOverride::parse(a).unwrap()).collect();
    let ro = ReferenceOptions {
        kv_overrides: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let ours = same_as_llama_quantize("override-kv", o, &ro);
    let md = GgufFile::open(&ours).unwrap().header.metadata;
    assert_eq!(md.get("general.name"), Some(&Value::Str("second".into())));
    assert_eq!(md.get("llama.context_length"), Some(&Value::U32(4096)));
    assert_eq!(md.get("test.negative"), Some(&Value::U32(77)));
    assert_eq!(md.get("test.ratio"), Some(&Value::F32(0.1)));
    assert_eq!(md.get("test.flag"), Some(&Value::Bool(true)));
    assert_eq!(md.iter().last().map(|(k, _)| k), Some("general.name"));
}

#[test]
fn pruning_a_middle_layer_with_an_imatrix_matches_llama_quantize() {
    let (file, entries) = imatrix();
    for (label, prune, ftype) in [
        ("prune-1", "1", FileType::Q4_K_M),
        ("prune-0-2", "2,0", FileType::Q2_K),
    ] {
        let layers = parse_prune_layers(prune).unwrap();
        let mut o = Options::new(ftype);
        o.imatrix = Some(file.clone());
        o.prune_layers = layers.clone();
        let ro = ReferenceOptions {
            imatrix: Some(entries.clone()),
            imatrix_file: Some(imatrix_provenance(file, false)),
            prune_layers: layers.iter().map(|&l| l as i32).collect(),
            ..Default::default()
        };
        let ours = same_as_llama_quantize(label, o, &ro);
        let g = GgufFile::open(&ours).unwrap();
        let left = 4 - layers.len() as u32;
        assert_eq!(
            g.metadata().get("llama.block_count"),
            Some(&Value::U32(left))
        );
        let max_blk = g
            .tensors()
            .iter()
            .filter_map(|t| t.name.strip_prefix("blk.")?.split('.').next()?.parse().ok())
            .max();
        assert_eq!(max_blk, Some(left - 1), "{label}: blocks renumbered");
    }
    // The remap matters: the pruned file's blk.1 is the original blk.2, quantized with
    // blk.2's importance data. Giving blk.2 the data of blk.1 (what a lookup by the new name
    // would use) changes llama.cpp's file, so kiln's equal file used the remapped entries.
    let mut wrong = entries.clone();
    let blk1: Vec<(String, Vec<f32>)> = entries
        .iter()
        .filter_map(|(n, v)| Some((n.strip_prefix("blk.1.")?.to_string(), v.clone())))
        .collect();
    for (n, v) in wrong.iter_mut() {
        if let Some(rest) = n.strip_prefix("blk.2.") {
            *v = blk1.iter().find(|x| x.0 == rest).unwrap().1.clone();
        }
    }
    let theirs = tmp().join("qopts-llama-prune-1.gguf");
    let other = tmp().join("qopts-llama-prune-1-wrong.gguf");
    let ro = ReferenceOptions {
        imatrix: Some(wrong),
        imatrix_file: Some(imatrix_provenance(&imatrix().0, false)),
        prune_layers: vec![1],
        ..Default::default()
    };
    kiln::llama::reference_quantize(plain_f32(), &other, FileType::Q4_K_M.id(), &ro).unwrap();
    assert_ne!(
        std::fs::read(&theirs).unwrap(),
        std::fs::read(&other).unwrap()
    );
}

#[test]
fn include_and_exclude_weights_match_llama_quantize() {
    let (file, entries) = imatrix();
    let cases: [(&str, Vec<&str>, Vec<&str>); 3] = [
        ("include", vec!["attn_", "blk.3.ffn_up"], vec![]),
        ("exclude", vec![], vec!["ffn_down", "blk.1."]),
        // Nothing left: llama-quantize passes no importance matrix at all.
        ("include-none", vec!["no_such_tensor"], vec![]),
    ];
    let mut files = Vec::new();
    for (label, inc, exc) in cases {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let mut o = Options::new(FileType::Q4_K_M);
        o.imatrix = Some(file.clone());
        o.include_weights = s(&inc);
        o.exclude_weights = s(&exc);
        let ro = ReferenceOptions {
            imatrix: Some(entries.clone()),
            imatrix_file: Some(imatrix_provenance(file, false)),
            include_weights: s(&inc),
            exclude_weights: s(&exc),
            ..Default::default()
        };
        files.push(same_as_llama_quantize(label, o, &ro));
    }
    // Each selection is a different file, and none is the full imatrix's nor the plain one.
    let full = tmp().join("qopts-full-imatrix.gguf");
    let mut o = Options::new(FileType::Q4_K_M);
    o.output = Some(full.clone());
    o.force = true;
    o.checksum = false;
    o.imatrix = Some(file.clone());
    quantize::execute(&quantize::prepare(plain_f32(), &o).unwrap(), true, false).unwrap();
    let plain = tmp().join("qopts-plain-Q4_K_M.gguf");
    crate::common::fixtures::convert(plain_f32(), FileType::Q4_K_M, &plain);
    let data = |p: &Path| -> Vec<Vec<u8>> { tensors_of(p).into_iter().map(|t| t.3).collect() };
    let (f, p) = (data(&full), data(&plain));
    assert_ne!(data(&files[0]), f);
    assert_ne!(data(&files[0]), p);
    assert_ne!(data(&files[1]), f);
    assert_ne!(data(&files[1]), p);
    assert_eq!(data(&files[2]), p, "no entry left = no imatrix");
}

/// `--tensor-type` and `--tensor-type-file` rules apply in command-line order (the first match
/// wins), as llama-quantize collects them, through the `kiln` binary's --dry-run plan.
#[test]
fn rule_files_take_their_place_on_the_command_line() {
    let rules = tmp().join("qopts-rules.txt");
    std::fs::write(&rules, "attn_q=q8_0\n\tffn_up=q5_1  \n").unwrap();
    let plan = |args: &[&str]| -> String {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["quantize", "-t", "q4_K_M", "--dry-run"])
            .arg(plain_f32())
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let type_of = |plan: &str, name: &str| -> String {
        let line = plan
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not in {plan}"));
        line.split_whitespace().nth(6).unwrap().to_string()
    };
    let f = rules.to_str().unwrap();
    let p = plan(&["--tensor-type", "attn=q5_0", "--tensor-type-file", f]);
    assert_eq!(type_of(&p, "blk.1.attn_q.weight"), "q5_0");
    assert_eq!(type_of(&p, "blk.1.ffn_up.weight"), "q5_1");
    let p = plan(&["--tensor-type-file", f, "--tensor-type", "attn=q5_0"]);
    assert_eq!(type_of(&p, "blk.1.attn_q.weight"), "q8_0");
    assert_eq!(type_of(&p, "blk.1.attn_k.weight"), "q5_0");
}
