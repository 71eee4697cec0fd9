//! The protobuf codec of orascale's gRPC service and client: prost, with small buffers.
//!
//! tonic gives every RPC an 8 KiB encode and an 8 KiB decode buffer. KEDA's messages are tens to
//! a few hundred bytes, and an open StreamIsActive keeps its buffers for its whole life: with
//! 10,000 streams on one connection the default buffers were most of the server's memory per
//! stream. The buffers start small and grow when a message needs it.
//!
//! A request body that is not the method's protobuf is the client's mistake, so it is refused
//! as INVALID_ARGUMENT (prost's own codec says INTERNAL, which reads as a server bug), with a
//! message naming the expected message type and what was wrong.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// Initial encode/decode buffer of an RPC; larger messages grow it.
const BUFFER_SIZE: usize = 256;
/// tonic's default: how much a streaming response buffers before it yields.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`tonic_prost::ProstCodec`] with `BUFFER_SIZE` buffers (named by build.rs's `codec_path`).
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
    type Decoder = Decode<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decode(PhantomData)
    }
}

/// prost's decoder, with a refusal that says what was expected.
#[derive(Debug)]
pub struct Decode<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for Decode<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(decode_error::<U>)
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}

/// The same codec decodes requests in the server and responses in the probe client: a bad
/// request is the client's error (INVALID_ARGUMENT), a bad response the server's (INTERNAL).
fn decode_error<U>(e: prost::DecodeError) -> Status {
    let name = std::any::type_name::<U>();
    let name = name.rsplit("::").next().unwrap_or(name);
    if name.ends_with("Response") {
        Status::internal(format!("the response is not a valid {name} protobuf: {e}"))
    } else {
        Status::invalid_argument(format!("the request is not a valid {name} protobuf: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::proto::{GetMetricsRequest, IsActiveResponse};
    use tonic::Code;

    #[test]
    fn a_bad_request_is_invalid_argument_naming_its_message() {
        let garbage = [0xff_u8, 0xff, 0xff];
        let e = GetMetricsRequest::decode(&garbage[..]).unwrap_err();
        let s = decode_error::<GetMetricsRequest>(e);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(
            s.message()
                .starts_with("the request is not a valid GetMetricsRequest protobuf: "),
            "{}",
            s.message()
        );
        let e = IsActiveResponse::decode(&garbage[..]).unwrap_err();
        let s = decode_error::<IsActiveResponse>(e);
        assert_eq!(s.code(), Code::Internal);
        assert!(
            s.message()
                .starts_with("the response is not a valid IsActiveResponse")
        );
    }
}
