//! Any byte string must parse to a header or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = frugal_formats::hf::parse_safetensors_header(data) {
        // A header that parses promises its tensor ranges lie inside the bytes.
        for t in &h.tensors {
            let _ = &data[t.range.clone()];
        }
    }
});
