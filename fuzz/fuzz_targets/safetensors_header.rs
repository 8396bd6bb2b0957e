//! The safetensors header parser on arbitrary bytes (a whole file's contents).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tensors) = kiln::source::safetensors::parse_header(data, 0) {
        // Every range it accepts must lie inside the buffer and match shape x dtype.
        for t in &tensors {
            let r = t.byte_range();
            assert!(
                r.start <= r.end && r.end <= data.len(),
                "{} out of bounds",
                t.name
            );
            if let Ok(d) = t.dtype {
                assert_eq!(t.n_elements() * d.size(), r.end - r.start, "{}", t.name);
            }
        }
    }
});
