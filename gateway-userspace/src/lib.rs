//! The gateway agent: loads the XDP program, keeps its maps in step with the configuration
//! and the backends' health, and reports what the data plane does.

pub mod admin;
pub mod agent;
pub mod check;
pub mod config;
pub mod dataplane;
pub mod health;
pub mod maglev;
pub mod neigh;
pub mod object;
pub mod overrides;
pub mod pin;
pub mod plan;
pub mod sync;
pub mod sys;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
