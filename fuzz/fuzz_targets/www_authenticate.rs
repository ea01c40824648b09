#![no_main]
//! `cargo +nightly fuzz run www_authenticate`: see docs/fuzzing.md.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmt_registry::fuzz::www_authenticate(data));
