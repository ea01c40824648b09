#![no_main]
//! `cargo +nightly fuzz run auth_file`: see docs/fuzzing.md.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmt_registry::fuzz::auth_file(data));
