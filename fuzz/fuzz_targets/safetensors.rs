#![no_main]
//! `cargo +nightly fuzz run safetensors`: see docs/fuzzing.md.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmt_registry::fuzz::safetensors(data));
