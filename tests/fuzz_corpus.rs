//! Replays every fuzz target's seeds (`fuzz/seeds/`) and committed corpus
//! (`fuzz/corpus/`, what libFuzzer found worth keeping) on stable Rust, so that a
//! regression on any input the fuzzers have seen fails `cargo test`. Each input also
//! goes through with every single byte flipped in turn, a cheap mutation sweep.

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for kind in ["seeds", "corpus"] {
        if let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) {
            out.extend(dir.map(|e| e.unwrap().path()));
        }
    }
    out.sort();
    out
}

#[test]
fn every_fuzz_target_holds_on_its_seeds_and_corpus() {
    let targets = vmt_hub::registry::fuzz::TARGETS
        .iter()
        .chain(vmt_hub::fuzz::TARGETS);
    for (name, run) in targets {
        let files = inputs(name);
        assert!(!files.is_empty(), "fuzz target {name} has no seeds");
        for f in &files {
            let data = std::fs::read(f).unwrap();
            run(&data);
            // Flip each of the first 4 KiB of bytes, one at a time.
            let mut m = data.clone();
            for i in 0..m.len().min(4096) {
                m[i] ^= 0xff;
                run(&m);
                m[i] ^= 0xff;
            }
        }
    }
}
