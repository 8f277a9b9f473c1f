/// Bounds on what one image may make Box do. Exceeding any is an error naming the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of file content all layers together may write (default: the largest container
    /// disk Box makes, [`crate::disk::MAX_DISK_BYTES`], since a bigger tree could not boot).
    pub max_bytes: u64,
    /// Tar entries across all layers, whiteouts included.
    pub max_entries: u64,
    /// Bytes in one entry's path or link target.
    pub max_path: usize,
    /// Layers in one manifest (docker's limit is 127 on overlayfs; 128 here).
    pub max_layers: usize,
    /// Bytes of one JSON document (index, manifest, config).
    pub max_json: u64,
    /// Image indexes nested in one another below index.json.
    pub max_index_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: crate::disk::MAX_DISK_BYTES,
            max_entries: 1_000_000,
            max_path: 4096,
            max_layers: 128,
            max_json: 4 << 20,
            max_index_depth: 4,
        }
    }
}
