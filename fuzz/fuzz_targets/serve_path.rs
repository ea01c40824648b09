#![no_main]
//! `cargo +nightly fuzz run serve_path`: see docs/fuzzing.md.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmt_registry::fuzz::serve_path(data));
