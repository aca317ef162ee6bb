//! Frames on a byte stream: a little-endian `u32` length, then the encoded `Frame`.
//! Also where a connection's incoming frames come from, a socket or a gRPC stream.

use bytes::{Buf, BytesMut};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use super::error::describe_error;
use crate::proto::Frame;

/// The largest frame a peer may send (as Ray's gRPC message limit). Objects move
/// through the store or in object-manager chunks, so frames come nowhere near it.
pub const MAX_FRAME: usize = 512 << 20;
/// How many more bytes a connection's read buffer makes room for at a time.
pub(super) const READ_CHUNK: usize = 64 << 10;

/// Why a peer's bytes cannot be read as frames. Each closes that one connection: the
/// stream has no way to find the next frame boundary after either.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge { len: usize },
    #[error("frame does not decode: {0}")]
    Garbled(#[from] prost::DecodeError),
}

/// Takes the first complete frame off the front of `buf`; `Ok(None)` while more bytes
/// are needed. Bytes after that frame stay in `buf`.
pub fn decode_frame(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    let Some(prefix) = buf.first_chunk::<4>() else { return Ok(None) };
    let len = u32::from_le_bytes(*prefix) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge { len });
    }
    if buf.len() - 4 < len {
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(Frame::decode(buf.split_to(len).freeze())?))
}

pub(super) async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<Option<Frame>> {
    loop {
        if let Some(frame) = decode_frame(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))? {
            return Ok(Some(frame));
        }
        // Room in proportion to what has arrived, not to what the prefix announces: a
        // peer that announces a huge frame must send its bytes before we hold memory
        // for them. Doubling keeps a large frame to a few reads.
        buf.reserve(READ_CHUNK.max(buf.len()));
        if reader.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Drains `rx` into the socket, flushing only when no more frames are queued so that
/// bursts of small messages go out in few syscalls.
pub(super) async fn write_loop<W: AsyncWrite + Unpin>(writer: W, mut rx: mpsc::UnboundedReceiver<Frame>) {
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    let mut scratch = Vec::with_capacity(4096);
    while let Some(frame) = rx.recv().await {
        let mut next = Some(frame);
        while let Some(f) = next {
            scratch.clear();
            let len = f.encoded_len() as u32;
            scratch.extend_from_slice(&len.to_le_bytes());
            if f.encode(&mut scratch).is_err() || writer.write_all(&scratch).await.is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
    // Every sender is gone: close our direction so the peer sees the end even though
    // the read half (held by the reader task) keeps the socket open.
    let _ = writer.shutdown().await;
}

/// Where a connection's incoming frames come from.
pub(super) enum Inbound {
    Socket { reader: Box<dyn AsyncRead + Unpin + Send>, buf: BytesMut },
    Grpc(tonic::Streaming<Frame>),
}

impl Inbound {
    pub(super) fn socket(reader: impl AsyncRead + Unpin + Send + 'static) -> Self {
        Inbound::Socket { reader: Box::new(reader), buf: BytesMut::with_capacity(64 * 1024) }
    }

    /// The next frame; `None` once the peer has gone (closed, reset or garbled).
    pub(super) async fn next(&mut self) -> Option<Frame> {
        match self {
            Inbound::Socket { reader, buf } => read_frame(reader, buf).await.unwrap_or_else(|e| {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    tracing::warn!("closing a connection that sent bad bytes: {e}");
                }
                None
            }),
            Inbound::Grpc(stream) => stream.message().await.unwrap_or_else(|status| {
                if matches!(status.code(), tonic::Code::Internal | tonic::Code::OutOfRange) {
                    tracing::warn!("closing a connection that sent bad bytes: {}", describe_error(&status));
                }
                None
            }),
        }
    }
}
