//! The protobuf codec of orascale's gRPC service and client: prost, with small buffers.
//!
//! tonic gives every RPC an 8 KiB encode and an 8 KiB decode buffer. KEDA's messages are tens to
//! a few hundred bytes, and an open StreamIsActive keeps its buffers for its whole life: with
//! 10,000 streams on one connection the default buffers were most of the server's memory per
//! stream. The buffers start small and grow when a message needs it.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial encode/decode buffer of an RPC; larger messages grow it.
const BUFFER_SIZE: usize = 256;
/// tonic's default: how much a streaming response buffers before it yields.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`tonic_prost::ProstCodec`] with [`BUFFER_SIZE`] buffers (named by build.rs's `codec_path`).
#[derive(Debug, Clone)]
pub struct SmallCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallCodec<T, U> {
    fn default() -> Self {
        SmallCodec(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

impl<T, U> Codec for SmallCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
