//! One file per subcommand. Each returns the process exit code; errors that stop a command are
//! `anyhow` errors, printed by `main`.

pub mod action;
pub mod check;
pub mod demo;
pub mod run;
pub mod simulate;
pub mod status;
pub mod validate;
