//! The command-line subcommands besides `serve`: clients of the server, not its parts. Each
//! talks to the server (or its configuration and databases) from the outside, as a user or a
//! test would; nothing in the server depends on them (except `serve --demo`, which creates the
//! demo database with [`demo::prepare`]).
//!
//! - [`probe`]: `orascale probe`, a KEDA-like gRPC client, for users and for our tests.
//! - [`check`]: `orascale check`, the connection doctor.
//! - [`demo`]: `orascale demo` and the `--demo` SQLite database with its walkthrough.

pub mod check;
pub mod demo;
pub mod probe;
