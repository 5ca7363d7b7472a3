//! The kernel objects, built by build.rs and embedded in the binary.

/// The balancer's XDP object (program `gateway` and its maps).
pub static GATEWAY: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-bpf"));

/// A map-less object whose program `xdp_pass` passes every packet. Test beds attach it to
/// veth peers; see `gateway-ebpf/src/pass.rs`.
pub static XDP_PASS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-pass"));

/// A map-less object whose program `xdp_floor` swaps MACs and returns XDP_TX: the baseline
/// of the data-plane benchmark.
pub static XDP_FLOOR: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-floor"));

/// A map-less object whose program `xdp_decap` strips an IPIP / IP6IP6 outer header: the
/// lab's backends use it where the kernel lacks the tunnel drivers.
pub static XDP_DECAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-decap"));

/// The live-frames benchmark's front program `xdp_vary` (a flow per run, then a tail call
/// into the program under test) and its veth peer's `xdp_sink`; see
/// `gateway-ebpf/src/vary.rs`.
pub static XDP_VARY: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-vary"));

/// The balancer's program built without packet validation (`gateway-ebpf/src/unchecked.rs`),
/// with the same maps: `cargo xtask bench xdp` measures what validation costs against it.
pub static GATEWAY_UNCHECKED: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-unchecked"));

/// The balancer's program with every TCP packet going through conntrack, as before settled
/// table slots (`gateway-ebpf/src/tracked.rs`): `cargo xtask bench xdp` measures the design
/// against it.
pub static GATEWAY_TRACKED: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-tracked"));
