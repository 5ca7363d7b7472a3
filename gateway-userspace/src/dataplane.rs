//! Loading, attaching and reading the XDP program: the only module that talks to aya.
use aya::{
    Ebpf, EbpfLoader,
    maps::PerCpuArray,
    programs::{Xdp, XdpMode as AyaMode, xdp::XdpLinkId},
};
use gateway_common::{MAP_STATS, PROG_GATEWAY, STAT_COUNT};
use log::{info, warn};
use thiserror::Error;

use crate::config::XdpMode;

#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program `{0}` not found in the object")]
    NoProgram(&'static str),
    #[error("map `{0}` not found in the object")]
    NoMap(&'static str),
    #[error("{what}: {source}")]
    Program {
        what: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("{what}: {source}")]
    Map {
        what: String,
        #[source]
        source: aya::maps::MapError,
    },
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

/// The loaded object. Dropping it detaches the program and frees the maps.
pub struct Dataplane {
    ebpf: Ebpf,
    link: Option<(XdpLinkId, AttachedMode)>,
}

impl Dataplane {
    /// Loads the embedded object and verifies the program, without attaching it.
    pub fn load() -> Result<Self, DataplaneError> {
        Self::load_bytes(crate::object::GATEWAY)
    }

    pub fn load_bytes(object: &[u8]) -> Result<Self, DataplaneError> {
        let mut ebpf = EbpfLoader::new().load(object)?;
        let prog = program_mut(&mut ebpf)?;
        prog.load().map_err(|source| DataplaneError::Program {
            what: format!("verifying program `{PROG_GATEWAY}`"),
            source,
        })?;
        Ok(Self { ebpf, link: None })
    }

    /// Attaches to `ifindex`. `Auto` tries native mode and falls back to generic mode with a
    /// warning, since not every driver implements XDP.
    pub fn attach(
        &mut self,
        ifindex: u32,
        ifname: &str,
        mode: XdpMode,
    ) -> Result<AttachedMode, DataplaneError> {
        let prog = program_mut(&mut self.ebpf)?;
        let attempt = |prog: &mut Xdp, m: AyaMode| prog.attach_to_if_index(ifindex, m);
        let (id, attached) = match mode {
            XdpMode::Native => (attempt(prog, AyaMode::Driver), AttachedMode::Native),
            XdpMode::Generic => (attempt(prog, AyaMode::Skb), AttachedMode::Generic),
            XdpMode::Auto => match attempt(prog, AyaMode::Driver) {
                Ok(id) => (Ok(id), AttachedMode::Native),
                Err(e) => {
                    warn!(
                        "native XDP on {ifname} failed ({e}); falling back to generic mode, \
                         which is slower"
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
        self.link = Some((id, attached));
        Ok(attached)
    }

    /// Detaches the program if it is attached.
    pub fn detach(&mut self) -> Result<(), DataplaneError> {
        if let Some((id, _)) = self.link.take() {
            program_mut(&mut self.ebpf)?
                .detach(id)
                .map_err(|source| DataplaneError::Program {
                    what: "detaching".into(),
                    source,
                })?;
        }
        Ok(())
    }

    pub fn program(&self) -> Result<&Xdp, DataplaneError> {
        self.ebpf
            .program(PROG_GATEWAY)
            .and_then(|p| p.try_into().ok())
            .ok_or(DataplaneError::NoProgram(PROG_GATEWAY))
    }

    /// The global counters, summed over CPUs, indexed like `gateway_common::STAT_*`.
    pub fn global_stats(&self) -> Result<Vec<u64>, DataplaneError> {
        let map = self
            .ebpf
            .map(MAP_STATS)
            .ok_or(DataplaneError::NoMap(MAP_STATS))?;
        let stats = PerCpuArray::<_, u64>::try_from(map).map_err(|source| DataplaneError::Map {
            what: format!("opening {MAP_STATS}"),
            source,
        })?;
        (0..STAT_COUNT)
            .map(|i| {
                stats
                    .get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(|source| DataplaneError::Map {
                        what: format!("reading {MAP_STATS}[{i}]"),
                        source,
                    })
            })
            .collect()
    }
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    ebpf.program_mut(PROG_GATEWAY)
        .and_then(|p| p.try_into().ok())
        .ok_or(DataplaneError::NoProgram(PROG_GATEWAY))
}
