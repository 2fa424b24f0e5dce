//! The service's message codec: prost's, except that an orchestrator answer holding more
//! actions than [`limits::MAX_ACTIONS`] is refused before it is decoded. Counting the actions
//! on the wire takes no memory, where decoding 1,000,000 small ones first took hundreds of
//! MiB. Both dialects' services and clients are generated with it (see `build.rs`).

use std::any::TypeId;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use crate::limits;

/// Field number of `actions` in OrchestratorResponse (and the Dapr dialect's WorkflowResponse).
const ACTIONS_FIELD: u64 = 2;

pub struct BoundedCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        BoundedCodec(ProstCodec::default())
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        let answer = TypeId::of::<U>();
        BoundedDecoder {
            inner: self.0.decoder(),
            counts_actions: answer == TypeId::of::<crate::proto::OrchestratorResponse>()
                || answer == TypeId::of::<super::dapr::proto::WorkflowResponse>(),
        }
    }
}

pub struct BoundedDecoder<U> {
    inner: ProstDecoder<U>,
    counts_actions: bool,
}

impl<U: Message + Default> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if self.counts_actions {
            let n = occurrences(prost::bytes::Buf::chunk(buf), ACTIONS_FIELD);
            if n > limits::MAX_ACTIONS {
                return Err(Status::invalid_argument(format!(
                    "the answer holds {n} actions; at most {} are allowed",
                    limits::MAX_ACTIONS
                )));
            }
        }
        self.inner.decode(buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}

/// How many times the length-delimited field `field` occurs at the top level of the encoded
/// message `bytes`. Counting stops at anything malformed, which the decoder then reports.
fn occurrences(mut bytes: &[u8], field: u64) -> usize {
    use prost::encoding::decode_varint;
    let mut n = 0;
    while !bytes.is_empty() {
        let Ok(key) = decode_varint(&mut bytes) else { break };
        let skip = match key & 7 {
            0 => match decode_varint(&mut bytes) {
                Ok(_) => 0,
                Err(_) => break,
            },
            1 => 8,
            2 => match decode_varint(&mut bytes) {
                Ok(len) => {
                    n += usize::from(key >> 3 == field);
                    usize::try_from(len).unwrap_or(usize::MAX)
                }
                Err(_) => break,
            },
            5 => 4,
            _ => break,
        };
        if skip > bytes.len() {
            break;
        }
        bytes = &bytes[skip..];
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{OrchestratorAction, OrchestratorResponse};

    #[test]
    fn actions_are_counted_on_the_wire() {
        let answer = OrchestratorResponse {
            instance_id: "i".into(),
            completion_token: "t".into(),
            actions: (0..1000).map(|id| OrchestratorAction { id, ..Default::default() }).collect(),
            requires_history: true,
            ..Default::default()
        };
        let bytes = answer.encode_to_vec();
        assert_eq!(occurrences(&bytes, ACTIONS_FIELD), 1000);
        assert_eq!(occurrences(&bytes, 1), 1);
        assert!(occurrences(&bytes[..bytes.len() / 2], ACTIONS_FIELD) < 1000);
    }
}
