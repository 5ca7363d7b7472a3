//! Loading, attaching and reading the XDP program, and writing its maps (the aya side of
//! [`crate::mapsync::MapWriter`]); the pinned state on bpffs is [`crate::pin`]'s.
use std::{os::fd::AsFd, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, Map, MapData, PerCpuArray, ProgramArray,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
    programs::{
        Xdp, XdpMode as AyaMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use gateway_common::{
    AllowAddr, Backend, DEFAULT_CONNTRACK_SIZE, DEFAULT_NAT_SIZE, DEFAULT_SOURCES_SIZE,
    DEFAULT_TABLE_SIZE, FlowKey, FlowValue, JUMP_FULLNAT, LAYOUT_VERSION, Limits, LocalFilter,
    LocalKey, MAP_ALLOWLIST, MAP_BACKEND_STATS, MAP_BACKENDS, MAP_CONNTRACK, MAP_JUMP, MAP_LIMITED,
    MAP_LIMITS, MAP_LOCAL_ADDRS, MAP_LOCAL_FILTER, MAP_META, MAP_NAMES, MAP_NAT, MAP_NAT_POOL,
    MAP_PASSIVE, MAP_PROTECT_STATS, MAP_SERVICE_INDEX, MAP_SERVICE_STATS, MAP_SERVICES,
    MAP_SETTINGS, MAP_SLOT_STATE, MAP_SOURCES, MAP_STATS, MAP_TABLES, META_MAGIC,
    META_MODE_GENERIC, META_MODE_NATIVE, Meta, NatPool, NatValue, PROG_FULLNAT, PROG_GATEWAY,
    PassiveStats, ProtectStats, SERVICE_BUCKETS, SERVICE_PROBES, SERVICE_TOMBSTONE, SLOT_CHANGED,
    SLOT_ID, SLOT_USED, SLOTS_PER_LINE, STAT_COUNT, ServiceKey, ServiceSlot, ServiceValue,
    Settings, Slot, SlotState, SourceBucket, SourceKey, TrafficStats, service_bucket,
};
use log::{info, warn};
use thiserror::Error;

use crate::{
    config::XdpMode,
    error::Chain,
    mapsync::{MapWriter, SyncError},
    model::{self, AllowKey, Applied, AppliedService, Layout, Prior, SlotCounts},
    pin, sys,
};

#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error("loading the XDP object")]
    Load(#[from] aya::EbpfError),
    #[error("program `{0}` not found in the object")]
    NoProgram(&'static str),
    #[error("map `{0}` not found in the object")]
    NoMap(&'static str),
    #[error("{what}")]
    Program {
        what: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("{what}")]
    Map {
        what: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("mapping the table memory")]
    Mmap(#[source] std::io::Error),
    #[error(transparent)]
    Pin(#[from] crate::pin::PinError),
    #[error("{what}")]
    Link {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// aya-log's level numbering (aya_log_common::Level): 1 error, 2 warn, 3 info, 4 debug.
pub const KERNEL_LOG_WARN: u8 = 2;

/// Sizes fixed when the program is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    pub conntrack_size: u32,
    /// Services the tables have room for.
    pub max_services: u32,
    /// Largest table a service may use (the region stride, rounded up to whole
    /// `gateway_common::SlotLine`s).
    pub max_table_size: u32,
    /// Level of the program's own log messages (aya-log): 0 off, 1 error .. 5 trace.
    pub kernel_log: u8,
    /// Source buckets SOURCES holds.
    pub sources_size: u32,
    /// Full-NAT entries NAT holds (two per flow).
    pub nat_size: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            conntrack_size: DEFAULT_CONNTRACK_SIZE,
            max_services: 16,
            max_table_size: DEFAULT_TABLE_SIZE,
            kernel_log: KERNEL_LOG_WARN,
            sources_size: DEFAULT_SOURCES_SIZE,
            nat_size: DEFAULT_NAT_SIZE,
        }
    }
}

impl LoadOptions {
    pub fn layout(&self) -> Layout {
        Layout {
            max_services: self.max_services,
            stride: self.max_table_size.div_ceil(SLOTS_PER_LINE) * SLOTS_PER_LINE,
        }
    }
}

/// The mode the program ended up attached in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Generic,
}

impl std::fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
        })
    }
}

/// TABLES and SLOT_STATE written and read through memory mappings (both maps are created
/// `BPF_F_MMAPABLE`): a whole table is one pass over memory instead of one syscall per
/// slot. TABLES is, in memory, one array of 16-bit slot words ([`SlotLine`]s are 32 of
/// them with no padding); SLOT_STATE one array of 8-byte [`SlotState`]s.
///
/// Each access maps just the pages it needs and unmaps them after: the maps' memory is the
/// kernel's either way, and a mapping kept open would count every table the agent ever
/// wrote (two regions per service) in its resident memory.
struct TableMem {
    words: MapData,
    states: MapData,
    slots: usize,
    page: usize,
}

/// A window of a map mapped into our memory; unmapped when dropped.
struct Window {
    base: *mut u8,
    len: usize,
    /// The first requested byte, inside the window.
    first: *mut u8,
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `TableMem::window` mapped.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Bytes per slot in each map.
const WORD: usize = 2;
const STATE: usize = std::mem::size_of::<SlotState>();

impl TableMem {
    fn new(words: MapData, states: MapData, slots: u32) -> Result<Self, DataplaneError> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let t = Self {
            words,
            states,
            slots: slots as usize,
            page,
        };
        // Fail at load, not at the first write, if a map cannot be mapped.
        map_window(&t.words, page, 0, WORD, false)?;
        map_window(&t.states, page, 0, STATE, false)?;
        Ok(t)
    }

    /// Both maps' windows over slots `[offset, offset + len)`, bounds-checked.
    fn windows(&self, offset: u32, len: usize, write: bool) -> Result<(Window, Window), SyncError> {
        let end = offset as usize + len;
        if end > self.slots {
            return Err(SyncError::TableBounds {
                offset,
                end,
                slots: self.slots,
            });
        }
        let err = |e: DataplaneError| SyncError::Write {
            what: format!("table @{offset}"),
            source: e.into(),
        };
        let at = offset as usize;
        Ok((
            map_window(&self.words, self.page, at * WORD, len * WORD, write).map_err(err)?,
            map_window(&self.states, self.page, at * STATE, len * STATE, write).map_err(err)?,
        ))
    }

    fn write(&mut self, offset: u32, slots: &[Slot]) -> Result<(), SyncError> {
        if slots.is_empty() {
            return Ok(());
        }
        let (w, s) = self.windows(offset, slots.len(), true)?;
        // SAFETY: the windows cover these slots (16-bit words, 8-byte states, aligned as the
        // maps are); the kernel reads them concurrently, but only in a region no service
        // entry points at yet.
        let (words, states) = unsafe {
            (
                std::slice::from_raw_parts_mut(w.first.cast::<u16>(), slots.len()),
                std::slice::from_raw_parts_mut(s.first.cast::<SlotState>(), slots.len()),
            )
        };
        for ((word, state), slot) in words.iter_mut().zip(states.iter_mut()).zip(slots) {
            (*word, *state) = slot.encode();
        }
        // The service update that publishes this region must not overtake these stores.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn read(&self, offset: u32, len: u32) -> Vec<Slot> {
        let start = (offset as usize).min(self.slots);
        let end = (offset as usize + len as usize).min(self.slots);
        if end == start {
            return Vec::new();
        }
        let Ok((w, s)) = self.windows(start as u32, end - start, false) else {
            return Vec::new();
        };
        // SAFETY: the windows cover these slots.
        let (words, states) = unsafe {
            (
                std::slice::from_raw_parts(w.first.cast::<u16>(), end - start),
                std::slice::from_raw_parts(s.first.cast::<SlotState>(), end - start),
            )
        };
        words
            .iter()
            .zip(states)
            .map(|(w, s)| Slot::decode(*w, *s))
            .collect()
    }

    /// Settles, in the active table itself, the slots [`model::settles`] allows: each
    /// slot's word loses its `SLOT_CHANGED` mark with a compare-and-swap (keeping any other
    /// change the program made), and if the program stamped the slot's `seen` meanwhile
    /// (an older flow just sent a packet), the mark is put back.
    fn settle(
        &mut self,
        offset: u32,
        len: u32,
        now: u32,
        idle: u32,
    ) -> Result<SlotCounts, SyncError> {
        use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
        let mut counts = SlotCounts::default();
        if len == 0 {
            return Ok(counts);
        }
        let (w, s) = self.windows(offset, len as usize, true)?;
        // SAFETY: the windows cover these slots, aligned; the program reads and writes them
        // concurrently, so every access is atomic. A state's `seen` is its second u32.
        let (words, states) = unsafe {
            (
                std::slice::from_raw_parts(w.first.cast::<AtomicU16>(), len as usize),
                std::slice::from_raw_parts(s.first.cast::<[AtomicU32; 2]>(), len as usize),
            )
        };
        for (word, state) in words.iter().zip(states) {
            let old = word.load(Ordering::Acquire);
            if old & SLOT_CHANGED == 0 {
                continue;
            }
            let seen = state[1].load(Ordering::Acquire);
            let slot = Slot::new(
                u32::from(old & SLOT_ID),
                state[0].load(Ordering::Relaxed),
                seen,
            );
            if !model::settles(slot, now, idle) {
                counts.changed += 1;
                continue;
            }
            let new = (old & SLOT_ID) | SLOT_USED;
            if word
                .compare_exchange(old, new, Ordering::SeqCst, Ordering::Relaxed)
                .is_err()
            {
                counts.changed += 1;
                continue;
            }
            if state[1].load(Ordering::SeqCst) != seen {
                word.store(old, Ordering::SeqCst);
                counts.changed += 1;
                continue;
            }
            counts.settled += 1;
        }
        Ok(counts)
    }
}

/// Maps bytes `[start, start + len)` of an mmapable map (`len` >= 1, in bounds).
fn map_window(
    map: &MapData,
    page: usize,
    start: usize,
    len: usize,
    write: bool,
) -> Result<Window, DataplaneError> {
    use std::os::fd::AsRawFd;
    let from = start / page * page;
    let to = (start + len).div_ceil(page) * page;
    let prot = if write {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    // SAFETY: a shared mapping of a page-aligned range of an mmapable array map; the
    // kernel checks the range against the map's size.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            to - from,
            prot,
            libc::MAP_SHARED,
            map.fd().as_fd().as_raw_fd(),
            from as libc::off_t,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(DataplaneError::Mmap(std::io::Error::last_os_error()));
    }
    let base = base.cast::<u8>();
    Ok(Window {
        base,
        len: to - from,
        // SAFETY: within the mapping just made.
        first: unsafe { base.add(start - from) },
    })
}

/// SERVICE_INDEX, written in place through a memory mapping in the order
/// `gateway_common::ServiceSlot` gives, so that the program, which reads it without locks,
/// sees each service before or after a change.
struct ServiceIndex {
    map: MapData,
    page: usize,
}

/// What a probe of a key's buckets found.
enum Probe {
    /// The bucket that holds the key.
    Found(*mut ServiceSlot),
    /// Not there; the first bucket it may go in (empty or a tombstone), if any.
    Absent(Option<*mut ServiceSlot>),
}

impl ServiceIndex {
    /// Runs `f` on the whole index, mapped for writing.
    fn with<T>(&self, f: impl FnOnce(*mut ServiceSlot) -> T) -> Result<T, SyncError> {
        let bytes = SERVICE_BUCKETS as usize * std::mem::size_of::<ServiceSlot>();
        let w = map_window(&self.map, self.page, 0, bytes, true).map_err(|e| SyncError::Write {
            what: "the service index".into(),
            source: e.into(),
        })?;
        Ok(f(w.first.cast()))
    }

    /// The buckets of `key`, from its home, as the program probes them.
    fn probe(base: *mut ServiceSlot, key: &ServiceKey) -> Probe {
        let home = service_bucket(key);
        let mut free = None;
        for i in 0..SERVICE_PROBES {
            // SAFETY: the index is mapped whole; the bucket number is masked into it.
            let b = unsafe { base.add(((home + i) & (SERVICE_BUCKETS - 1)) as usize) };
            // SAFETY: as above; only this process writes the index.
            let found = unsafe { std::ptr::read_volatile(b) };
            match found.key.family {
                0 => return Probe::Absent(free.or(Some(b))),
                SERVICE_TOMBSTONE => {
                    free.get_or_insert(b);
                }
                _ if found.key == *key => return Probe::Found(b),
                _ => {}
            }
        }
        Probe::Absent(free)
    }

    fn set(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), SyncError> {
        use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
        let table = u64::from(value.table_offset) | u64::from(value.table_size) << 32;
        self.with(|base| {
            // SAFETY (each block): `b` is a bucket of the mapped index; `table` is 8-byte
            // aligned (offset 24 of a 40-byte value) and `key.family` a single byte, so
            // both are written with one store each, as the program may be reading them.
            match Self::probe(base, key) {
                Probe::Found(b) => unsafe {
                    std::ptr::write_volatile(&raw mut (*b).id, value.id);
                    std::ptr::write_volatile(&raw mut (*b).mode, value.mode);
                    std::ptr::write_volatile(&raw mut (*b).protect, value.protect);
                    AtomicU64::from_ptr(&raw mut (*b).table).store(table, Ordering::Release);
                    Ok(())
                },
                Probe::Absent(Some(b)) => unsafe {
                    let mut fresh = ServiceSlot {
                        key: *key,
                        id: value.id,
                        table,
                        mode: value.mode,
                        protect: value.protect,
                        _pad: [0; 6],
                    };
                    // Everything but the family first (the bucket still reads as empty or
                    // removed), then the family.
                    fresh.key.family = std::ptr::read_volatile(&raw const (*b).key.family);
                    std::ptr::write_volatile(b, fresh);
                    AtomicU8::from_ptr(&raw mut (*b).key.family)
                        .store(key.family, Ordering::Release);
                    Ok(())
                },
                Probe::Absent(None) => Err(SyncError::ServiceIndexFull {
                    id: value.id,
                    probes: SERVICE_PROBES,
                }),
            }
        })?
    }

    fn remove(&mut self, key: &ServiceKey) -> Result<(), SyncError> {
        use std::sync::atomic::{AtomicU8, Ordering};
        self.with(|base| {
            if let Probe::Found(b) = Self::probe(base, key) {
                // SAFETY: a bucket of the mapped index; one byte.
                unsafe {
                    AtomicU8::from_ptr(&raw mut (*b).key.family)
                        .store(SERVICE_TOMBSTONE, Ordering::Release);
                }
            }
        })
    }
}

/// How the program is attached.
enum Attachment {
    /// Owned by the program: dropping the data plane detaches it.
    Owned(XdpLinkId),
    /// Pinned on bpffs: stays attached when this process exits. Held for its descriptor.
    Pinned(#[allow(dead_code)] PinnedLink),
    /// A pinned link adopted from an earlier agent, now running our program (the program
    /// holds the descriptor).
    Adopted(#[allow(dead_code)] XdpLinkId),
}

/// The loaded object. Dropping it detaches the program and frees the maps, unless they are
/// pinned ([`Dataplane::load_pinned`]).
pub struct Dataplane {
    ebpf: Ebpf,
    link: Option<(Attachment, AttachedMode)>,
    options: LoadOptions,
    /// Where the maps and link are pinned, if they are.
    pin_dir: Option<std::path::PathBuf>,
    /// META as found in (or written to) the pin directory.
    meta: Option<Meta>,
    /// Whether the maps were adopted from an earlier agent rather than created.
    adopted: bool,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    index: ServiceIndex,
    local: HashMap<MapData, LocalKey, u8>,
    local_filter: Array<MapData, LocalFilter>,
    backends: Array<MapData, Backend>,
    settings: Array<MapData, Settings>,
    conntrack: HashMap<MapData, FlowKey, FlowValue>,
    stats: PerCpuArray<MapData, u64>,
    service_stats: PerCpuArray<MapData, TrafficStats>,
    backend_stats: PerCpuArray<MapData, TrafficStats>,
    tables: TableMem,
    limits: Array<MapData, Limits>,
    sources: HashMap<MapData, SourceKey, SourceBucket>,
    limited: HashMap<MapData, SourceKey, u32>,
    allowlist: LpmTrie<MapData, AllowAddr, u8>,
    protect_stats: PerCpuArray<MapData, ProtectStats>,
    nat: HashMap<MapData, FlowKey, NatValue>,
    nat_pool: Array<MapData, NatPool>,
    passive: PerCpuArray<MapData, PassiveStats>,
    /// The programs the main one tail-calls; our descriptor keeps them in it until the map
    /// is pinned beside the link (`attach`). None in objects without full-NAT.
    jump: Option<ProgramArray<MapData>>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, DataplaneError> {
    ebpf.take_map(name).ok_or(DataplaneError::NoMap(name))
}

fn map_err(what: &str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError + '_ {
    move |source| DataplaneError::Map {
        what: what.to_string(),
        source,
    }
}

impl Dataplane {
    /// Loads the embedded object and verifies the program, without attaching it. The maps
    /// are this process's own: they go away with it.
    pub fn load(options: LoadOptions) -> Result<Self, DataplaneError> {
        Self::load_in(options, None, crate::object::GATEWAY)
    }

    /// Like [`Dataplane::load`], from another build of the same program (same maps and
    /// program name): the benchmark's [`crate::object::GATEWAY_UNCHECKED`].
    pub fn load_object(options: LoadOptions, object: &[u8]) -> Result<Self, DataplaneError> {
        Self::load_in(options, None, object)
    }

    /// Like [`Dataplane::load`], with the maps pinned in `dir`: maps already pinned there
    /// by an earlier agent (same layout) are adopted with their contents - conntrack,
    /// tables, counters - and their sizes win over `options` (a warning says so).
    pub fn load_pinned(options: LoadOptions, dir: &Path) -> Result<Self, DataplaneError> {
        pin::prepare(dir)?;
        let found = pin::read_meta(dir)?;
        let mut options = options;
        if let Some(m) = found {
            let pinned = LoadOptions {
                conntrack_size: m.conntrack_size,
                max_services: m.max_services,
                max_table_size: m.max_table_size,
                kernel_log: options.kernel_log,
                sources_size: m.sources_size,
                nat_size: m.nat_size,
            };
            if pinned != options {
                warn!(
                    "the pinned maps in {} were created with conntrack_size {}, max_services {}, \
                     max_table_size {}, sources_size {}, nat_size {}; those stay until \
                     `gateway stop --detach` resets them",
                    dir.display(),
                    m.conntrack_size,
                    m.max_services,
                    m.max_table_size,
                    m.sources_size,
                    m.nat_size
                );
            }
            options = pinned;
        }
        let mut dp = Self::load_in(options, Some(dir), crate::object::GATEWAY)?;
        dp.adopted = found.is_some();
        dp.pin_dir = Some(dir.to_path_buf());
        match found {
            Some(m) => dp.meta = Some(m),
            None => {
                let m = Meta {
                    magic: META_MAGIC,
                    layout_version: LAYOUT_VERSION,
                    conntrack_size: options.conntrack_size,
                    max_services: options.max_services,
                    max_table_size: options.max_table_size,
                    attached_mode: 0,
                    sources_size: options.sources_size,
                    nat_size: options.nat_size,
                };
                dp.write_meta(m)?;
            }
        }
        Ok(dp)
    }

    fn write_meta(&mut self, m: Meta) -> Result<(), DataplaneError> {
        let mut meta: Array<&mut MapData, Meta> = Array::try_from(
            self.ebpf
                .map_mut(MAP_META)
                .ok_or(DataplaneError::NoMap(MAP_META))?,
        )
        .map_err(map_err(MAP_META))?;
        meta.set(0, m, 0).map_err(map_err("writing META"))?;
        self.meta = Some(m);
        Ok(())
    }

    fn load_in(
        options: LoadOptions,
        pin_dir: Option<&Path>,
        object: &[u8],
    ) -> Result<Self, DataplaneError> {
        let slots = options.layout().slots();
        let mut loader = EbpfLoader::new();
        loader
            .override_global(aya_log::LEVEL, &options.kernel_log, false)
            .map_max_entries(MAP_TABLES, slots / SLOTS_PER_LINE)
            .map_max_entries(MAP_SLOT_STATE, slots)
            .map_max_entries(MAP_CONNTRACK, options.conntrack_size)
            .map_max_entries(MAP_SOURCES, options.sources_size)
            .map_max_entries(MAP_NAT, options.nat_size);
        let paths: Vec<(&str, std::path::PathBuf)> = pin_dir
            .map(|d| MAP_NAMES.iter().map(|n| (*n, d.join(n))).collect())
            .unwrap_or_default();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object)?;
        program_mut(&mut ebpf)?
            .load()
            .map_err(|source| DataplaneError::Program {
                what: format!("verifying program `{PROG_GATEWAY}`"),
                source,
            })?;
        let services =
            HashMap::try_from(take(&mut ebpf, MAP_SERVICES)?).map_err(map_err(MAP_SERVICES))?;
        let backends =
            Array::try_from(take(&mut ebpf, MAP_BACKENDS)?).map_err(map_err(MAP_BACKENDS))?;
        let local = HashMap::try_from(take(&mut ebpf, MAP_LOCAL_ADDRS)?)
            .map_err(map_err(MAP_LOCAL_ADDRS))?;
        let settings =
            Array::try_from(take(&mut ebpf, MAP_SETTINGS)?).map_err(map_err(MAP_SETTINGS))?;
        let local_filter = Array::try_from(take(&mut ebpf, MAP_LOCAL_FILTER)?)
            .map_err(map_err(MAP_LOCAL_FILTER))?;
        let conntrack =
            HashMap::try_from(take(&mut ebpf, MAP_CONNTRACK)?).map_err(map_err(MAP_CONNTRACK))?;
        let stats =
            PerCpuArray::try_from(take(&mut ebpf, MAP_STATS)?).map_err(map_err(MAP_STATS))?;
        let service_stats = PerCpuArray::try_from(take(&mut ebpf, MAP_SERVICE_STATS)?)
            .map_err(map_err(MAP_SERVICE_STATS))?;
        let backend_stats = PerCpuArray::try_from(take(&mut ebpf, MAP_BACKEND_STATS)?)
            .map_err(map_err(MAP_BACKEND_STATS))?;
        let limits = Array::try_from(take(&mut ebpf, MAP_LIMITS)?).map_err(map_err(MAP_LIMITS))?;
        let sources =
            HashMap::try_from(take(&mut ebpf, MAP_SOURCES)?).map_err(map_err(MAP_SOURCES))?;
        let limited =
            HashMap::try_from(take(&mut ebpf, MAP_LIMITED)?).map_err(map_err(MAP_LIMITED))?;
        let allowlist =
            LpmTrie::try_from(take(&mut ebpf, MAP_ALLOWLIST)?).map_err(map_err(MAP_ALLOWLIST))?;
        let protect_stats = PerCpuArray::try_from(take(&mut ebpf, MAP_PROTECT_STATS)?)
            .map_err(map_err(MAP_PROTECT_STATS))?;
        let nat = HashMap::try_from(take(&mut ebpf, MAP_NAT)?).map_err(map_err(MAP_NAT))?;
        let nat_pool =
            Array::try_from(take(&mut ebpf, MAP_NAT_POOL)?).map_err(map_err(MAP_NAT_POOL))?;
        let passive =
            PerCpuArray::try_from(take(&mut ebpf, MAP_PASSIVE)?).map_err(map_err(MAP_PASSIVE))?;
        let jump = Self::load_jumps(&mut ebpf)?;
        let mut array = |name: &'static str| match take(&mut ebpf, name)? {
            Map::Array(data) => Ok(data),
            _ => Err(DataplaneError::NoMap(name)),
        };
        let tables = TableMem::new(array(MAP_TABLES)?, array(MAP_SLOT_STATE)?, slots)?;
        let index = ServiceIndex {
            map: array(MAP_SERVICE_INDEX)?,
            page: tables.page,
        };
        let logger = if options.kernel_log > 0 {
            aya_log::EbpfLogger::init(&mut ebpf)
                .map_err(|e| warn!("the program's log is unavailable: {}", Chain(&e)))
                .ok()
        } else {
            None
        };
        Ok(Self {
            ebpf,
            link: None,
            options,
            pin_dir: None,
            meta: None,
            adopted: false,
            services,
            index,
            local,
            local_filter,
            backends,
            settings,
            conntrack,
            stats,
            service_stats,
            backend_stats,
            tables,
            limits,
            sources,
            limited,
            allowlist,
            protect_stats,
            nat,
            nat_pool,
            passive,
            jump,
            logger,
        })
    }

    /// Verifies the programs the main one tail-calls and puts them into JUMP.
    fn load_jumps(ebpf: &mut Ebpf) -> Result<Option<ProgramArray<MapData>>, DataplaneError> {
        let Some(map) = ebpf.take_map(MAP_JUMP) else {
            return Ok(None);
        };
        let mut jump = ProgramArray::try_from(map).map_err(map_err(MAP_JUMP))?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROG_FULLNAT)
            .and_then(|p| p.try_into().ok())
            .ok_or(DataplaneError::NoProgram(PROG_FULLNAT))?;
        let verify = |source| DataplaneError::Program {
            what: format!("verifying program `{PROG_FULLNAT}`"),
            source,
        };
        prog.load().map_err(verify)?;
        let fd = prog.fd().map_err(verify)?;
        jump.set(JUMP_FULLNAT, fd, 0)
            .map_err(map_err("putting the full-NAT program into JUMP"))?;
        Ok(Some(jump))
    }

    /// Pins JUMP beside the link, replacing an earlier agent's: the program the link now
    /// runs must find its own tail-call targets after this process exits.
    fn pin_jumps(&mut self, dir: &Path) -> Result<(), DataplaneError> {
        let Some(jump) = self.jump.take() else {
            return Ok(());
        };
        let path = dir.join(MAP_JUMP);
        let err = |e: Box<dyn std::error::Error + Send + Sync>| DataplaneError::Link {
            what: format!("pinning {}", path.display()),
            source: e,
        };
        if path.exists() {
            std::fs::remove_file(&path).map_err(|e| err(e.into()))?;
        }
        jump.pin(&path).map_err(|e| err(e.into()))
    }

    pub fn options(&self) -> LoadOptions {
        self.options
    }

    /// Whether the maps came from an earlier agent's pinned state.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Where the maps are pinned, if they are.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// The reader of the program's log ring, for the agent to poll.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    /// Attaches to `ifindex`. `Auto` tries native mode and falls back to generic mode with a
    /// warning, since not every driver implements XDP.
    pub fn attach(
        &mut self,
        ifindex: u32,
        ifname: &str,
        mode: XdpMode,
    ) -> Result<AttachedMode, DataplaneError> {
        if let Some(dir) = self.pin_dir.clone() {
            let path = dir.join(pin::LINK);
            if path.exists() {
                match self.adopt_link(&path, ifname, mode) {
                    Ok(m) => return Ok(m),
                    // E.g. the interface was deleted and created again: the old link is
                    // defunct. The maps are still good; attach a new link beside them.
                    Err(e) => {
                        warn!("{}; attaching a new link instead", Chain(&e));
                        std::fs::remove_file(&path).map_err(|e| DataplaneError::Link {
                            what: format!("removing the stale link {}", path.display()),
                            source: e.into(),
                        })?;
                    }
                }
            }
        }
        let prog = program_mut(&mut self.ebpf)?;
        let attempt = |prog: &mut Xdp, m: AyaMode| prog.attach_to_if_index(ifindex, m);
        let (id, attached) = match mode {
            XdpMode::Native => (attempt(prog, AyaMode::Driver), AttachedMode::Native),
            XdpMode::Generic => (attempt(prog, AyaMode::Skb), AttachedMode::Generic),
            XdpMode::Auto => match attempt(prog, AyaMode::Driver) {
                Ok(id) => (Ok(id), AttachedMode::Native),
                Err(e) => {
                    warn!(
                        "native XDP on {ifname} failed ({}); falling back to generic mode, \
                         which is slower",
                        Chain(&e)
                    );
                    (attempt(prog, AyaMode::Skb), AttachedMode::Generic)
                }
            },
        };
        let id = id.map_err(|source| DataplaneError::Program {
            what: format!("attaching to {ifname} in {attached} mode"),
            source,
        })?;
        info!("attached to {ifname} (ifindex {ifindex}) in {attached} mode");
        let Some(dir) = self.pin_dir.clone() else {
            self.link = Some((Attachment::Owned(id), attached));
            return Ok(attached);
        };
        // Pin the link so the program stays attached when this process exits.
        let prog = program_mut(&mut self.ebpf)?;
        let link = prog
            .take_link(id)
            .map_err(|source| DataplaneError::Program {
                what: "taking the XDP link".into(),
                source,
            })?;
        let fd_link = FdLink::try_from(link).map_err(|e| DataplaneError::Link {
            what: "the XDP link cannot be pinned (attached through netlink, kernel < 5.9?)".into(),
            source: e.into(),
        })?;
        let pinned = fd_link
            .pin(dir.join(pin::LINK))
            .map_err(|e| DataplaneError::Link {
                what: format!("pinning the XDP link in {}", dir.display()),
                source: e.into(),
            })?;
        self.link = Some((Attachment::Pinned(pinned), attached));
        self.pin_jumps(&dir)?;
        if let Some(mut m) = self.meta {
            m.attached_mode = match attached {
                AttachedMode::Native => META_MODE_NATIVE,
                AttachedMode::Generic => META_MODE_GENERIC,
            };
            self.write_meta(m)?;
        }
        Ok(attached)
    }

    /// Swaps our program into the link an earlier agent pinned: one atomic replacement, so
    /// no packet meets a detached interface.
    fn adopt_link(
        &mut self,
        path: &Path,
        ifname: &str,
        mode: XdpMode,
    ) -> Result<AttachedMode, DataplaneError> {
        let link_err = |what: &str| {
            let what = format!("{what} {}", path.display());
            move |e: Box<dyn std::error::Error + Send + Sync>| DataplaneError::Link {
                what,
                source: e,
            }
        };
        let pinned =
            PinnedLink::from_pin(path).map_err(|e| link_err("opening the link")(e.into()))?;
        let xdp_link = XdpLink::try_from(FdLink::from(pinned))
            .map_err(|e| link_err("the pinned object is not an XDP link:")(e.into()))?;
        let prog = program_mut(&mut self.ebpf)?;
        let id = prog
            .attach_to_link(xdp_link)
            .map_err(|e| link_err("replacing the program of")(e.into()))?;
        let attached = match self.meta.map(|m| m.attached_mode) {
            Some(META_MODE_GENERIC) => AttachedMode::Generic,
            _ => AttachedMode::Native,
        };
        let wanted = match mode {
            XdpMode::Native => Some(AttachedMode::Native),
            XdpMode::Generic => Some(AttachedMode::Generic),
            XdpMode::Auto => None,
        };
        if wanted.is_some_and(|w| w != attached) {
            warn!(
                "the pinned link on {ifname} is in {attached} mode; xdp_mode takes effect \
                 after `gateway stop --detach`"
            );
        }
        info!("adopted the pinned link on {ifname} ({attached} mode): program replaced");
        self.link = Some((Attachment::Adopted(id), attached));
        if let Some(dir) = self.pin_dir.clone() {
            self.pin_jumps(&dir)?;
        }
        Ok(attached)
    }

    /// The mode the program is attached in, if it is.
    pub fn attached_mode(&self) -> Option<AttachedMode> {
        self.link.as_ref().map(|(_, m)| *m)
    }

    /// The maps' current contents as an [`Applied`] state, and which backend id belongs to
    /// which service: what an adopting agent starts its diff from.
    pub fn read_applied(&self) -> Result<Applied, DataplaneError> {
        let mut applied = Applied {
            settings: Some(
                self.settings
                    .get(&0, 0)
                    .map_err(map_err("reading SETTINGS"))?,
            ),
            ..Applied::default()
        };
        for id in 1..self.backends.len() {
            let b = self
                .backends
                .get(&id, 0)
                .map_err(map_err("reading BACKENDS"))?;
            if b.family != 0 {
                applied.backends.insert(id, b);
            }
        }
        for entry in self.services.iter() {
            let (key, value) = entry.map_err(map_err("reading SERVICES"))?;
            let table: Vec<u32> = self
                .tables
                .read(value.table_offset, value.table_size)
                .iter()
                .map(Slot::cur)
                .collect();
            applied.services.insert(
                key,
                AppliedService {
                    value,
                    table_hash: model::table_hash(&table),
                },
            );
        }
        for entry in self.local.iter() {
            let (key, why) = entry.map_err(map_err("reading LOCAL_ADDRS"))?;
            applied.local.insert(key, why);
        }
        applied.local_filter = self
            .local_filter
            .get(&0, 0)
            .map_err(map_err("reading LOCAL_FILTER"))?;
        for id in 0..self.limits.len() {
            let l = self.limits.get(&id, 0).map_err(map_err("reading LIMITS"))?;
            if l != Limits::default() {
                applied.limits.insert(id, l);
            }
        }
        for key in self.allowlist.keys() {
            let key = key.map_err(map_err("reading ALLOWLIST"))?;
            applied.allowlist.insert((key.prefix_len(), key.data()));
        }
        applied.nat_pool = Some(
            self.nat_pool
                .get(&0, 0)
                .map_err(map_err("reading NAT_POOL"))?,
        );
        Ok(applied)
    }

    /// The kernel's id of the loaded program (as `bpftool prog` shows it).
    pub fn program_id(&self) -> Option<u32> {
        self.program().ok()?.info().ok().map(|i| i.id())
    }

    /// Detaches the program if it is attached, and removes the pinned state if there is
    /// some (conntrack and counters go with it).
    pub fn detach(&mut self) -> Result<(), DataplaneError> {
        match self.link.take() {
            Some((Attachment::Owned(id), _)) => {
                program_mut(&mut self.ebpf)?.detach(id).map_err(|source| {
                    DataplaneError::Program {
                        what: "detaching".into(),
                        source,
                    }
                })?;
            }
            // `pin::remove` detaches the link for every holder.
            Some((Attachment::Pinned(_) | Attachment::Adopted(_), _)) | None => {}
        }
        if let Some(dir) = self.pin_dir.take() {
            pin::remove(&dir)?;
        }
        Ok(())
    }

    /// Leaves the program attached and the maps pinned for the next agent to adopt: our
    /// descriptors close when this value drops, and the pins keep the rest alive.
    pub fn keep(&mut self) {
        self.link = None;
        self.pin_dir = None;
    }

    /// The full-NAT program (tail-called by the main one), e.g. for its verifier count.
    pub fn fullnat_program(&self) -> Result<&Xdp, DataplaneError> {
        self.ebpf
            .program(PROG_FULLNAT)
            .and_then(|p| p.try_into().ok())
            .ok_or(DataplaneError::NoProgram(PROG_FULLNAT))
    }

    /// The loaded program, e.g. for BPF_PROG_TEST_RUN.
    pub fn program(&self) -> Result<&Xdp, DataplaneError> {
        self.ebpf
            .program(PROG_GATEWAY)
            .and_then(|p| p.try_into().ok())
            .ok_or(DataplaneError::NoProgram(PROG_GATEWAY))
    }

    /// The global counters, summed over CPUs, indexed like `gateway_common::STAT_*`.
    pub fn global_stats(&self) -> Result<Vec<u64>, DataplaneError> {
        (0..STAT_COUNT)
            .map(|i| {
                self.stats
                    .get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(map_err("reading STATS"))
            })
            .collect()
    }

    fn traffic(
        map: &PerCpuArray<MapData, TrafficStats>,
        i: u32,
    ) -> Result<TrafficStats, DataplaneError> {
        let per_cpu = map.get(&i, 0).map_err(map_err("reading traffic stats"))?;
        Ok(per_cpu
            .iter()
            .fold(TrafficStats::default(), |a, s| TrafficStats {
                packets: a.packets + s.packets,
                bytes: a.bytes + s.bytes,
                new_flows: a.new_flows + s.new_flows,
            }))
    }

    /// A service's traffic, summed over CPUs.
    pub fn service_stats(&self, id: u32) -> Result<TrafficStats, DataplaneError> {
        Self::traffic(&self.service_stats, id)
    }

    /// A backend's traffic, summed over CPUs.
    pub fn backend_stats(&self, id: u32) -> Result<TrafficStats, DataplaneError> {
        Self::traffic(&self.backend_stats, id)
    }

    /// The backend a flow is pinned to, if conntrack has it.
    pub fn conntrack_get(&self, key: &FlowKey) -> Option<u32> {
        self.conntrack.get(key, 0).ok().map(|v| v.backend)
    }

    /// Conntrack entries (walks the map; for status output and tests).
    pub fn conntrack_len(&self) -> usize {
        self.conntrack.keys().filter(|k| k.is_ok()).count()
    }

    /// The full-NAT mappings, each direction under the key it arrives with (walks the map;
    /// entries the program removes meanwhile are skipped).
    pub fn nat_entries(&self) -> Vec<(FlowKey, NatValue)> {
        self.nat.iter().filter_map(Result::ok).collect()
    }

    /// Removes one full-NAT entry (absent or not), as an LRU eviction would.
    pub fn nat_remove(&mut self, key: &FlowKey) {
        let _ = self.nat.remove(key);
    }

    /// Forgets one tracked flow (absent or not).
    pub fn conntrack_remove(&mut self, key: &FlowKey) {
        let _ = self.conntrack.remove(key);
    }

    /// Forgets every tracked flow.
    pub fn conntrack_clear(&mut self) {
        let keys: Vec<FlowKey> = self.conntrack.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.conntrack.remove(&k);
        }
    }

    /// A service's protection counters, summed over CPUs.
    pub fn protect_stats(&self, id: u32) -> Result<ProtectStats, DataplaneError> {
        let per_cpu = self
            .protect_stats
            .get(&id, 0)
            .map_err(map_err("reading PROTECT_STATS"))?;
        Ok(per_cpu
            .iter()
            .fold(ProtectStats::default(), |a, s| ProtectStats {
                drop_new_flows: a.drop_new_flows + s.drop_new_flows,
                drop_packets: a.drop_packets + s.drop_packets,
                monitor_new_flows: a.monitor_new_flows + s.monitor_new_flows,
                monitor_packets: a.monitor_packets + s.monitor_packets,
            }))
    }

    /// What full-NAT answers said of backend `id` (summed over CPUs; counts only grow).
    pub fn passive_stats(&self, id: u32) -> Result<PassiveStats, DataplaneError> {
        let per_cpu = self
            .passive
            .get(&id, 0)
            .map_err(map_err("reading PASSIVE"))?;
        Ok(per_cpu
            .iter()
            .fold(PassiveStats::default(), |a, s| PassiveStats {
                answered: a.answered + s.answered,
                refused: a.refused + s.refused,
                unanswered: a.unanswered + s.unanswered,
            }))
    }

    /// The sources LIMITED holds (refused lately), with their buckets where SOURCES still
    /// has them.
    pub fn limited(&self) -> Vec<Limited> {
        self.limited
            .iter()
            .filter_map(Result::ok)
            .map(|(key, since)| Limited {
                key,
                since,
                bucket: self.sources.get(&key, 0).ok(),
            })
            .collect()
    }

    /// Forgets a source in LIMITED (it is no longer refused).
    pub fn forget_limited(&mut self, key: &SourceKey) {
        let _ = self.limited.remove(key);
    }

    /// The table slots `[offset, offset + len)` as the kernel sees them.
    pub fn read_table(&self, offset: u32, len: u32) -> Vec<Slot> {
        self.tables.read(offset, len)
    }
}

/// What the agent needs of a data plane besides writing its maps ([`MapWriter`]): how it
/// was loaded, what its maps hold, its counters. [`Dataplane`] is the real one over aya;
/// the agent's unit tests drive `testing::FakeDataplane`, in-memory maps, instead.
pub trait DataplaneOps: MapWriter {
    fn options(&self) -> LoadOptions;
    /// Whether the program can forward on `interface`: attached, its pinned link (if
    /// pinned) still there, and the interface up with a carrier.
    fn forwarding(&self, interface: &str) -> bool;
    fn adopted(&self) -> bool;
    fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>>;
    fn attached_mode(&self) -> Option<AttachedMode>;
    fn read_applied(&self) -> Result<Applied, DataplaneError>;
    fn program_id(&self) -> Option<u32>;
    fn global_stats(&self) -> Result<Vec<u64>, DataplaneError>;
    fn service_stats(&self, id: u32) -> Result<TrafficStats, DataplaneError>;
    fn backend_stats(&self, id: u32) -> Result<TrafficStats, DataplaneError>;
    fn conntrack_len(&self) -> usize;
    fn protect_stats(&self, id: u32) -> Result<ProtectStats, DataplaneError>;
    fn passive_stats(&self, id: u32) -> Result<PassiveStats, DataplaneError>;
    /// Calls `f` with each full-NAT entry (a walk of the map, nothing collected: the map may
    /// hold tens of millions).
    fn nat_visit(&self, f: &mut dyn FnMut(&FlowKey, &NatValue)) -> Result<(), DataplaneError>;
    fn limited(&self) -> Vec<Limited>;
    fn forget_limited(&mut self, key: &SourceKey);
}

impl DataplaneOps for Dataplane {
    fn options(&self) -> LoadOptions {
        Dataplane::options(self)
    }
    fn forwarding(&self, interface: &str) -> bool {
        self.link.is_some()
            && self
                .pin_dir
                .as_ref()
                .is_none_or(|d| d.join(pin::LINK).exists())
            && crate::sys::interface_up(interface)
    }
    fn adopted(&self) -> bool {
        Dataplane::adopted(self)
    }
    fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        Dataplane::take_logger(self)
    }
    fn attached_mode(&self) -> Option<AttachedMode> {
        Dataplane::attached_mode(self)
    }
    fn read_applied(&self) -> Result<Applied, DataplaneError> {
        Dataplane::read_applied(self)
    }
    fn program_id(&self) -> Option<u32> {
        Dataplane::program_id(self)
    }
    fn global_stats(&self) -> Result<Vec<u64>, DataplaneError> {
        Dataplane::global_stats(self)
    }
    fn service_stats(&self, id: u32) -> Result<TrafficStats, DataplaneError> {
        Dataplane::service_stats(self, id)
    }
    fn backend_stats(&self, id: u32) -> Result<TrafficStats, DataplaneError> {
        Dataplane::backend_stats(self, id)
    }
    fn conntrack_len(&self) -> usize {
        Dataplane::conntrack_len(self)
    }
    fn protect_stats(&self, id: u32) -> Result<ProtectStats, DataplaneError> {
        Dataplane::protect_stats(self, id)
    }
    fn passive_stats(&self, id: u32) -> Result<PassiveStats, DataplaneError> {
        Dataplane::passive_stats(self, id)
    }
    fn nat_visit(&self, f: &mut dyn FnMut(&FlowKey, &NatValue)) -> Result<(), DataplaneError> {
        for (k, v) in self.nat.iter().filter_map(Result::ok) {
            f(&k, &v);
        }
        Ok(())
    }
    fn limited(&self) -> Vec<Limited> {
        Dataplane::limited(self)
    }
    fn forget_limited(&mut self, key: &SourceKey) {
        Dataplane::forget_limited(self, key)
    }
}

impl MapWriter for Dataplane {
    fn set_settings(&mut self, s: &Settings) -> Result<(), SyncError> {
        self.settings.set(0, s, 0).map_err(write_err("settings"))
    }

    fn set_nat_pool(&mut self, p: &NatPool) -> Result<(), SyncError> {
        self.nat_pool
            .set(0, p, 0)
            .map_err(write_err("the SNAT pool"))
    }

    fn set_backend(&mut self, id: u32, b: &Backend) -> Result<(), SyncError> {
        self.backends
            .set(id, b, 0)
            .map_err(write_err(&format!("backend {id}")))
    }

    fn write_table(&mut self, offset: u32, prior: Prior, slots: &[u32]) -> Result<(), SyncError> {
        let now = sys::monotonic_secs();
        let next = model::next_slots(prior, |at, n| self.tables.read(at, n), slots, now);
        self.tables.write(offset, &next)
    }

    fn settle_slots(&mut self, offset: u32, len: u32, idle: u32) -> Result<SlotCounts, SyncError> {
        self.tables.settle(offset, len, sys::monotonic_secs(), idle)
    }

    /// The index the program reads first, then the record user space reads back (a
    /// failure between the two is repaired by the next diff, which starts from the record).
    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), SyncError> {
        self.index.set(key, value)?;
        self.services
            .insert(key, value, 0)
            .map_err(write_err(&format!("service {}", value.id)))
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), SyncError> {
        self.index.remove(key)?;
        self.services
            .remove(key)
            .map_err(write_err("service removal"))
    }

    fn set_local(&mut self, key: &LocalKey, why: u8) -> Result<(), SyncError> {
        self.local
            .insert(key, why, 0)
            .map_err(write_err("a local address"))
    }

    fn remove_local(&mut self, key: &LocalKey) -> Result<(), SyncError> {
        self.local
            .remove(key)
            .map_err(write_err("a local address's removal"))
    }

    fn set_local_filter(&mut self, f: &LocalFilter) -> Result<(), SyncError> {
        self.local_filter
            .set(0, f, 0)
            .map_err(write_err("the local filter"))
    }

    fn set_limits(&mut self, id: u32, l: &Limits) -> Result<(), SyncError> {
        self.limits
            .set(id, l, 0)
            .map_err(write_err(&format!("limits of service {id}")))
    }

    fn set_allow(&mut self, key: &AllowKey) -> Result<(), SyncError> {
        self.allowlist
            .insert(&LpmKey::new(key.0, key.1), 1, 0)
            .map_err(write_err("an allowlist prefix"))
    }

    fn remove_allow(&mut self, key: &AllowKey) -> Result<(), SyncError> {
        self.allowlist
            .remove(&LpmKey::new(key.0, key.1))
            .map_err(write_err("an allowlist prefix's removal"))
    }
}

/// A source LIMITED holds: refused (or counted, in monitor mode) since second `since`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limited {
    pub key: SourceKey,
    pub since: u32,
    pub bucket: Option<SourceBucket>,
}

fn write_err(what: &str) -> impl FnOnce(aya::maps::MapError) -> SyncError + '_ {
    move |e| SyncError::Write {
        what: what.to_string(),
        source: e.into(),
    }
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    ebpf.program_mut(PROG_GATEWAY)
        .and_then(|p| p.try_into().ok())
        .ok_or(DataplaneError::NoProgram(PROG_GATEWAY))
}
