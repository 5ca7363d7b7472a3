//! The gateway agent: loads the XDP program, keeps its maps in step with the configuration
//! and the backends' health, and reports what the data plane does.
//!
//! # Layout
//!
//! One job per module; data flows one way, from the config and the facts about backends to
//! the maps.
//!
//! - [`config`]: the file, parsed and validated into types that cannot be invalid (and
//!   [`config::LoadTime`], the settings only a restart changes).
//! - [`health`]: probes (half-open TCP, HTTP), the rise/fall state machine and the
//!   scheduler; it reports verdicts per check and knows nothing of services.
//! - [`neigh`]: each backend's next-hop MAC, from the kernel's routes and neighbours over
//!   rtnetlink, with change notifications (behind [`neigh::NextHops`]).
//! - [`overrides`]: admin API changes on top of the file.
//! - [`plan`]: pure `plan(config, facts) -> Plan`: the desired maps and why each backend
//!   is where it is; [`maglev`] builds its tables.
//! - [`model`]: the maps as user space holds them: `Desired` and `Applied` states, the
//!   table `Layout`, the encoders of config values into `gateway-common`'s map types, and
//!   `BackendKey`. [`plan`] and [`mapsync`] both build on it; it depends on neither.
//! - [`mapsync`]: `diff(applied, desired) -> ops` and `apply(ops, &mut impl MapWriter)`.
//! - [`dataplane`]: loads and attaches the program and implements `MapWriter` and
//!   `DataplaneOps` (what the agent reads) over aya's maps; [`pin`] keeps them on bpffs
//!   across restarts; [`object`] embeds the objects.
//! - [`agent`]: `gateway run` ([`agent::run`]) and the control loop that owns all of the
//!   above and answers the API: the loop and `replan` in `agent/mod.rs`, the backend
//!   registry (probes, health, next hops) in `backends.rs`, reloads and API overrides in
//!   `changes.rs`, what it reports in `status.rs`, the sources over a limit (source
//!   limits and the flood guard are the data plane's; `[protection]` is in [`config`]) in
//!   `protection.rs`, full-NAT's `/nat` report and the drain of removed SNAT addresses in
//!   `nat.rs`. Generic over `DataplaneOps` and
//!   `NextHops`, so its unit tests run over in-memory maps and a fixed neighbour table
//!   (`testing::FakeDataplane`, `testing::FixedHops`). `main.rs` only parses the command
//!   line and dispatches.
//! - [`bgp`]: announcing VIPs through BIRD 2: the BIRD configuration it writes, the
//!   announcer's hysteresis, BIRD's control socket ([`bgp::bird`]), the speaker's own
//!   thread that the agent hands each VIP's servability to ([`bgp::worker`]), and
//!   `gateway bgp-guard` ([`bgp::guard`]).
//! - [`admin`]: the HTTP API, the status snapshot and the metrics text, and the status
//!   page (`admin/ui/`: its HTML, script and style, embedded and served at `/ui`); [`sys`]
//!   the preflight checks; [`error`] how errors are written and printed.
//! - [`preview`]: what a config would do (`gateway check`): its plan with every backend
//!   not in maint assumed healthy, and the change from a running config.
//! - [`report`]: the text the CLI prints: `gateway status`'s tables from a snapshot and
//!   `gateway check`'s from [`preview`].
//!
//! A probe verdict reaches the maps this way: a check's task in [`health::Prober`] sends an
//! [`health::Event`] to the agent's loop (`Agent::serve`); `Agent::on_event` records it in
//! the backend's record, and a replan (`Agent::replan`, paced by its own cost) runs
//! [`plan::plan`] over the config and the facts (health, next hops, time), then
//! [`mapsync::diff`] against what was applied and [`mapsync::apply`] through the
//! [`dataplane::Dataplane`]. Next-hop changes, slow-start steps, reloads and API changes
//! take the same path.

pub mod admin;
pub mod agent;
pub mod bgp;
pub mod config;
pub mod dataplane;
pub mod error;
pub mod health;
pub mod maglev;
pub mod mapsync;
pub mod model;
pub mod neigh;
pub mod object;
pub mod overrides;
pub mod pin;
pub mod plan;
pub mod preview;
pub mod report;
pub mod sys;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
