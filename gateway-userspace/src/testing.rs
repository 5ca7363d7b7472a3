//! Helpers for tests only: compiled into unit tests, and into the integration tests through
//! the `testing` feature, never into the agent.

/// Set by `cargo xtask test` (which runs as root): a test that would skip for want of root
/// or a capability fails instead, so the test command cannot pass green without running it.
pub const REQUIRE_PRIVILEGED: &str = "GATEWAY_REQUIRE_PRIVILEGED";

/// Prints why `test` cannot run here, or panics when the test command requires it to run.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os(REQUIRE_PRIVILEGED).is_some() {
        panic!("{test} cannot run here ({why}), and {REQUIRE_PRIVILEGED} says it must");
    }
    eprintln!("SKIPPED {test}: {why}");
}
