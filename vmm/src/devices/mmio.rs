//! virtio-mmio device placement (filled in with the virtio transport).
