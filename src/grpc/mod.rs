//! KEDA's `ExternalScaler` service over the engine.
//!
//! - [`proto`]: the generated protobuf types, client and server; they stay inside this module
//!   (and the probe client): the engine never sees them.
//! - [`codec`]: prost with small per-RPC buffers (an open stream keeps its own).
//! - [`service`]: the five RPCs, and the checks of what every request names.
//! - [`push`]: the state machine behind a server stream (shutdown, errors, re-sends, a
//!   replaced poller), generic over what is sent: IsActive edges, metric spec changes.
//! - [`target`]: where a metric spec's target comes from (static, or a target query's value
//!   with the static one as its fallback), one rule for GetMetricSpec and StreamMetricSpec.
//! - [`calls`]: the service as served: request size limit, and every call counted by method
//!   and code (also those tonic refuses before a handler runs).
//! - [`specs`]: each calling ScaledObject's parsed trigger, so later calls skip parsing.
//! - [`status`]: the one mapping from our errors to `tonic::Status`.

pub mod calls;
pub mod codec;
pub mod push;
pub mod service;
pub mod specs;
pub mod status;
pub mod target;

pub use service::Scaler;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("externalscaler");

    /// The encoded descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/externalscaler_descriptor.bin"));
}
