//! Sets `cfg(iotstream_loom)` for this crate alone, so the ring's `sync` module (compiled into
//! `tests/loom_ring.rs`) takes loom's atomics, futex emulation and race tracking. A build-script
//! cfg instead of `RUSTFLAGS="--cfg ..."`: it reaches no dependency and needs no flag to run.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(iotstream_loom)");
    println!("cargo::rustc-cfg=iotstream_loom");
}
