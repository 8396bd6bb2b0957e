//! Split GGUF files (llama-gguf-split's format): `--split-max-size` / `--split-max-tensors`
//! output, split inputs (requantizing a split download from its first shard), `--keep-split`,
//! and the bad-input treatment of broken shard sets. The merge check is written here from the
//! format (llama-gguf-split --merge: the first shard's metadata less the `split.*` keys, then
//! every shard's tensors in order) and compared with kiln's single-file output.

use crate::common::fixtures::llama_checkpoint;
use crate::common::tensors;
use kiln::gguf::{GgufFile, Metadata, Value};
use kiln::plan::FileType;
use kiln::quantize::{self, Options};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn tmp(name: &str) -> PathBuf {
    crate::common::fresh_dir("split", name)
}

fn llama_dir() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = tmp("llama-spm");
        llama_checkpoint(&d);
        d
    })
}

fn run(input: &Path, o: Options) -> anyhow::Result<kiln::quantize::Prepared> {
    let p = quantize::prepare(input, &o)?;
    quantize::execute(&p, true, false)?;
    Ok(p)
}

fn opts(ftype: FileType, out: &Path, checksum: bool) -> Options {
    let mut o = Options::new(ftype);
    o.output = Some(out.to_path_buf());
    o.force = true;
    o.checksum = checksum;
    o
}

fn keys(md: &Metadata) -> Vec<(String, Value)> {
    md.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// The shards of `prefix` (NAME for NAME-0000i-of-0000n.gguf) that exist, in order.
fn shard_files(prefix: &Path, n: usize) -> Vec<PathBuf> {
    (1..=n)
        .map(|i| {
            let name = prefix.file_name().unwrap().to_string_lossy();
            prefix.with_file_name(format!("{name}-{i:05}-of-{n:05}.gguf"))
        })
        .collect()
}

/// Checks a shard set against the single file: names, split keys (types and values), the
/// first shard's other keys equal to the single file's in order, the others holding only the
/// split keys, and the tensors, concatenated, equal to the single file's. `drop` names keys
/// to leave out of both sides (kiln's checksum, which covers each file's own tensors).
fn merge_check(shards: &[PathBuf], single: &Path, drop: &[&str]) {
    let n = shards.len();
    let one = GgufFile::open(single).unwrap();
    let mut merged_tensors = Vec::new();
    let mut first_keys = Vec::new();
    for (i, p) in shards.iter().enumerate() {
        assert!(p.exists(), "{} is missing", p.display());
        let g = GgufFile::open(p).unwrap();
        let md = g.metadata();
        assert_eq!(
            md.get("split.no"),
            Some(&Value::U16(i as u16)),
            "{}",
            p.display()
        );
        assert_eq!(md.get("split.count"), Some(&Value::U16(n as u16)));
        assert_eq!(
            md.get("split.tensors.count"),
            Some(&Value::I32(one.tensors().len() as i32))
        );
        let mut k: Vec<(String, Value)> = keys(md)
            .into_iter()
            .filter(|(k, _)| !drop.contains(&k.as_str()))
            .collect();
        // The three split keys come after the model's keys, in llama-gguf-split's order.
        let tail: Vec<&str> = k[k.len() - 3..].iter().map(|x| x.0.as_str()).collect();
        assert_eq!(tail, ["split.no", "split.count", "split.tensors.count"]);
        k.truncate(k.len() - 3);
        if i == 0 {
            first_keys = k;
        } else {
            assert!(k.is_empty(), "shard {} holds model keys: {k:?}", i + 1);
        }
        assert!(!g.tensors().is_empty(), "shard {} has no tensor", i + 1);
        merged_tensors.extend(tensors(&g));
    }
    let want_keys: Vec<(String, Value)> = keys(one.metadata())
        .into_iter()
        .filter(|(k, _)| !drop.contains(&k.as_str()))
        .collect();
    assert_eq!(first_keys, want_keys, "first shard's keys less split.*");
    let want = tensors(&one);
    assert_eq!(
        merged_tensors.iter().map(|t| &t.0).collect::<Vec<_>>(),
        want.iter().map(|t| &t.0).collect::<Vec<_>>(),
        "tensor order"
    );
    assert!(
        merged_tensors == want,
        "tensor data differs from the single file"
    );
}

const CHECKSUM: &[&str] = &[
    kiln::gguf::checksum::LAYOUT_KEY,
    kiln::gguf::checksum::DATA_KEY,
];

#[test]
fn split_output_merges_to_the_single_file_and_llama_cpp_loads_it() {
    let d = tmp("out");
    let single = d.join("m-Q8_0.gguf");
    run(llama_dir(), opts(FileType::Q8_0, &single, false)).unwrap();
    let n_tensors = GgufFile::open(&single).unwrap().tensors().len();

    // By tensor count: ceil(n / 10) shards of 10 (the last one shorter).
    let mut o = opts(FileType::Q8_0, &d.join("t.gguf"), false);
    o.split = Some(kiln::gguf::split::SplitLimit::Tensors(10));
    let p = run(llama_dir(), o).unwrap();
    let n = n_tensors.div_ceil(10);
    let files = shard_files(&d.join("t"), n);
    assert_eq!(quantize::output_files(&p), files);
    merge_check(&files, &single, &[]);
    for (i, f) in files.iter().enumerate() {
        let want = if i + 1 < n {
            10
        } else {
            n_tensors - 10 * (n - 1)
        };
        assert_eq!(GgufFile::open(f).unwrap().tensors().len(), want);
    }
    assert!(!d.join("t.gguf").exists());

    // A limit below the first tensor's size: llama-gguf-split refuses it, and so does kiln,
    // before writing anything.
    let mut o = opts(FileType::Q8_0, &d.join("small.gguf"), true);
    o.split = Some(kiln::gguf::split::SplitLimit::Bytes(1_000_000));
    let e = format!("{:#}", run(llama_dir(), o).err().expect("accepted"));
    assert!(e.contains("tensor output.weight alone is"), "{e}");
    assert!(!d.join("small-00001-of-00002.gguf").exists());

    // By size (10 MB of tensor data per shard), with kiln's checksum: each shard verifies.
    let mut o = opts(FileType::Q8_0, &d.join("s.gguf"), true);
    o.split = Some(kiln::gguf::split::SplitLimit::Bytes(10_000_000));
    let p = run(llama_dir(), o).unwrap();
    let files = quantize::output_files(&p);
    assert!(files.len() >= 2, "{} shards", files.len());
    for f in &files {
        let g = GgufFile::open(f).unwrap();
        let data: u64 = g.tensors().iter().map(|t| t.bytes.div_ceil(32) * 32).sum();
        assert!(
            data <= 10_000_000 || g.tensors().len() == 1,
            "{}: {data} bytes",
            f.display()
        );
        let v = kiln::gguf::checksum::verify(&g).unwrap();
        assert!(
            matches!(v, kiln::gguf::checksum::Verdict::Ok { .. }),
            "{}: {v:?}",
            f.display()
        );
    }
    merge_check(&files, &single, CHECKSUM);

    // llama.cpp loads the model from the first shard and generates.
    let model = kiln::llama::load(&files[0]).unwrap();
    let prompt = kiln::llama::tokenize(&model, "Once upon a time", true);
    let toks = kiln::llama::generate(&model, &prompt, 6).unwrap();
    assert_eq!(toks.len(), 6);
    // ... the same tokens as from the single file.
    let one = kiln::llama::load(&single).unwrap();
    assert_eq!(kiln::llama::generate(&one, &prompt, 6).unwrap(), toks);
}

#[test]
fn split_input_requantizes_like_the_single_file_and_keep_split_keeps_the_shards() {
    let d = tmp("in");
    // A split f32 "download", and the same model in one file.
    let single = d.join("m-F32.gguf");
    run(llama_dir(), opts(FileType::F32, &single, false)).unwrap();
    let mut o = opts(FileType::F32, &d.join("m.gguf"), false);
    o.split = Some(kiln::gguf::split::SplitLimit::Tensors(12));
    let p = run(llama_dir(), o).unwrap();
    let shards = quantize::output_files(&p);
    assert!(shards.len() >= 3);

    // Requantized from its first shard: the same file as from the single one.
    let a = d.join("a-Q4_K_M.gguf");
    let b = d.join("b-Q4_K_M.gguf");
    run(&shards[0], opts(FileType::Q4_K_M, &a, false)).unwrap();
    run(&single, opts(FileType::Q4_K_M, &b, false)).unwrap();
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
        "split input gives another file"
    );

    // --keep-split: the output in the input's shards (the same tensors in each), merging to
    // llama-quantize-ordered... the input's order, as llama-quantize --keep-split writes it.
    let mut o = opts(FileType::Q8_0, &d.join("k.gguf"), false);
    o.keep_split = true;
    let p = run(&shards[0], o).unwrap();
    let out = quantize::output_files(&p);
    assert_eq!(out, shard_files(&d.join("k"), shards.len()));
    for (i, o) in out.iter().enumerate() {
        let names = |p: &Path| -> Vec<String> {
            GgufFile::open(p)
                .unwrap()
                .tensors()
                .iter()
                .map(|t| t.name.clone())
                .collect()
        };
        assert_eq!(names(o), names(&shards[i]), "shard {}", i + 1);
        let md = GgufFile::open(o).unwrap();
        assert_eq!(md.metadata().get("split.no"), Some(&Value::U16(i as u16)));
    }
    // Each tensor as kiln quantizes it from the single file.
    let q = d.join("q-Q8_0.gguf");
    run(&single, opts(FileType::Q8_0, &q, false)).unwrap();
    let want = tensors(&GgufFile::open(&q).unwrap());
    for o in &out {
        for t in tensors(&GgufFile::open(o).unwrap()) {
            let w = want.iter().find(|w| w.0 == t.0).unwrap();
            assert!(w == &t, "{}: differs", t.0);
        }
    }
    let model = kiln::llama::load(&out[0]).unwrap();
    let prompt = kiln::llama::tokenize(&model, "Once upon a time", true);
    assert_eq!(kiln::llama::generate(&model, &prompt, 4).unwrap().len(), 4);
}

/// The error of converting `input`, which must leave no file in `dir` but `keep`.
fn refused(input: &Path, dir: &Path, keep: &[PathBuf]) -> String {
    let out = dir.join("out.gguf");
    let e = run(input, opts(FileType::Q8_0, &out, true))
        .err()
        .expect("the broken split input was accepted");
    let left: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !keep.contains(p))
        .collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
    format!("{e:#}")
}

#[test]
fn broken_shard_sets_are_one_clear_error_and_no_output() {
    let src = tmp("broken-src");
    let mut o = opts(FileType::F32, &src.join("m.gguf"), false);
    o.split = Some(kiln::gguf::split::SplitLimit::Tensors(15));
    let p = run(llama_dir(), o).unwrap();
    let shards = quantize::output_files(&p);
    let n = shards.len();
    assert!(n >= 3);
    let fresh = |name: &str| -> (PathBuf, Vec<PathBuf>) {
        let d = tmp(name);
        let files: Vec<PathBuf> = shards
            .iter()
            .map(|s| {
                let t = d.join(s.file_name().unwrap());
                std::fs::copy(s, &t).unwrap();
                t
            })
            .collect();
        (d, files)
    };

    // A missing shard.
    let (d, files) = fresh("missing");
    std::fs::remove_file(&files[1]).unwrap();
    let e = refused(&files[0], &d, &files);
    assert!(
        e.contains(&format!("shard 2 of {n} is missing"))
            && e.contains(&*files[1].file_name().unwrap().to_string_lossy()),
        "{e}"
    );

    // A shard that says it is another one (a shard of another download put in its place).
    let (d, files) = fresh("wrong-no");
    std::fs::copy(&shards[2], &files[1]).unwrap();
    let e = refused(&files[0], &d, &files);
    assert!(
        e.contains("says it is shard 3") && e.contains("by its name it is shard 2"),
        "{e}"
    );

    // A shard with another count.
    let (d, files) = fresh("wrong-count");
    let g = GgufFile::open(&files[1]).unwrap();
    let mut md = g.metadata().clone();
    md.set("split.count", Value::U16(n as u16 + 1));
    rewrite(&g, &md, &files[1]);
    let e = refused(&files[0], &d, &files);
    assert!(e.contains(&format!("split.count = {}", n + 1)), "{e}");

    // The second shard given instead of the first.
    let (d, files) = fresh("not-first");
    let e = refused(&files[1], &d, &files);
    assert!(e.contains("give the first shard"), "{e}");

    // A first shard renamed, so that the others cannot be found.
    let (d, files) = fresh("renamed");
    let renamed = d.join("model.gguf");
    std::fs::rename(&files[0], &renamed).unwrap();
    let mut keep = files.clone();
    keep.push(renamed.clone());
    let e = refused(&renamed, &d, &keep);
    assert!(e.contains("is not named NAME-00001-of-"), "{e}");
}

/// Writes `g`'s tensors under `md` to `path`.
fn rewrite(g: &GgufFile, md: &Metadata, path: &Path) {
    let entries: Vec<kiln::gguf::writer::TensorEntry> = g
        .tensors()
        .iter()
        .map(|t| kiln::gguf::writer::TensorEntry {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: t.ty,
            bytes: t.bytes,
        })
        .collect();
    let data: Vec<Vec<u8>> = g.tensors().iter().map(|t| g.data(t).to_vec()).collect();
    let tmp = path.with_extension("rewrite");
    let mut w = kiln::gguf::writer::GgufWriter::create(&tmp, true, md, entries).unwrap();
    for d in &data {
        w.write(d).unwrap();
        w.end_tensor().unwrap();
    }
    w.finish().unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
