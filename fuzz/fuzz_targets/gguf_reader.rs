//! The GGUF reader on arbitrary bytes; whatever it accepts goes through `kiln inspect` and
//! `kiln quantize --dry-run`'s planning, as a GGUF input would.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(h) = kiln::gguf::reader::parse(data) else {
        return;
    };
    for t in &h.tensors {
        let end = h.data_offset + t.offset + t.bytes;
        assert!(end <= data.len() as u64, "{} out of bounds", t.name);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.gguf");
    std::fs::write(&path, data).unwrap();
    let g = kiln::gguf::GgufFile::open(&path).expect("parse accepted it");
    let _ = kiln::inspect::to_text(&g);
    let _ = kiln::inspect::to_json(&g);
    drop(g);
    let mut opts = kiln::quantize::Options::new(kiln::plan::FileType::parse("q4_K_M").unwrap());
    opts.allow_requantize = true;
    opts.output = Some(dir.path().join("out.gguf"));
    if let Ok(p) = kiln::quantize::prepare(&path, &opts) {
        let _ = kiln::quantize::describe(&p);
    }
});
