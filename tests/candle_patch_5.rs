//! Patch 5 of the vendored candle-core (vendor/PATCHES.md): the elementwise pool's
//! workers spin 3,000 times before they sleep, not 25,000 (stock candle-core has no
//! `barrier_pool_spin_limit` to ask, so this file does not build against it).

/// Without `CANDLE_BARRIER_POOL_SPIN_LIMIT`, the limit is the patch's 3,000.
#[test]
fn patch_5_pool_spins_3000_times() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_some() {
        panic!("unset CANDLE_BARRIER_POOL_SPIN_LIMIT to test the default");
    }
    assert_eq!(candle_core::utils::barrier_pool_spin_limit(), 3_000);
}
