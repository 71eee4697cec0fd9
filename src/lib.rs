//! orascale: a KEDA external scaler that scales Kubernetes workloads on the result of a SQL query.
//!
//! # Layout
//! - [`config`]: process configuration from flags, environment and a TOML file; typed, no I/O
//!   beyond reading that file.
//! - [`trigger`]: the domain — [`trigger::ScalerSpec`], [`trigger::PollerKey`], wake-up
//!   settings; imported by `metadata` and `engine`, importing neither.
//! - [`metadata`]: a trigger's `scalerMetadata` map → a typed [`trigger::ScalerSpec`]; pure.
//! - [`guard`]: the SQL guard on every trigger's `query`; pure.
//! - [`source`]: the one small trait every database sits behind (Oracle, PostgreSQL, SQLite), and
//!   database-driven wake-ups (`source::wake`).
//! - [`engine`]: the [`engine::Registry`] of pollers (one per distinct trigger), the poller task and
//!   the cached [`engine::PollState`] each poller publishes into a `tokio::sync::watch` channel.
//! - [`grpc`]: KEDA's `ExternalScaler` service over the engine, the push state machine behind
//!   its server streams, the single error → `Status` mapping, and the generated protobuf types
//!   (which never leak into the engine).
//! - [`telemetry`]: a leaf (imports no other module): logging setup, metric names and buckets,
//!   the exporter, the admin HTTP endpoints (`/metrics`, `/healthz`, `/readyz`).
//! - [`tls`]: TLS and mTLS for the gRPC port, with certificate reload.
//! - [`app`]: wires it all together and owns the shutdown sequence (the binary, `main.rs`,
//!   prepares the `--demo` database: nothing in the library imports `cli`).
//! - [`cli`]: the other subcommands, clients of the server rather than its parts:
//!   `probe` (a KEDA-like client, for users and for our tests), `check` (the connection doctor)
//!   and `demo` (the `--demo` SQLite database).
//!
//! # Data flow
//! ```text
//! KEDA ──gRPC──► grpc::Scaler ──metadata::parse──► ScalerSpec ──► engine::Registry::entry(key)
//!                     ▲                                                   │ (create on miss)
//!                     │ read the cached PollState, never the database     ▼
//!                     └───────── watch::Receiver<PollState> ◄── Poller ──► source::Source ──► DB
//! ```
//! Pollers write, handlers read: only a poller ever talks to a database, so a slow or failing
//! database delays nobody's gRPC answer, and identical triggers share one query.
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod config;
pub mod engine;
pub mod grpc;
pub mod guard;
pub mod metadata;
pub mod source;
pub mod telemetry;
pub mod tls;
pub mod trigger;
