//! The gRPC codec of every generated service: protobuf through prost, with
//! one difference from tonic's own. tonic encodes each message into a
//! shared buffer that grows as the message is written, so a large message
//! (a batch of deliveries, say) is copied again at every doubling. This
//! encoder reserves the message's whole encoded length first, so each
//! message is written once. (tonic gives no way to build an `EncodeBuf`
//! outside it, so the end-to-end tests, whose every call goes through this
//! codec, are its tests.)

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic_prost::ProstDecoder;

/// Protobuf messages `T` out, `U` in.
#[derive(Debug, Clone, Copy)]
pub struct SavaCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for SavaCodec<T, U> {
    fn default() -> Self {
        SavaCodec {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for SavaCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ReservingEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ReservingEncoder { _type: PhantomData }
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::default())
    }
}

/// Encodes a message into room reserved for all of it.
#[derive(Debug, Clone, Copy)]
pub struct ReservingEncoder<T> {
    _type: PhantomData<T>,
}

impl<T: Message> Encoder for ReservingEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode_raw(buf);
        Ok(())
    }
}
