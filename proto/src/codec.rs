//! The codec of every certfleet service: tonic's prost codec with 1 KiB buffers instead of
//! 8 KiB.
//!
//! tonic allocates an encode buffer and a decode buffer for every call, and keeps them for as
//! long as the call lives: for an agent link, as long as the agent is connected. Heartbeats and
//! steps are a few hundred bytes. With tonic's default of 8 KiB each, the two buffers were a
//! quarter of what the controller held per connected agent (heaptrack at 2,000 loadgen agents:
//! 8 KiB encode, 16 KiB decode after the first report, next to h2's and rustls's own buffers).
//! A buffer still grows for a larger message (a report, an inventory page): the decode buffer
//! to the message's size (tonic reserves the length the message announces), the encode buffer
//! by doubling. The size is also tonic's growth step when compressing; certfleet compresses
//! nothing.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size of each call's encode and decode buffers.
pub const BUFFER_BYTES: usize = 1024;

/// tonic's default: how much is encoded before the response stream yields.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// tonic's prost codec with [`BUFFER_BYTES`] buffers (named in `build.rs` as the generated
/// services' codec).
#[derive(Debug, Clone)]
pub struct SmallBuffers<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for SmallBuffers<T, U> {
    fn default() -> Self {
        SmallBuffers {
            _types: PhantomData,
        }
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
}

impl<T, U> Codec for SmallBuffers<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = Reserving<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        Reserving(ProstCodec::<T, U>::raw_encoder(settings()))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}

/// tonic's prost encoder that first reserves room for the whole message in the call's buffer.
///
/// The buffer otherwise grows by doubling from [`BUFFER_BYTES`] as the message is written: an
/// inventory page of 5 MB was copied a dozen times over on its way into the buffer (each copy
/// into pages the kernel had to fault in). With this and the page written into room reserved
/// for it, the controller spends 24-27 ticks on a 100,000-certificate listing instead of 31-34.
/// The length is computed here and again by prost's `encode` (its check of the room): cheap
/// for every message certfleet sends (an inventory page's is its written bytes' length plus a
/// few fields); prost's `encode_raw`, which skips the check, is not public API.
#[derive(Debug, Clone)]
pub struct Reserving<T>(ProstEncoder<T>);

impl<T: Message> Encoder for Reserving<T> {
    type Item = T;
    type Error = tonic::Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        buf.reserve(item.encoded_len());
        self.0.encode(item, buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
