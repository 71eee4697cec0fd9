//! Every integration test in one test binary: one compile and one link of the test crate instead
//! of one per file (25 before, each linking the whole dependency graph), which cut the
//! fresh-clone build time and `target/` size (README, "Run the tests"). Each file is a module, so
//! its tests are named `<file>::<test>`: `cargo test --test suite -- wakeups::` runs one file's.
//! `tests/support` is the shared harness (servers, databases, the real binary, PKI), which the
//! benches include too. One test keeps a binary of its own: `tests/postgres_soak.rs` compares
//! process-wide counts (file descriptors, memory) that other tests beside it would disturb.
//! The few tests here that measure this process's memory take `support::exclusive()`, and so do
//! those that allocate much in-process, so the two never overlap.

#[path = "../support/mod.rs"]
mod support;

mod architecture;
mod cli;
mod credentials;
mod deploy;
mod extremes;
mod failover;
mod fair_shares;
mod keda_protocol;
mod many_rows;
mod metric_spec;
mod monitoring;
mod observability;
mod oracle;
mod oracle_live;
mod poller_restart;
mod postgres;
mod postgres_faults;
mod push;
mod python_client;
mod security;
mod series;
mod sharing;
mod spec_cache;
mod tls;
mod wakeups;
