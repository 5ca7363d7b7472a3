//! Host-side stub: the real program is the `gateway` binary, built for bpfel-unknown-none.
#![no_std]
