//! virtio-vsock (hybrid unix-socket backend).
