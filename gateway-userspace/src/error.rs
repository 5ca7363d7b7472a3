//! How errors are written here: each module has `thiserror` enums whose message says what
//! failed, with its own values (`writing BACKENDS`, `reading the state file /run/...`); the
//! error that caused it is its `#[source]`, never repeated in the message. Whoever prints an
//! error prints the whole chain: `main` through anyhow's `{:#}`, the agent's log lines and
//! API answers through [`Chain`]. Plain strings are kept for reasons shown to people - a
//! probe's verdict, why a next hop is missing - which are data, not errors.
use std::{error::Error, fmt};

/// Displays an error and its sources, `outer: cause: root cause`.
pub struct Chain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("writing BACKENDS")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_chain_names_every_cause_once() {
        let e = Outer(std::io::Error::other("permission denied"));
        assert_eq!(Chain(&e).to_string(), "writing BACKENDS: permission denied");
    }
}
