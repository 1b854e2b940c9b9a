//! Uploads whose stream ended before their last byte, kept (bounded) for resume. A type of the
//! shared state; filled and read by the upload service (`service/upload.rs`).

use std::collections::HashMap;

use flotilla_proto::UploadAssembler;

/// An upload whose stream ended before its last byte, kept for resume.
pub(crate) struct Partial {
    /// Checks and hashes the chunks received so far.
    pub assembler: UploadAssembler,
    /// The values decoded so far, in place (`UploadAssembler::push_into`).
    pub values: Vec<f32>,
    /// Order of insertion, for eviction (set by [`PartialUploads::put`]).
    pub seq: u64,
}

/// Partial uploads by (client, upload_id), at most `max` of them; the oldest is evicted first.
#[derive(Default)]
pub(crate) struct PartialUploads {
    map: HashMap<(u64, String), Partial>,
    seq: u64,
}

impl PartialUploads {
    /// Removes and returns the partial upload under `key`.
    pub(crate) fn take(&mut self, key: &(u64, String)) -> Option<Partial> {
        self.map.remove(key)
    }

    /// Keeps `p` under `key`, evicting the oldest first so that at most `max` are kept.
    pub(crate) fn put(&mut self, key: (u64, String), mut p: Partial, max: usize) {
        self.seq += 1;
        p.seq = self.seq;
        while self.map.len() >= max.max(1) {
            let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, v)| v.seq)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.map.remove(&oldest);
        }
        self.map.insert(key, p);
    }

    /// Bytes received and total bytes of the partial upload under `key`.
    pub(crate) fn received(&self, key: &(u64, String)) -> Option<(u64, u64)> {
        self.map
            .get(key)
            .map(|p| (p.assembler.received(), p.assembler.total_bytes()))
    }
}
