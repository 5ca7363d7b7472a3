//! Map definitions. Names, sizes and layouts come from gateway-common.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use gateway_common::{
    BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU, Backend, DEFAULT_CONNTRACK_SIZE, FlowKey, FlowValue,
    MAX_BACKENDS, MAX_SERVICES, Meta, STAT_COUNT, ServiceKey, ServiceValue, Settings, TrafficStats,
};

#[map(name = "SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map(name = "BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Resized by the agent at load time (services x 2 x largest table).
#[map(name = "TABLES")]
pub static TABLES: Array<u32> = Array::with_max_entries(1, BPF_F_MMAPABLE);

#[map(name = "CONNTRACK")]
pub static CONNTRACK: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_CONNTRACK_SIZE, BPF_F_NO_COMMON_LRU);

#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[map(name = "SERVICE_STATS")]
pub static SERVICE_STATS: PerCpuArray<TrafficStats> =
    PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map(name = "BACKEND_STATS")]
pub static BACKEND_STATS: PerCpuArray<TrafficStats> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Read only by user space (layout version and sizes of pinned maps).
#[map(name = "META")]
pub static META: Array<Meta> = Array::with_max_entries(1, 0);
