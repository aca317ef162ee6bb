//! How a serialized Python value is laid out in one contiguous object.
//!
//! A value is a pickle-5 payload plus zero or more out-of-band buffers (numpy arrays'
//! memory, `PickleBuffer`s). Buffers start on 64-byte boundaries so that a reader can
//! hand them to numpy as aligned, zero-copy views into shared memory:
//!
//! ```text
//! u32 n_buffers | u32 0 | u64 payload_len | u64 buffer_len × n | pad to 64
//! payload | pad to 64 | buffer 0 | pad to 64 | buffer 1 ...
//! ```
//! `rtd/_private/serialization.py` reads the same layout.

const ALIGN: usize = 64;

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

pub struct Layout {
    pub payload_offset: usize,
    pub buffer_offsets: Vec<usize>,
    pub total: usize,
    header: Vec<u8>,
}

impl Layout {
    pub fn new(payload_len: usize, buffer_lens: &[usize]) -> Self {
        let mut header = Vec::with_capacity(16 + 8 * buffer_lens.len());
        header.extend_from_slice(&(buffer_lens.len() as u32).to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&(payload_len as u64).to_le_bytes());
        for len in buffer_lens {
            header.extend_from_slice(&(*len as u64).to_le_bytes());
        }
        let payload_offset = align(header.len());
        let mut end = payload_offset + payload_len;
        let mut buffer_offsets = Vec::with_capacity(buffer_lens.len());
        for len in buffer_lens {
            let off = align(end);
            buffer_offsets.push(off);
            end = off + len;
        }
        Self { payload_offset, buffer_offsets, total: end, header }
    }

    /// Writes header, payload and buffers into `dst` (`dst.len() >= self.total`).
    pub fn write(&self, dst: &mut [u8], payload: &[u8], buffers: &[&[u8]]) {
        dst[..self.header.len()].copy_from_slice(&self.header);
        dst[self.payload_offset..self.payload_offset + payload.len()].copy_from_slice(payload);
        for (off, buf) in self.buffer_offsets.iter().zip(buffers) {
            dst[*off..*off + buf.len()].copy_from_slice(buf);
        }
    }

    pub fn to_vec(&self, payload: &[u8], buffers: &[&[u8]]) -> Vec<u8> {
        let mut out = vec![0u8; self.total];
        self.write(&mut out, payload, buffers);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_round_trip() {
        let payload = b"pickle";
        let a = vec![1u8; 100];
        let b = vec![2u8; 7];
        let layout = Layout::new(payload.len(), &[a.len(), b.len()]);
        let out = layout.to_vec(payload, &[&a, &b]);
        assert_eq!(out.len(), layout.total);
        for off in &layout.buffer_offsets {
            assert_eq!(off % 64, 0);
        }
        assert_eq!(&out[layout.payload_offset..layout.payload_offset + 6], payload);
        assert_eq!(&out[layout.buffer_offsets[0]..layout.buffer_offsets[0] + 100], &a[..]);
        assert_eq!(&out[layout.buffer_offsets[1]..layout.buffer_offsets[1] + 7], &b[..]);
        assert_eq!(u32::from_le_bytes(out[0..4].try_into().unwrap()), 2);
    }
}
