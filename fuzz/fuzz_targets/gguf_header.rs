//! Any byte string must parse to a header or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = frugal_formats::gguf::parse_header(data) {
        // A header that parses promises its tensor ranges lie inside the bytes.
        for t in &h.tensors {
            let start = h.data_offset + t.offset as usize;
            let _ = &data[start..start + t.size as usize];
        }
    }
});
