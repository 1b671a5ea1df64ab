//! rusty_rail: a Maglev-style L4 load balancer.
//!
//! `wire` holds zero-copy packet views, `maglev` the consistent-hash table,
//! `dataplane` the per-frame pipeline, `config` the `RR_*` environment, `control` what builds the tables.
//! Only the I/O backends (`io`) may use `unsafe`.
#![deny(unsafe_code)]

#[cfg(all(feature = "xdp", not(target_os = "linux")))]
compile_error!(
    "the `xdp` feature (XDP and AF_XDP) needs Linux; build with --no-default-features --features netmap"
);

pub mod config;
pub mod control;
pub mod dataplane;
pub mod io;
pub mod maglev;
pub mod wire;
