//! Property: over random sequences of import / tag / rm / gc, `gc` removes exactly the
//! blobs no tagged bundle needs, and every tag still loads its bundle intact.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::micro_bundle;
use proptest::prelude::*;
use vmt_registry::bundle::BundleDir;
use vmt_registry::reference::TagName;
use vmt_registry::store::BundleBlobs;
use vmt_registry::{Digest, Registry};

#[derive(Debug, Clone)]
enum Op {
    Import { bundle: usize, tag: usize },
    Tag { from: usize, to: usize },
    Rm { tag: usize },
    Gc,
}

const TAGS: [&str; 3] = ["m:a", "m:b", "other/n:v1"];

fn pool() -> Vec<BundleDir> {
    vec![
        micro_bundle(&["seg"], 1, 1),
        micro_bundle(&["seg", "parts"], 1, 1), // shares shared + task/seg with 0
        micro_bundle(&["seg"], 2, 1),          // shares task/seg with 0
        micro_bundle(&["parts", "sal"], 3, 2),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..4usize, 0..3usize).prop_map(|(bundle, tag)| Op::Import { bundle, tag }),
        1 => (0..3usize, 0..3usize).prop_map(|(from, to)| Op::Tag { from, to }),
        2 => (0..3usize).prop_map(|tag| Op::Rm { tag }),
        2 => Just(Op::Gc),
    ]
}

/// Every blob the tagged bundles need: manifest, config and components.
fn needed(model: &BTreeMap<usize, usize>, pool: &[BundleDir]) -> BTreeSet<Digest> {
    let mut out = BTreeSet::new();
    for &b in model.values() {
        let blobs = BundleBlobs::of(&pool[b]);
        let manifest = blobs.manifest();
        out.insert(Digest::of(&manifest.to_canonical_bytes()));
        out.extend(manifest.blobs().map(|d| d.digest));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn gc_removes_exactly_the_unreachable(ops in proptest::collection::vec(op(), 1..24)) {
        let tmp = tempfile::tempdir().unwrap();
        let reg = Registry::open(tmp.path()).unwrap();
        let pool = pool();
        // tag index -> bundle index
        let mut model: BTreeMap<usize, usize> = BTreeMap::new();
        for op in ops.iter().chain(std::iter::once(&Op::Gc)) {
            match *op {
                Op::Import { bundle, tag } => {
                    reg.publish(&pool[bundle], &TagName::parse(TAGS[tag]).unwrap()).unwrap();
                    model.insert(tag, bundle);
                }
                Op::Tag { from, to } => {
                    let r = reg.tag(TAGS[from], TAGS[to]);
                    match model.get(&from).copied() {
                        Some(b) => { r.unwrap(); model.insert(to, b); }
                        None => prop_assert!(r.is_err()),
                    }
                }
                Op::Rm { tag } => {
                    let r = reg.remove(TAGS[tag]);
                    prop_assert_eq!(r.is_ok(), model.remove(&tag).is_some());
                }
                Op::Gc => {
                    reg.gc(&vmt_registry::store::GcOptions::now()).unwrap();
                    let on_disk: BTreeSet<Digest> = reg.blob_digests().unwrap().into_iter().collect();
                    prop_assert_eq!(on_disk, needed(&model, &pool));
                }
            }
            for (&t, &b) in &model {
                let d = reg.resolve(TAGS[t]).unwrap();
                prop_assert_eq!(&reg.load(&d).unwrap(), &pool[b]);
            }
            prop_assert!(reg.verify(None).unwrap().ok());
        }
    }
}
