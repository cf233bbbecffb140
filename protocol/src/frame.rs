//! The frame codec: `u32` big-endian length, then a `u8` version, then a
//! bincode body. The length counts the version byte and the body.
//!
//! Every read is bounded by the configured frame cap: a hostile length never
//! makes us allocate more than the cap, and a bad frame is a typed
//! [`FrameError`], never a panic.

use crate::messages::Envelope;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The only frame version this build speaks.
pub const FRAME_VERSION: u8 = 1;
/// Default cap on one frame (version + body), in bytes.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 4 * 1024 * 1024;
/// Hard ceiling for any configured cap, and the decoder's allocation limit.
pub const MAX_FRAME_LIMIT_BYTES: usize = 64 * 1024 * 1024;
/// Bytes before the body: length + version.
pub const FRAME_HEADER_BYTES: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len_bytes} bytes exceeds the cap of {max_bytes} bytes")]
    TooLarge { len_bytes: u32, max_bytes: u32 },
    #[error("frame version {0} is not supported (this node speaks version {FRAME_VERSION})")]
    UnknownVersion(u8),
    #[error("empty frame (length 0)")]
    Empty,
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("frame body does not decode: {0}")]
    Malformed(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// `true` when the peer deserves a typed error reply before we close
    /// (the connection itself still works, the peer sent something wrong).
    pub fn is_reportable(&self) -> bool {
        matches!(
            self,
            FrameError::TooLarge { .. } | FrameError::UnknownVersion(_) | FrameError::Empty | FrameError::Malformed(_)
        )
    }
}

/// Encodes one envelope as a complete frame.
pub fn encode_frame(envelope: &Envelope, max_frame_bytes: u32) -> Result<Vec<u8>, FrameError> {
    let mut frame = vec![0u8; FRAME_HEADER_BYTES];
    bincode::serde::encode_into_std_write(envelope, &mut frame, crate::bincode_config())
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len_bytes = u32::try_from(frame.len() - 4)
        .map_err(|_| FrameError::TooLarge { len_bytes: u32::MAX, max_bytes: max_frame_bytes })?;
    if len_bytes > max_frame_bytes {
        return Err(FrameError::TooLarge { len_bytes, max_bytes: max_frame_bytes });
    }
    frame[0..4].copy_from_slice(&len_bytes.to_be_bytes());
    frame[4] = FRAME_VERSION;
    Ok(frame)
}

/// Decodes a frame body (after length and version).
pub fn decode_body(body: &[u8]) -> Result<Envelope, FrameError> {
    crate::decode(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Bytes each connection's reader buffers (a `tokio::io::BufReader`
/// around the socket). Unbuffered, reading a frame cost three `recv` calls
/// (length, version, body) and the server's wait for the next frame a
/// fourth (`peek`): at ~25 frames per payment that was one of the larger
/// syscall costs of a `paytx bench` profile. Buffered, the frames that
/// arrived together are read with one call. Small, because a node holds
/// up to `max_connections` of them (a frame larger than the buffer is read
/// straight into its own allocation, bypassing it).
pub const READ_BUFFER_BYTES: usize = 8 * 1024;

/// Reads one frame. `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_frame_bytes: u32,
) -> Result<Option<Envelope>, FrameError> {
    let mut len_buf = [0u8; 4];
    let mut filled = 0;
    while filled < len_buf.len() {
        let read = reader.read(&mut len_buf[filled..]).await?;
        if read == 0 {
            return if filled == 0 { Ok(None) } else { Err(FrameError::Truncated) };
        }
        filled += read;
    }
    let len_bytes = u32::from_be_bytes(len_buf);
    if len_bytes == 0 {
        return Err(FrameError::Empty);
    }
    if len_bytes > max_frame_bytes.min(MAX_FRAME_LIMIT_BYTES as u32) {
        return Err(FrameError::TooLarge { len_bytes, max_bytes: max_frame_bytes });
    }
    let mut version = [0u8; 1];
    read_exact_or_truncated(reader, &mut version).await?;
    if version[0] != FRAME_VERSION {
        return Err(FrameError::UnknownVersion(version[0]));
    }
    // The allocation is bounded by the cap checked above.
    let mut body = vec![0u8; len_bytes as usize - 1];
    read_exact_or_truncated(reader, &mut body).await?;
    decode_body(&body).map(Some)
}

async fn read_exact_or_truncated<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> Result<(), FrameError> {
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
        Err(e) => Err(FrameError::Io(e)),
    }
}

/// Writes one envelope as a frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    envelope: &Envelope,
    max_frame_bytes: u32,
) -> Result<(), FrameError> {
    let frame = encode_frame(envelope, max_frame_bytes)?;
    writer.write_all(&frame).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::AccountId;
    use crate::messages::{Message, Request};

    fn sample() -> Envelope {
        Envelope { id: 7, message: Message::Request(Request::GetAccount(AccountId(3))) }
    }

    #[tokio::test]
    async fn round_trip() {
        let frame = encode_frame(&sample(), DEFAULT_MAX_FRAME_BYTES).unwrap();
        let mut reader = &frame[..];
        assert_eq!(read_frame(&mut reader, DEFAULT_MAX_FRAME_BYTES).await.unwrap(), Some(sample()));
        assert_eq!(read_frame(&mut reader, DEFAULT_MAX_FRAME_BYTES).await.unwrap(), None);
    }

    #[tokio::test]
    async fn bad_frames_are_typed_errors() {
        let frame = encode_frame(&sample(), DEFAULT_MAX_FRAME_BYTES).unwrap();
        let mut truncated = &frame[..frame.len() - 1];
        assert!(matches!(read_frame(&mut truncated, DEFAULT_MAX_FRAME_BYTES).await, Err(FrameError::Truncated)));
        let mut half_len = &frame[..2];
        assert!(matches!(read_frame(&mut half_len, DEFAULT_MAX_FRAME_BYTES).await, Err(FrameError::Truncated)));
        let huge = [0xff, 0xff, 0xff, 0xff, 1];
        assert!(matches!(read_frame(&mut &huge[..], DEFAULT_MAX_FRAME_BYTES).await, Err(FrameError::TooLarge { .. })));
        let mut wrong_version = frame.clone();
        wrong_version[4] = 9;
        assert!(matches!(
            read_frame(&mut &wrong_version[..], DEFAULT_MAX_FRAME_BYTES).await,
            Err(FrameError::UnknownVersion(9))
        ));
        let garbage = [0, 0, 0, 4, FRAME_VERSION, 0xde, 0xad, 0xbe];
        assert!(matches!(read_frame(&mut &garbage[..], DEFAULT_MAX_FRAME_BYTES).await, Err(FrameError::Malformed(_))));
        assert!(matches!(read_frame(&mut &[0u8, 0, 0, 0][..], DEFAULT_MAX_FRAME_BYTES).await, Err(FrameError::Empty)));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let mut reader = &bytes[..];
                let _ = read_frame(&mut reader, 1024).await;
            });
        }
    }
}
