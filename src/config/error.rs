//! Configuration errors: every problem names where it came from (a file or an environment variable),
//! the tenant when there is one, and the key.

use std::fmt;

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file the offending value came from, or `environment variable WIZ_CONNECTOR__...`.
    pub origin: String,
    /// The tenant id when the problem is inside a tenant's table.
    pub tenant: Option<String>,
    /// The key, relative to the tenant's table for tenant problems (`page_size`), or the full dotted
    /// path otherwise (`connector.page_size`).
    pub key: String,
    /// What is wrong and, where it helps, what to do.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.origin)?;
        if let Some(t) = &self.tenant {
            write!(f, "tenant `{t}`: ")?;
        }
        write!(f, "key `{}`: {}", self.key, self.message)
    }
}

/// The configuration could not be loaded; holds every problem found, not just the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl ConfigError {
    pub fn single(p: Problem) -> Self {
        ConfigError { problems: vec![p] }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "invalid configuration: {one}"),
            many => {
                write!(f, "invalid configuration ({} problems):", many.len())?;
                for p in many {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}
